"""F20 (RELIABILITY.md): dead-letter transfer under crash. A child process dead-letters
messages (rejecting without requeue, or sweeping expired ones) and is SIGKILLed at random
points; every message is then in exactly one of {source, dead-letter target}: never both,
never neither. The move is one SQLite transaction, so a kill either happened before its
COMMIT (nothing moved) or after (all of it moved)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import mqstore

from .harness import REPO_ROOT, assert_intact, connect, stored_messages

pytestmark = pytest.mark.crash

MESSAGES = 1500
ROUNDS = 4
EXPIRY_MS = 3000

# The child: reject (without requeue) in batches of 100 with one nack(multiple), or sweep
# expired messages with the engine's upkeep, printing a line per committed step.
CHILD = r"""
import sys, mqstore
mode, path = sys.argv[1], sys.argv[2]
conn = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=path))
ch = conn.channel()
print("ready", flush=True)
if mode == "reject":
    while True:
        last = None
        for _ in range(100):
            method, _, _ = ch.basic_get("src")
            if method is None:
                break
            last = method.delivery_tag
        if last is None:
            print("done", flush=True)
            break
        ch.basic_nack(last, multiple=True, requeue=False)
        print("batch", flush=True)
else:
    mqstore.store.EXPIRY_BATCH = 25  # many small sweep transactions to land a kill in
    while True:
        conn._engine.run(mqstore.store.sweep)
        print("sweep", flush=True)
"""


def spawn(mode: str, db: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, db],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    line = child.stdout.readline()
    if line.strip() != "ready":
        _, err = child.communicate(timeout=30)
        raise AssertionError(f"child did not start: {line!r} {err}")
    return child


def placements(db: str) -> Counter[tuple[str, str]]:
    """(body, queue) -> entries, read with plain sqlite3 (leased entries included)."""
    return Counter(stored_messages(db))


def check_exactly_once(db: str, expected: set[str]) -> tuple[int, int]:
    found = placements(db)
    where: dict[str, list[str]] = {}
    for (body, queue), count in found.items():
        where.setdefault(body, []).extend([queue] * count)
    assert set(where) == expected, f"lost: {sorted(expected - set(where))[:5]}"
    doubled = {b: q for b, q in where.items() if len(q) != 1}
    assert doubled == {}, f"in more than one place: {list(doubled.items())[:5]}"
    moved = sum(1 for q in where.values() if q == ["dead"])
    return len(expected) - moved, moved


def setup(db: str, *, expiration: str | None) -> set[str]:
    with connect(db) as conn:
        ch = conn.channel()
        ch.exchange_declare("dlx", "fanout", durable=True)
        ch.queue_declare("dead", durable=True)
        ch.queue_bind("dead", "dlx")
        ch.queue_declare("src", durable=True, arguments={"x-dead-letter-exchange": "dlx"})
        bodies = [f"m-{i}" for i in range(MESSAGES)]
        properties = mqstore.BasicProperties(expiration=expiration)
        for body in bodies:
            ch.basic_publish("", "src", body, properties)
    return set(bodies)


def kill_rounds(db: str, mode: str, expected: set[str], seed: int) -> list[int]:
    """Start and SIGKILL the child ROUNDS times; returns how many had moved after each."""
    rng = random.Random(seed)
    progress = []
    for _ in range(ROUNDS):
        child = spawn(mode, db)
        try:
            assert child.stdout is not None
            # Let it commit a random number of steps, then kill it mid-loop at a random time.
            for _ in range(rng.randrange(0, 3)):
                if child.stdout.readline().strip() in ("", "done"):
                    break
            time.sleep(rng.uniform(0, 0.03))
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.communicate(timeout=30)  # reaps it and closes its pipes
        progress.append(check_exactly_once(db, expected)[1])
    return progress


@pytest.mark.timeout(120)
def test_sigkill_while_rejecting_to_a_dlx_never_loses_or_duplicates(
    crash_db: str, crash_seed: int
) -> None:
    expected = setup(crash_db, expiration=None)
    progress = kill_rounds(crash_db, "reject", expected, crash_seed)
    print(f"FIGURE F20 reject: dead-lettered after each kill: {progress}")
    # A survivor finishes the job: the dead child's leases come back (counted as returns,
    # without a delivery limit: requeued), and the rest is rejected.
    with connect(crash_db) as conn:
        ch = conn.channel()
        conn._engine.upkeep()  # reap the killed child's session
        while True:
            method, _, _ = ch.basic_get("src")
            if method is None:
                break
            ch.basic_reject(method.delivery_tag, requeue=False)
    remaining, moved = check_exactly_once(crash_db, expected)
    print(f"FIGURE F20 reject: {moved} dead-lettered, {remaining} left in source")
    assert (remaining, moved) == (0, MESSAGES)
    assert_intact(crash_db)


@pytest.mark.timeout(120)
def test_sigkill_during_expiry_sweeps_never_loses_or_duplicates(
    crash_db: str, crash_seed: int
) -> None:
    expected = setup(crash_db, expiration=str(EXPIRY_MS))
    # Due once setup's connection (and its upkeep thread) is gone, so the children sweep;
    # all due once the last publish is EXPIRY_MS old.
    time.sleep(EXPIRY_MS / 1000 + 0.05)
    progress = kill_rounds(crash_db, "sweep", expected, crash_seed)
    print(f"FIGURE F20 expiry: dead-lettered after each kill: {progress}")
    with connect(crash_db) as conn:
        conn._engine.upkeep()
    remaining, moved = check_exactly_once(crash_db, expected)
    print(f"FIGURE F20 expiry: {moved} dead-lettered, {remaining} left in source")
    assert (remaining, moved) == (0, MESSAGES)
    assert_intact(crash_db)


def test_placements_reads_leased_entries(crash_db: str) -> None:
    """The checker itself: a leased entry counts as in its queue."""
    with connect(crash_db) as conn:
        ch = conn.channel()
        ch.queue_declare("src")
        ch.basic_publish("", "src", b"x")
        assert ch.basic_get("src")[0] is not None
        assert placements(crash_db) == Counter({("x", "src"): 1})
    assert Path(crash_db).exists()
