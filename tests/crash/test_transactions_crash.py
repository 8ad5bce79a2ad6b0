"""Atomic consume-process-produce under SIGKILL: a pipeline stage child takes an input,
and inside ``with channel.transaction()`` acks it and publishes its outputs; it is SIGKILLed
at random points (before, during and after the commit). Afterwards every input is either
still in its queue (ready, or leased by the dead child and then redelivered) with NO output
for it, or gone with ALL its outputs present exactly once: never both, never neither. The
ack and the publishes are one SQLite transaction (mqstore.txn), so the kill lands before its
COMMIT (nothing happened) or after (all of it happened)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from .harness import REPO_ROOT, assert_intact, connect, stored_messages

pytestmark = pytest.mark.crash

INPUTS = 400
OUTPUTS_PER_INPUT = 3
ROUNDS = 6

# The child: a pipeline stage. Each step leases one input (or a few), then commits the ack
# and its outputs in one transaction; it prints a line per committed step. A random pause
# between the lease and the commit spreads the kills over the whole step.
CHILD = r"""
import random, sys, time, mqstore
path, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
conn = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=path))
ch = conn.channel()
print("ready", flush=True)
while True:
    got = []
    for _ in range(rng.randrange(1, 4)):
        method, _, body = ch.basic_get("in")
        if method is None:
            break
        got.append((method.delivery_tag, body))
    if not got:
        print("done", flush=True)
        break
    time.sleep(rng.uniform(0, 0.004))
    with ch.transaction():
        for tag, body in got:
            for j in range(3):
                ch.basic_publish("", "out", body + b"/o-%d" % j)
            ch.basic_ack(tag)
    print("committed", flush=True)
"""


def spawn(db: str, seed: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, db, str(seed)],
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


def snapshot(db: str) -> tuple[Counter[str], Counter[str]]:
    """(inputs in 'in', leased or ready) and (outputs in 'out'), read with plain sqlite3."""
    inputs: Counter[str] = Counter()
    outputs: Counter[str] = Counter()
    for body, queue in stored_messages(db):
        (inputs if queue == "in" else outputs)[body] += 1
    return inputs, outputs


def check_atomic(db: str, expected: list[str]) -> int:
    """Every input: (still queued AND no outputs) or (gone AND all outputs, once each).
    Returns how many inputs were processed."""
    inputs, outputs = snapshot(db)
    assert all(count == 1 for count in inputs.values()), "an input is queued twice"
    doubled = [body for body, count in outputs.items() if count != 1]
    assert doubled == [], f"outputs stored twice: {doubled[:5]}"
    processed = 0
    for item in expected:
        produced = [f"{item}/o-{j}" for j in range(OUTPUTS_PER_INPUT) if f"{item}/o-{j}" in outputs]
        if inputs[item]:
            assert produced == [], f"{item}: still queued but has outputs {produced}"
        else:
            assert len(produced) == OUTPUTS_PER_INPUT, f"{item}: gone but outputs {produced}"
            processed += 1
    strays = set(outputs) - {f"{i}/o-{j}" for i in expected for j in range(OUTPUTS_PER_INPUT)}
    assert strays == set()
    return processed


@pytest.mark.timeout(180)
def test_sigkill_in_a_pipeline_stage_is_all_or_nothing(crash_db: str, crash_seed: int) -> None:
    expected = [f"i-{k}" for k in range(INPUTS)]
    with connect(crash_db) as conn:
        ch = conn.channel()
        ch.queue_declare("in", durable=True)
        ch.queue_declare("out", durable=True)
        with ch.transaction():
            for item in expected:
                ch.basic_publish("", "in", item)
    rng = random.Random(crash_seed)
    progress = []
    for round_ in range(ROUNDS):
        child = spawn(crash_db, crash_seed * 100 + round_)
        try:
            assert child.stdout is not None
            for _ in range(rng.randrange(0, 6)):
                if child.stdout.readline().strip() in ("", "done"):
                    break
            time.sleep(rng.uniform(0, 0.02))
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.communicate(timeout=30)
        progress.append(check_atomic(crash_db, expected))
    print(f"FIGURE transactions: inputs processed after each kill: {progress}")
    assert progress == sorted(progress)
    # A survivor reclaims the dead children's leases (redelivered) and finishes the stage.
    with connect(crash_db) as conn:
        conn._engine.upkeep()
        ch = conn.channel()
        while True:
            method, _, body = ch.basic_get("in")
            if method is None:
                break
            with ch.transaction():
                for j in range(OUTPUTS_PER_INPUT):
                    ch.basic_publish("", "out", body + b"/o-%d" % j)
                ch.basic_ack(method.delivery_tag)
    assert check_atomic(crash_db, expected) == INPUTS
    inputs, outputs = snapshot(crash_db)
    assert sum(inputs.values()) == 0
    assert sum(outputs.values()) == INPUTS * OUTPUTS_PER_INPUT
    assert_intact(crash_db)
