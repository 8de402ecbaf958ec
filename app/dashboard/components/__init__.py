"""Shared dashboard pieces: value formatting, registry tables, figures, messages."""
