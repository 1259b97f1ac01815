"""The ``ragfleet`` command line: bring the fleet up and down, ingest, ask."""

from ragfleet.cli.main import app

__all__ = ["app"]
