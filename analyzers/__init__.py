"""overlapscope package."""
