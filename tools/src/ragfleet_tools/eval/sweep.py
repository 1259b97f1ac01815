"""Sweep files of ``ragfleet eval answers --sweep``: a baseline and the configurations to compare
with it, each a set of gateway settings (``RAGFLEET_GATEWAY_*`` names, lower case, without the
prefix) on top of the environment's::

    [baseline]            # optional: overrides every configuration starts from

    [[config]]
    name = "top-3"
    default_top_k = 3

    [[config]]
    name = "short context"
    context_budget_chars = 1600

    [grid]                # optional: every combination of these values is one more configuration
    default_top_k = [3, 5]
    context_budget_chars = [1600, 2400]

A grid's configurations are named after their values (``default_top_k=3 context_budget_chars=
1600``) and also start from the baseline. A file needs at least one ``[[config]]`` or a grid.
"""

from __future__ import annotations

import difflib
import itertools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ragfleet.runtime.errors import InvalidInput
from ragfleet_gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Configuration:
    name: str
    settings: GatewaySettings


def _settings(where: str, overrides: Mapping[str, Any]) -> GatewaySettings:
    fields = set(GatewaySettings.model_fields)
    for key in overrides:
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidInput(f"{where}: {key!r} is not a gateway setting{hint}")
    try:
        return GatewaySettings(**overrides)
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = ".".join(str(part) for part in problem["loc"])
        raise InvalidInput(f"{where}.{field}: {problem['msg']}") from None


def load_sweep(path: Path) -> list[Configuration]:
    """The baseline first, then each configuration in file order. Raises ``InvalidInput``
    naming the file, the configuration and the setting for anything it cannot use."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"sweep: cannot read {path}: {exc}") from None
    unknown = set(raw) - {"baseline", "config", "grid"}
    if unknown:
        raise InvalidInput(
            f"sweep: {path}: unknown table(s) {sorted(unknown)}; use [baseline], [[config]] "
            "and [grid]"
        )
    base = dict(raw.get("baseline") or {})
    configurations = [Configuration("baseline", _settings(f"{path}: baseline", base))]
    entries = [
        (f"{path}: config[{index}]", dict(entry))
        for index, entry in enumerate(raw.get("config") or [])
    ]
    entries += [(f"{path}: grid", entry) for entry in _grid(path, raw.get("grid") or {})]
    if not entries:
        raise InvalidInput(
            f"sweep: {path} has no [[config]] or [grid] to compare with the baseline"
        )
    names = {"baseline"}
    for where, entry in entries:
        name = entry.pop("name", None)
        if not isinstance(name, str) or not name or name in names:
            raise InvalidInput(f"{where}.name: required, and unique (not 'baseline')")
        names.add(name)
        configurations.append(Configuration(name, _settings(where, {**base, **entry})))
    return configurations


def _grid(path: Path, grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The cartesian product of the grid's value lists, as configuration entries."""
    if not grid:
        return []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise InvalidInput(f"sweep: {path}: grid.{key}: must be a non-empty list of values")
    keys = list(grid)
    entries = []
    for combination in itertools.product(*(grid[key] for key in keys)):
        values = dict(zip(keys, combination, strict=True))
        name = " ".join(f"{key}={value}" for key, value in values.items())
        entries.append({"name": name, **values})
    return entries
