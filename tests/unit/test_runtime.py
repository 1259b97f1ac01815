"""Settings, error mapping and deadlines of the shared runtime."""

from __future__ import annotations

import time

import grpc
import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from ragfleet.runtime.channels import Deadline
from ragfleet.runtime.errors import (
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    Unavailable,
    from_rpc_error,
)
from ragfleet.runtime.settings import ServiceSettings

pytestmark = pytest.mark.unit


class ExampleSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RAGFLEET_EXAMPLE_", extra="ignore", frozen=True)


def test_settings_read_their_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGFLEET_EXAMPLE_PORT", "6000")
    monkeypatch.setenv("RAGFLEET_OTHER_PORT", "7000")
    settings = ExampleSettings()
    assert settings.port == 6000
    assert settings.bind_address == "127.0.0.1:6000"


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        ("RAGFLEET_EXAMPLE_GRACE_PERIOD", "did you mean RAGFLEET_EXAMPLE_GRACE_PERIOD_S"),
        ("ragfleet_example_prot", "did you mean RAGFLEET_EXAMPLE_PORT"),
        ("RAGFLEET_EXAMPLE_ZZZ", "RAGFLEET_EXAMPLE_ZZZ is not a setting$"),
    ],
)
def test_an_unknown_variable_under_the_prefix_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, variable: str, message: str
) -> None:
    monkeypatch.setenv(variable, "3")
    with pytest.raises(ValidationError, match=message.replace("$", "")):
        ExampleSettings()


def test_settings_reject_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGFLEET_EXAMPLE_PORT", "70000")
    with pytest.raises(ValidationError, match="port"):
        ExampleSettings()


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.INTERNAL, Unavailable),
        (grpc.StatusCode.UNKNOWN, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
    ],
)
def test_upstream_errors_map_to_domain_errors(code: grpc.StatusCode, expected: type) -> None:
    error = from_rpc_error(FakeRpcError(code, "details here"), "embedder at 127.0.0.1:1")
    assert type(error) is expected
    assert "details here" in error.message
    if expected is Unavailable:
        assert "embedder at 127.0.0.1:1" in error.message


def test_deadline_splits_and_expires() -> None:
    deadline = Deadline.after(10)
    assert 9 < deadline.timeout("embed") <= 10
    assert deadline.timeout("embed", cap=2) == 2
    expired = Deadline(time.monotonic() - 1)
    with pytest.raises(DeadlineExceeded, match="before generate"):
        expired.timeout("generate")
