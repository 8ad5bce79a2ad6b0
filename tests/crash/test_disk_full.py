"""F5 (RELIABILITY.md sections 4.1, 4.2; issue 3 "Disk space"): the broker's file system fills
up during publishes, on a small tmpfs mounted for the test (needs root; skipped otherwise).

Two ways to be refused: with ``disk_free_limit=0`` SQLite itself meets ENOSPC (SQLITE_FULL);
with the default limit (50 MiB) mqstore's free-space guard refuses first. Either way the publish
raises StoreFullError, acks still work, nothing confirmed is lost, the file stays intact, and
publishing works again once the file system is grown (``mount -o remount,size=...``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import mqstore
from mqstore import wal

from .harness import History, assert_history_ok, assert_intact, connect, wait_until

pytestmark = pytest.mark.crash

MiB = 1024 * 1024


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[tuple[Path, Callable[[str], None], Callable[[str], None]]]:
    """A directory with a tmpfs mounted on it, and ``resize(size)`` to remount it bigger.
    Unmounted at teardown whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (os.geteuid() != 0)")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = {"size": ""}

    def mount(size: str) -> None:
        result = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point))
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted["size"] = size

    def resize(size: str) -> None:
        result = _run("mount", "-o", f"remount,size={size}", str(mount_point))
        assert result.returncode == 0, result.stderr

    yield mount_point, mount, resize
    if mounted["size"]:
        result = _run("umount", str(mount_point))
        if result.returncode != 0:
            _run("umount", "-l", str(mount_point))


def _fill(channel: mqstore.BlockingChannel, history: History, body_size: int) -> Exception:
    """Publish ``body_size``-byte messages until one is refused; return the refusal."""
    for i in range(100_000):
        message_id = f"fill-{i}"
        history.attempt(message_id)
        try:
            channel.basic_publish("", "q", message_id.encode() + b" " + os.urandom(body_size))
        except mqstore.MqstoreError as exc:
            history.published(message_id, "fail")
            return exc
        history.published(message_id)
    raise AssertionError("the file system never filled up")


def _drain_ids(path: Path, history: History) -> int:
    with connect(path) as conn:
        channel = conn.channel()
        taken = 0
        while True:
            method, _, body = channel.basic_get("q", auto_ack=True)
            if method is None:
                return taken
            history.delivered(
                body.split(b" ", 1)[0].decode(),
                "drainer",
                redelivered=method.redelivered,
                delivery_count=method.delivery_count,
                ack="auto",
            )
            taken += 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("limit", "size", "grown", "body_size", "expected"),
    [
        (0, "2m", "8m", 8 * 1024, "database or disk is full"),
        (wal.DEFAULT_DISK_FREE_LIMIT, "56m", "120m", 64 * 1024, "free disk space is below"),
    ],
    ids=["sqlite-enospc", "free-space-guard"],
)
def test_disk_full__publish_refused_acks_work_nothing_lost_and_publishing_resumes(
    small_fs, limit: int, size: str, grown: str, body_size: int, expected: str
) -> None:
    mount_point, mount, resize = small_fs
    mount(size)
    path = mount_point / "broker.db"
    history = History()

    # Given a broker on a small tmpfs, with one message leased before the disk fills
    conn = connect(path, disk_free_limit=limit)
    try:
        channel = conn.channel()
        channel.queue_declare("q", durable=True)
        channel.basic_publish("", "q", b"early " + b"x")
        history.published("early")
        early, _, _ = channel.basic_get("q")
        assert early is not None

        # When messages are published until the file system is full
        refusal = _fill(channel, history, body_size)

        # Then the publish that did not fit raised StoreFullError, saying why, and the
        # channel is still usable
        assert isinstance(refusal, mqstore.StoreFullError), repr(refusal)
        assert expected in str(refusal)
        confirmed = sum(outcome == "ok" for outcome in history.attempts.values())
        statvfs = os.statvfs(mount_point)
        print(
            f"FIGURE disk full ({'limit 0' if limit == 0 else 'default limit'}, tmpfs {size}): "
            f"{confirmed} publishes confirmed, then refused: {refusal}; "
            f"{statvfs.f_bavail * statvfs.f_frsize // 1024} KiB free"
        )
        assert confirmed > 1
        # And the ack of the message leased before works while publishes are refused by the
        # guard. With no guard, SQLite may have no room left for the ack's WAL frames
        # either: it is then refused with StoreFullError too, and the message is redelivered
        # later. (A passive declare follows the ack: an ack may be committed after
        # basic_ack returned, and its error is raised by the channel's next operation.)
        channel.basic_ack(early.delivery_tag)
        ack_refused = False
        try:
            channel.queue_declare("q", passive=True)
        except mqstore.StoreFullError:
            if limit:
                raise
            ack_refused = True
        else:
            history.delivered("early", "parent", redelivered=False, delivery_count=1, ack="auto")
        # And a second publish is refused as well (nothing half-written in between)
        with pytest.raises(mqstore.StoreFullError):
            channel.basic_publish("", "q", b"refused-again")

        # When the file system is grown
        resize(grown)

        # Then publishing works again (the guard re-reads free space within a second)
        def publish_after() -> bool:
            try:
                channel.basic_publish("", "q", b"after x")
            except mqstore.StoreFullError:
                return False
            return True

        wait_until(publish_after, timeout=10, what="publishing to work again")
        history.published("after")
    finally:
        conn.close()

    # And the file is intact, and every confirmed publish is there exactly once
    assert_intact(path)
    drained = _drain_ids(path, history)
    confirmed = sum(outcome == "ok" for outcome in history.attempts.values())
    print(f"FIGURE disk full, limit {limit}: ack while full {'refused' if ack_refused else 'ok'}")
    assert drained == confirmed - (0 if ack_refused else 1)
    assert_history_ok(history)
    assert_intact(path)
