"""F7, the rest (issue 3; RELIABILITY.md section 4.1): paths that cannot be a broker. Opening
fails with a clear error naming the file and the problem, and changes nothing.

Read-only files: ``chmod 444`` does not stop root, so the file is made immutable
(``chattr +i``, on file systems that support it) or its tmpfs is remounted read-only (needs
root); each case is skipped with its reason where the machine cannot do it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

import mqstore

from .harness import assert_intact, connect

pytestmark = pytest.mark.crash


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _make_broker(path: Path) -> str:
    """A closed broker with one message; returns the digest of its bytes."""
    with connect(path, disk_free_limit=0) as conn:
        channel = conn.channel()
        channel.queue_declare("q", durable=True)
        channel.basic_publish("", "q", b"kept")
    # No mqstore connection to it is open now: reading its bytes is safe (RELIABILITY 2.6).
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _open_error(path: Path) -> mqstore.StoreError:
    with pytest.raises(mqstore.StoreError) as excinfo:
        connect(path)
    error = excinfo.value
    del excinfo
    return error


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["directory", "missing-directory"])
def test_directory_or_missing_directory__error_names_the_path_and_the_problem(
    tmp_path: Path, where: str
) -> None:
    # Given a directory where the file should be, or a path in a directory that is absent
    if where == "directory":
        path = tmp_path / "broker.db"
        path.mkdir()
        problem = "is a directory"
    else:
        path = tmp_path / "absent" / "broker.db"
        problem = f"directory {tmp_path / 'absent'} does not exist"

    # When mqstore opens it, then the error says which file and what is wrong with it
    error = _open_error(path)
    print(f"FIGURE F7 {where}: {type(error).__name__}: {error}")
    assert str(path) in str(error)
    assert problem in str(error)
    # And nothing was created
    if where == "directory":
        assert list(path.iterdir()) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["broker.db"]
    else:
        assert not path.parent.exists()


@pytest.mark.timeout(30)
def test_immutable_file__error_names_it_and_says_read_only(tmp_path: Path) -> None:
    # Given a broker file made immutable (chattr +i: even root cannot write it)
    if os.geteuid() != 0:
        pytest.skip("chattr +i needs root")
    path = tmp_path / "broker.db"
    digest = _make_broker(path)
    result = _run("chattr", "+i", str(path))
    if result.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {result.stderr.strip()}")
    try:
        # When mqstore opens it, then it refuses, naming the file and saying it is read-only
        # and that nothing was written
        error = _open_error(path)
        print(f"FIGURE F7 immutable file: {type(error).__name__}: {error}")
        assert isinstance(error, mqstore.StoreIOError), repr(error)
        assert str(path) in str(error)
        assert "read-only" in str(error) and "nothing was written" in str(error)
    finally:
        _run("chattr", "-i", str(path))
    # And the file is unchanged, and usable again once writable
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    with connect(path) as conn:
        _, _, body = conn.channel().basic_get("q", auto_ack=True)
    assert body == b"kept"
    assert_intact(path)


@pytest.mark.timeout(30)
def test_read_only_file_system__error_names_the_file_and_says_read_only(tmp_path: Path) -> None:
    # Given a broker on a tmpfs, which is then remounted read-only
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (os.geteuid() != 0)")
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    result = _run("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point))
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        path = mount_point / "broker.db"
        digest = _make_broker(path)
        result = _run("mount", "-o", "remount,ro", str(mount_point))
        assert result.returncode == 0, result.stderr

        # When mqstore opens it, then it refuses, naming the file and the read-only mount
        error = _open_error(path)
        print(f"FIGURE F7 read-only mount: {type(error).__name__}: {error}")
        assert str(path) in str(error)
        assert "file system is mounted read-only" in str(error)
        # And the file is unchanged
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        result = _run("mount", "-o", "remount,rw", str(mount_point))
        assert result.returncode == 0, result.stderr
        assert_intact(path)
    finally:
        if _run("umount", str(mount_point)).returncode != 0:
            _run("umount", "-l", str(mount_point))
