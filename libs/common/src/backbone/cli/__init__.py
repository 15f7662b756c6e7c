"""The `backbone` command line."""

from backbone.cli._app import app, main

__all__ = ["app", "main"]
