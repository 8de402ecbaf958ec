"""CLI sub-commands, one module each; app/cli.py registers them."""
