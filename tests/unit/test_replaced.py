"""ReplacedCheck: noticing a database file deleted or replaced while open, with inotify and
with the stat fallback alike."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqstore import replaced


@pytest.fixture(params=["inotify", "stat"])
def check_of(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    if request.param == "stat":
        monkeypatch.setattr(replaced, "_LIBC", None)
    elif replaced._LIBC is None:
        pytest.skip("no inotify on this platform")
    made: list[replaced.ReplacedCheck] = []

    def make(path: Path) -> replaced.ReplacedCheck:
        check = replaced.ReplacedCheck(str(path))
        made.append(check)
        assert (check._fd is not None) == (request.param == "inotify")
        return check

    yield make
    for check in made:
        check.close()


def db(path: Path) -> Path:
    sqlite3.connect(path).close()
    return path


def test_untouched_file_is_not_replaced(tmp_path: Path, check_of) -> None:
    check = check_of(db(tmp_path / "a.db"))
    assert [check.check() for _ in range(3)] == [False, False, False]


def test_unlinked_file_is_replaced_at_the_next_check(tmp_path: Path, check_of) -> None:
    path = db(tmp_path / "a.db")
    check = check_of(path)
    assert not check.check()
    os.unlink(path)
    assert check.check()
    assert check.check()  # stays replaced


def test_file_renamed_over_is_replaced(tmp_path: Path, check_of) -> None:
    path = db(tmp_path / "a.db")
    other = db(tmp_path / "b.db")
    check = check_of(path)
    os.replace(other, path)
    assert check.check()


def test_unlinked_and_recreated_under_the_name_is_replaced(tmp_path: Path, check_of) -> None:
    path = db(tmp_path / "a.db")
    check = check_of(path)
    held = sqlite3.connect(path)  # as the engine holds it: its inode cannot be reused
    try:
        os.unlink(path)
        db(path)
        assert check.check()
    finally:
        held.close()


def test_other_files_in_the_directory_change_nothing(tmp_path: Path, check_of) -> None:
    path = db(tmp_path / "a.db")
    check = check_of(path)
    (tmp_path / "other").write_bytes(b"x")
    os.rename(tmp_path / "other", tmp_path / "other2")
    os.unlink(tmp_path / "other2")
    assert not check.check()
    assert not check.check()


def test_moved_away_and_back_is_the_same_file(tmp_path: Path, check_of) -> None:
    path = db(tmp_path / "a.db")
    check = check_of(path)
    os.rename(path, tmp_path / "aside.db")
    os.rename(tmp_path / "aside.db", path)
    assert not check.check()
