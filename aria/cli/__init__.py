"""The ``aria`` command line: click commands only; each calls the library and formats its errors."""

from aria.cli.main import cli, main

__all__ = ["cli", "main"]
