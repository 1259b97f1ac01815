"""The ``FeedbackStore`` contract on ``SqliteStore``, and ``open_store``'s URLs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.flywheel_contract import StoreContract, make_answer, make_feedback

from ragfleet.flywheel.sqlite_store import SqliteStore
from ragfleet.flywheel.store import FeedbackStore, open_store, redact_url, scrub
from ragfleet.runtime.errors import InvalidInput, Unavailable

pytestmark = pytest.mark.unit


class TestSqliteStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[FeedbackStore]:
        store = open_store(f"sqlite:///{tmp_path}/nested/flywheel.sqlite3")
        yield store
        await store.close()


async def test_sqlite_keeps_its_data_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    answer = make_answer()
    first = SqliteStore(path)
    await first.record(answer)
    feedback = make_feedback(answer, 4)
    await first.add_feedback(feedback)
    await first.close()
    second = SqliteStore(path)
    assert await second.export() == [(answer, [feedback])]
    await second.close()


async def test_sqlite_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///var/f.sqlite3")
    assert isinstance(relative, SqliteStore)
    assert relative.path == Path("var/f.sqlite3")
    absolute = open_store(f"sqlite:///{tmp_path}/abs.sqlite3")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == tmp_path / "abs.sqlite3"
    await relative.record(make_answer())
    assert (tmp_path / "var" / "f.sqlite3").is_file()
    await relative.close()


async def test_an_unusable_sqlite_path_is_unavailable_naming_the_store(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    store = open_store(f"sqlite:///{tmp_path}/file/flywheel.sqlite3")
    with pytest.raises(Unavailable, match=r"feedback store sqlite:///.*flywheel\.sqlite3"):
        await store.record(make_answer())


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("mysql://u:hunter2@db/x", "accepted: sqlite:///PATH or postgresql://"),
        ("/var/flywheel.sqlite3", "accepted: sqlite:///PATH or postgresql://"),
        ("", "accepted: sqlite:///PATH"),
        ("sqlite://host/f.sqlite3", "sqlite URLs have no host"),
        ("sqlite:///", "names no file"),
        ("postgresql:///db", "names no host"),
    ],
)
def test_open_store_refuses_other_urls_without_their_password(url: str, hint: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        open_store(url)
    assert hint in caught.value.message
    assert "hunter2" not in caught.value.message


def test_redact_url_masks_only_the_password() -> None:
    assert redact_url("postgresql://app:s3cr%40t@db.internal:5433/flywheel?sslmode=require") == (
        "postgresql://app:***@db.internal:5433/flywheel?sslmode=require"
    )
    assert redact_url("postgresql://app@db/flywheel") == "postgresql://app@db/flywheel"
    assert redact_url("sqlite:///var/f.sqlite3") == "sqlite:///var/f.sqlite3"


def test_scrub_masks_the_password_as_written_and_decoded() -> None:
    url = "postgresql://app:p%40ss@db/flywheel"
    assert scrub("auth failed for p@ss and p%40ss", url) == "auth failed for *** and ***"
    assert scrub("nothing secret", "sqlite:///f.sqlite3") == "nothing secret"
