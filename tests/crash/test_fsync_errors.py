"""F6: an I/O error on a commit's fsync is reported as a failure, never as success.

A publisher runs under strace, which makes some of its ``fdatasync`` calls fail with EIO.
Sequential publishes commit as their own transactions on the caller's thread
(Engine._publish_lone), batches through group commit: both paths are driven here. Every
publish that returned must be stored after a restart; each failed one raised StoreIOError
naming the file and saying the outcome is unknown (its WAL frames may or may not survive);
the file passes integrity_check.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .harness import assert_intact, connect

PUBLISHER = textwrap.dedent("""
    import sys
    import mqstore

    path, how, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    conn = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=path))
    channel = conn.channel()
    for i in range(count):
        bodies = [f"{i}-{k}".encode() for k in range(3)] if how == "batch" else [str(i).encode()]
        try:
            if how == "batch":
                channel.basic_publish_batch("", "q", bodies)
            else:
                channel.basic_publish("", "q", bodies[0])
        except mqstore.MqstoreError as exc:
            print("ERR", i, type(exc).__name__, str(exc).replace("\\n", " "), flush=True)
            if channel.is_closed:
                channel = conn.channel()
        else:
            print("OK", i, " ".join(b.decode() for b in bodies), flush=True)
    conn.close()
""")


def _stored_bodies(path: Path) -> set[str]:
    with connect(path) as conn:
        channel = conn.channel()
        bodies = set()
        while True:
            method, _, body = channel.basic_get("q", auto_ack=True)
            if method is None:
                return bodies
            bodies.add(body.decode())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["sequential", "batch"])
def test_fsync_eio_is_never_reported_as_success(tmp_path: Path, how: str) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (CI installs it)")
    # Given a broker with a queue, made outside the traced process
    path = tmp_path / "broker.db"
    with connect(path) as conn:
        conn.channel().queue_declare("q", durable=True)

    # When a publisher's 15th, 30th, 45th ... fdatasync fails with EIO
    result = subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=fdatasync",
            "-e",
            "inject=fdatasync:error=EIO:when=15+15",
            sys.executable,
            "-c",
            PUBLISHER,
            str(path),
            how,
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    acked = [body for line in lines if line.startswith("OK ") for body in line.split()[2:]]
    failed = [line.split(" ", 3) for line in lines if line.startswith("ERR ")]
    assert len(lines) == 120, result.stdout[-2000:]

    # Then the injected errors reached publishers as StoreIOError naming the file
    assert failed, "no fdatasync error reached a publish"
    for _, _, kind, text in failed:
        assert kind == "StoreIOError", text
        assert str(path) in text and "outcome unknown" in text
    # And every publish that returned is stored after a restart, and the file is intact
    stored = _stored_bodies(path)
    missing = sorted(set(acked) - stored)
    assert not missing, f"acknowledged but lost: {missing[:10]}"
    assert_intact(path)
    print(
        f"FIGURE F6 {how}: {len(acked)} bodies acknowledged and stored; {len(failed)} "
        f"publishes failed with StoreIOError, {len(stored) - len(acked)} of their bodies "
        "were found after the restart (outcome unknown)"
    )
