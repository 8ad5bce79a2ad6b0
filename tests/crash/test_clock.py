"""F13 (RELIABILITY.md sections 2.11, 4.2; issue 3 "Time"): lease deadlines do not move when a
process's wall clock is off, and a reboot voids every lease.

Skew: consumers run under libfaketime (``FAKETIME=+1h`` / ``-1h``, ``DONT_FAKE_MONOTONIC=1``)
(libfaketime then shifts time.time() only; leases use CLOCK_BOOTTIME). Skipped when the
``faketime`` command is missing (``apt-get install faketime``). Reboot: the file's recorded
boot id is rewritten (as if the leases were taken before a reboot) while no mqstore
connection of this process is open; the next open voids every lease.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from .harness import (
    Child,
    History,
    assert_history_ok,
    assert_intact,
    children,
    connect,
    now,
    proc_state,
    table_count,
    wait_until,
)

pytestmark = pytest.mark.crash

VISIBILITY_MS = 1000
#: How long the skewed poller tries to take the held message: several lease lengths.
POLL_S = 2.0


def _faketime(offset: str) -> dict[str, str]:
    """The environment that runs a process under libfaketime, ``offset`` from real time.
    LD_PRELOAD rather than the ``faketime`` command: that one forks, and a SIGKILL of it
    would leave the real child running."""
    if shutil.which("faketime") is None:
        pytest.skip("faketime is not installed (apt-get install faketime)")
    libraries = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    libraries += sorted(glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    if not libraries:
        pytest.skip("faketime is installed but libfaketime.so.1 was not found")
    return {"LD_PRELOAD": libraries[0], "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}


def _clocks_under(offset: str) -> tuple[float, float]:
    """(wall-clock offset, CLOCK_BOOTTIME offset) in seconds of a process under faketime."""
    probe = "import time; print(time.time(), time.clock_gettime(time.CLOCK_BOOTTIME))"
    before_wall, before_boot = time.time(), now()
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **_faketime(offset)},
    )
    wall, boot = map(float, out.stdout.split())
    return wall - before_wall, boot - before_boot


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("holder_offset", "poller_offset"), [("-1h", "+1h"), ("+1h", "-1h")], ids=["ahead", "behind"]
)
def test_two_processes_with_skewed_wall_clocks_never_both_hold_one_message(
    crash_db: str, holder_offset: str, poller_offset: str
) -> None:
    # Given faketime shifting the wall clock by an hour and leaving CLOCK_BOOTTIME alone
    wall, boot = _clocks_under(poller_offset)
    assert abs(abs(wall) - 3600) < 60, f"faketime did not shift time.time(): {wall}"
    assert abs(boot) < 60, f"faketime shifted CLOCK_BOOTTIME by {boot} s: leases would move"
    history = History()
    history.published("m")
    with connect(crash_db) as conn:
        channel = conn.channel()
        channel.queue_declare(
            "clk", durable=True, arguments={"x-visibility-timeout": VISIBILITY_MS}
        )
        channel.basic_publish("", "clk", b"m")

    with children() as started:
        # And a consumer with its wall clock an hour off holding the message (1 s leases,
        # renewed by its live process)
        holder = Child(
            "lease",
            crash_db,
            "--queue",
            "clk",
            "--count",
            "1",
            name=f"holder{holder_offset}",
            env=_faketime(holder_offset),
        )
        started.append(holder)
        leased = holder.wait_for("leased")
        holder.wait_for("holding")
        assert leased["id"] == "m"

        # When a consumer whose wall clock is two hours away from the holder's tries to take
        # it for 2 lease lengths
        poller = Child(
            "drain",
            crash_db,
            "--queue",
            "clk",
            "--count",
            "1",
            "--give-up-s",
            str(POLL_S),
            name=f"poller{poller_offset}",
            env=_faketime(poller_offset),
        )
        started.append(poller)
        poller.finish(timeout=30)

        # Then it never got it: the lease is measured on the host-wide clock
        assert poller.events("got") == [], poller.describe()
        assert poller.wait_for("gave-up")["got"] == "0"
        assert (
            table_count(crash_db, "SELECT count(*) FROM mq_entries WHERE lease_token IS NULL") == 0
        )

        # And once the holder dies, a skewed consumer gets it, redelivered
        holder.kill()
        history.record_consumer(holder)
        taker = Child(
            "drain",
            crash_db,
            "--queue",
            "clk",
            "--count",
            "1",
            name=f"taker{poller_offset}",
            env=_faketime(poller_offset),
        )
        started.append(taker)
        taker.finish(timeout=30)
    got = taker.wait_for("got")
    assert (got["id"], got["redelivered"], got["count"]) == ("m", "1", "2")
    history.record_consumer(taker)
    assert_history_ok(history, allow_duplicates=True)
    assert_intact(crash_db)


@pytest.mark.timeout(30)
def test_reboot_voids_every_lease__leased_messages_ready_again_and_redelivered(
    crash_db: str,
) -> None:
    # Given 3 messages (60 s leases) and a live process (stopped, so it cannot act) holding
    # leases on 2 of them
    with connect(crash_db) as conn:
        channel = conn.channel()
        channel.queue_declare("q", durable=True, arguments={"x-visibility-timeout": 60_000})
        for i in range(3):
            channel.basic_publish("", "q", f"m-{i}".encode())
    with children() as started:
        holder = Child("lease", crash_db, "--queue", "q", "--count", "2", name="holder")
        started.append(holder)
        holder.wait_for("holding")
        holder.stop()
        wait_until(lambda: proc_state(holder.pid) == "T", timeout=5, what="the holder to stop")
        # (its leases stand: its process is alive and the visibility timeout is far)
        with connect(crash_db) as conn:
            assert conn.channel().queue_declare("q", passive=True).method.message_count == 1

        # When the file says its leases were taken under another boot (rewritten with plain
        # sqlite3 while no mqstore connection of this process is open), and it is reopened
        raw = sqlite3.connect(crash_db, isolation_level=None)
        try:
            updated = raw.execute(
                "UPDATE mq_meta SET value = 'a-boot-before-the-reboot' WHERE key = 'boot_id'"
            ).rowcount
        finally:
            raw.close()
        assert updated == 1
        with connect(crash_db) as conn:
            channel = conn.channel()

            # Then every lease is void at once: all 3 ready, the 2 leased ones redelivered
            assert channel.queue_declare("q", passive=True).method.message_count == 3
            taken = []
            for _ in range(3):
                method, _, body = channel.basic_get("q", auto_ack=True)
                taken.append((body.decode(), method.redelivered, method.delivery_count))
            assert taken == [("m-0", True, 2), ("m-1", True, 2), ("m-2", False, 1)]
            # And the holder's session is gone, the current boot id recorded again
            assert table_count(crash_db, "SELECT count(*) FROM mq_sessions") == 1
            assert (
                table_count(
                    crash_db,
                    "SELECT count(*) FROM mq_meta WHERE key = 'boot_id' "
                    "AND value = 'a-boot-before-the-reboot'",
                )
                == 0
            )
        holder.kill()
    assert_intact(crash_db)
