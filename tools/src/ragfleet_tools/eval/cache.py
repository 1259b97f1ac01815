"""Evaluation results kept on disk, one JSON line per question, appended as they come, so an
interrupted or extended run resumes where it stopped."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Generic, TypeVar

_Row = TypeVar("_Row")


class JsonlCache(Generic[_Row]):
    """Rows of one dataclass type (with an ``id`` field), keyed by ``id``; a later row of the
    same id wins."""

    def __init__(self, path: Path, row_type: type[_Row]) -> None:
        self.path = path
        self.rows: dict[str, _Row] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row: Any = json.loads(line)
                    self.rows[row["id"]] = row_type(**row)
                except (json.JSONDecodeError, KeyError, TypeError):
                    # A line cut short by an interrupted run: that question is done again.
                    continue

    def add(self, row: _Row) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            # Starts on a fresh line even after a line an interrupted run cut short.
            if handle.tell() and not self.path.read_bytes().endswith(b"\n"):
                handle.write("\n")
            handle.write(json.dumps(dataclasses.asdict(row)) + "\n")  # type: ignore[call-overload]
        self.rows[row.id] = row  # type: ignore[attr-defined]
