"""F2 + F3 together, many processes at once (issue 3, RELIABILITY.md section 4.0): producers and
consumers SIGKILLed at seeded random points, over and over, each restarted at once; afterwards
the queue is drained by fresh consumers and the whole history is checked.

Default run: about 8 s of kills (the test takes ~15 s). Soak mode: ``MQSTORE_SOAK=1`` runs
10 minutes of kills, ``MQSTORE_SOAK_SECONDS=N`` runs N seconds; ``MQSTORE_CRASH_SEED``
replays a run's kill schedule (the seed is printed).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from .harness import (
    Child,
    History,
    assert_intact,
    children,
    connect,
    table_count,
    wait_until,
)

pytestmark = pytest.mark.crash

PRODUCERS = 2
CONSUMERS = 3
PREFETCH = 4


def chaos_seconds() -> float:
    if os.environ.get("MQSTORE_SOAK_SECONDS"):
        return float(os.environ["MQSTORE_SOAK_SECONDS"])
    if os.environ.get("MQSTORE_SOAK", "") not in ("", "0"):
        return 600.0
    return 8.0


CHAOS_S = chaos_seconds()


def _wait_for_more_lines(child: Child, count: int, bound_s: float) -> None:
    """Until the child printed ``count`` lines, exited, or ``bound_s`` passed: a consumer
    with nothing to do prints nothing, and is then killed idle (also a valid kill point)."""
    deadline = time.monotonic() + bound_s
    with child._cond:
        while len(child.lines) < count and not child.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            child._cond.wait(left)


class Slot:
    """One producer or consumer position, refilled with a new process after each kill."""

    def __init__(self, kind: str, index: int, db: str, stop: Path) -> None:
        self.kind, self.index, self.db, self.stop = kind, index, db, stop
        self.generation = 0
        self.dead: list[Child] = []
        self.child = self._start()

    def _start(self) -> Child:
        name = f"{self.kind}{self.index}g{self.generation}"
        if self.kind == "producer":
            return Child("publish", self.db, "--queue", "rk", "--prefix", name, name=name)
        return Child(
            "work",
            self.db,
            "--queue",
            "rk",
            "--prefetch",
            str(PREFETCH),
            "--stop-file",
            str(self.stop),
            "--sync-every",
            "3",
            name=name,
        )

    def kill_and_restart(self, after_lines: int) -> None:
        _wait_for_more_lines(self.child, len(self.child.lines) + after_lines, bound_s=3.0)
        self.child.kill()
        self.dead.append(self.child)
        self.generation += 1
        self.child = self._start()


def _record(history: History, child: Child, *, killed: bool) -> list[str]:
    """Read a producer's or worker's lines into ``history``. Returns the ids whose ack was in
    flight when the worker was killed: ``acking`` printed and no ``synced`` after it (a
    deferred ack may be committed after basic_ack returned, see child.work). Their outcome
    is unknown, like a publish in flight: recorded as unsettled."""
    if child.argv[3] == "publish":
        history.record_publisher(child)
        return []
    events = child.events()
    last_sync = max((i for i, (event, _) in enumerate(events) if event == "synced"), default=-1)
    open_deliveries = {}
    in_flight: set[str] = set()
    for i, (event, fields) in enumerate(events):
        if event == "got":
            open_deliveries[fields["id"]] = history.delivered(
                fields["id"],
                child.name,
                redelivered=fields["redelivered"] == "1",
                delivery_count=int(fields["count"]),
                t_leased=float(fields["t"]),
            )
        elif event == "acking" and killed and i > last_sync:
            in_flight.add(fields["id"])
        elif event == "acked" and fields["id"] not in in_flight:
            delivery = open_deliveries.pop(fields["id"])
            delivery.ack, delivery.t_acked = "ok", float(fields["t"])
    assert killed or len(open_deliveries) == len(in_flight) == 0, child.describe()
    return sorted(in_flight)


@pytest.mark.timeout(CHAOS_S + 90)
def test_random_kills_of_producers_and_consumers__nothing_confirmed_is_lost(
    crash_db: str, crash_seed: int, tmp_path: Path
) -> None:
    # Given a durable queue (60 s leases: only dead-process reaping gives messages back)
    rng = random.Random(crash_seed)
    with connect(crash_db) as conn:
        conn.channel().queue_declare("rk", durable=True)
    stop = tmp_path / "stop"
    history = History()
    kills = {"producer": 0, "consumer": 0}

    with children() as started:
        slots = [Slot("producer", i, crash_db, stop) for i in range(PRODUCERS)]
        slots += [Slot("consumer", i, crash_db, stop) for i in range(CONSUMERS)]
        for slot in slots:
            started.append(slot.child)

        # When, for CHAOS_S seconds, a seeded random process is SIGKILLed after a seeded
        # random number of its output lines and replaced by a new process at once
        end = time.monotonic() + CHAOS_S
        while time.monotonic() < end:
            slot = rng.choice(slots)
            lines = rng.randint(1, 300 if slot.kind == "producer" else 30)
            slot.kill_and_restart(lines)
            started.append(slot.child)
            kills[slot.kind] += 1

        # And the producers are killed one last time (mid-stream), and the consumers now
        # running (each restarted after its last kill, never killed again) drain the queue
        # until no entry is left
        for slot in slots[:PRODUCERS]:
            _wait_for_more_lines(slot.child, len(slot.child.lines) + rng.randint(1, 300), 3.0)
            slot.child.kill()
            slot.dead.append(slot.child)
            kills["producer"] += 1
        wait_until(
            lambda: table_count(crash_db, "SELECT count(*) FROM mq_entries") == 0,
            timeout=60,
            what="the queue to be drained",
        )
        stop.touch()
        for slot in slots[PRODUCERS:]:
            slot.child.finish()

    # Then: read every process's history
    in_flight_acks: dict[str, str] = {}
    for slot in slots:
        for child in slot.dead:
            for message_id in _record(history, child, killed=True):
                in_flight_acks[message_id] = child.name
        if slot.kind == "consumer":
            _record(history, slot.child, killed=False)
    verdict = history.check()
    # A message whose only deliveries ended in a kill during its ack was acked (the ack
    # committed, so it never came back) or not (then it came back and was acked later).
    lost = {mid for mid in verdict.lost if mid not in in_flight_acks}
    # Duplicates are allowed only for messages whose earlier deliveries' consumer died
    # between receiving and acking (the history's unsettled deliveries of a killed child)
    dead_names = {child.name for slot in slots for child in slot.dead}
    unjustified = []
    for message_id in verdict.duplicated:
        deliveries = sorted(
            (d for d in history.deliveries if d.message_id == message_id),
            key=lambda d: d.t_leased,
        )
        for earlier in deliveries[:-1]:
            if earlier.settled or earlier.consumer not in dead_names:
                unjustified.append((message_id, earlier))
    delivered = {d.message_id for d in history.deliveries}
    print(
        f"FIGURE random kills (seed {crash_seed}, {CHAOS_S:.0f} s): kills {kills}, "
        f"{len(history.attempts)} publishes tried, {verdict.published_ok} confirmed, "
        f"{len(delivered)} messages delivered, {len(history.deliveries)} deliveries, "
        f"duplicates {len(verdict.duplicated)} (all after a consumer died between receive and "
        f"ack), acks in flight at a kill {len(in_flight_acks)}, losses {len(lost)}"
    )
    replay = f"seed {crash_seed}: rerun with MQSTORE_CRASH_SEED={crash_seed}"
    assert kills["producer"] >= PRODUCERS and kills["consumer"] >= 1, kills
    assert verdict.published_ok > 0
    assert lost == set(), f"lost {sorted(lost)[:20]} ({replay})"
    assert unjustified == [], f"duplicates without a dead consumer: {unjustified[:5]} ({replay})"
    # Every publish that returned was delivered; no double lease, no bad redelivery, nothing
    # unexpected, no message acked twice
    problems = verdict.problems(allow_duplicates=True)
    problems.pop("lost", None)
    assert problems == {}, f"history check failed ({replay}): {problems}"
    assert_intact(crash_db)
