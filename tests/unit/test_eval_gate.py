"""The relevance gate's calibration: thresholds, rates and their intervals (ragfleet eval gate)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ragfleet.runtime.errors import InvalidInput
from ragfleet_tools.cli.main import app
from ragfleet_tools.eval.gate import GateScores, markdown, report


def scores(answerable: list[float], unanswerable: list[float]) -> GateScores:
    return GateScores.of([(True, s) for s in answerable] + [(False, s) for s in unanswerable])


def test_the_chosen_threshold_refuses_no_more_than_allowed_and_declines_the_most() -> None:
    gate = scores([0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.95, 0.97, 0.99], [0.1, 0.4, 0.55, 0.65])
    assert gate.calibrate(0.0) == 0.2  # refuses nothing: the lowest answerable score
    assert gate.calibrate(0.1) == 0.5  # one answerable question of ten may go
    threshold = gate.calibrate(0.25)  # two of ten
    assert threshold == 0.6
    rates = gate.at(threshold)
    assert rates["answerable refused"][0] == pytest.approx(0.2)
    assert rates["unanswerable declined"][0] == pytest.approx(0.75)
    # Any higher threshold refuses more than allowed.
    assert gate.at(np.nextafter(threshold, 1.0))["answerable refused"][0] > 0.25


def test_auc_and_its_interval() -> None:
    separated = scores([0.8, 0.9, 0.85], [0.1, 0.2])
    assert separated.auc()[0] == 1.0
    mixed = scores([0.5, 0.7, 0.2, 0.9], [0.6, 0.1, 0.3, 0.5])
    auc, low, high = mixed.auc()
    assert auc == pytest.approx((2.5 + 4 + 1 + 4) / 16)  # the tie at 0.5 counts half
    assert low <= auc <= high


def test_the_report_marks_the_chosen_threshold_among_the_fixed_ones() -> None:
    result = report(scores([0.4, 0.5, 0.6, 0.7], [0.2, 0.45]), max_refused=0.25)
    assert result["threshold"] == 0.5
    chosen = [row for row in result["rows"] if row["chosen"]]
    assert [row["threshold"] for row in chosen] == [0.5]
    assert chosen[0]["unanswerable declined"][0] == 1.0
    text = markdown(result)
    assert "**0.500** (chosen)" in text and "MIN_DENSE_SCORE=0.500" in text
    json.dumps(result)  # plain JSON for --json


def test_a_set_without_both_kinds_or_a_bad_share_is_refused_by_name() -> None:
    with pytest.raises(InvalidInput, match="answerable and unanswerable"):
        scores([0.5, 0.6], [])
    with pytest.raises(InvalidInput, match="--max-refused"):
        scores([0.5], [0.2]).calibrate(1.0)


def test_the_command_names_a_missing_dataset(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, ["eval", "gate", "--dataset", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "none" in result.output
