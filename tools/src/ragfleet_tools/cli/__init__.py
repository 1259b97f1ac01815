"""The ``ragfleet`` command line: bring the fleet up and down, ingest, ask."""

from ragfleet_tools.cli.main import app

__all__ = ["app"]
