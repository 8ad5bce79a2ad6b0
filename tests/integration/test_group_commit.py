"""Group commit: concurrent publishes share transactions (consecutive publishes of a batch
are stored by one publish_many), yet each publish gets its own outcome and order holds."""

from __future__ import annotations

import asyncio
import threading

import pytest

import mqstore


async def test_a_refused_publish_fails_alone_among_concurrent_ones(db_path: str) -> None:
    connection = await mqstore.aio.connect(db_path)
    try:
        setup = await connection.channel()
        await setup.queue_declare("ok")
        await setup.queue_declare(
            "full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
        )
        await setup.basic_publish("", "full", b"occupant")
        channels = [await connection.channel() for _ in range(30)]

        async def publish(k: int, channel: mqstore.aio.AsyncChannel) -> str:
            target = ("", "ok") if k % 3 else (("nope", "k") if k % 2 else ("", "full"))
            try:
                await channel.basic_publish(*target, f"m{k}".encode())
            except mqstore.ChannelClosedByBroker as exc:
                return f"closed {exc.reply_code}"
            except mqstore.NackError:
                return "refused"
            return "stored"

        outcomes = await asyncio.gather(*(publish(k, ch) for k, ch in enumerate(channels)))
        for k, outcome in enumerate(outcomes):
            expected = "stored" if k % 3 else ("closed 404" if k % 2 else "refused")
            assert outcome == expected, (k, outcome)
        check = await connection.channel()
        ok = await check.queue_declare("ok", passive=True)
        assert ok.method.message_count == sum(1 for k in range(30) if k % 3)
        full = await check.queue_declare("full", passive=True)
        assert full.method.message_count == 1
    finally:
        await connection.close()


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_threads_publishing_concurrently_keep_each_ones_order(
    blocking_connect, durability: str
) -> None:
    blocking_connect().channel().queue_declare("q")
    per_thread, threads = 50, 16
    failures: list[BaseException] = []

    def publisher(k: int) -> None:
        try:
            channel = blocking_connect(durability=durability).channel()
            for i in range(per_thread):
                channel.basic_publish("", "q", f"{k}:{i}".encode())
        except BaseException as exc:  # reported below
            failures.append(exc)

    workers = [threading.Thread(target=publisher, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []
    reader = blocking_connect().channel()
    seen: dict[int, list[int]] = {}
    while True:
        method, _props, body = reader.basic_get("q", auto_ack=True)
        if method is None:
            break
        k, i = map(int, body.split(b":"))
        seen.setdefault(k, []).append(i)
    assert seen == {k: list(range(per_thread)) for k in range(threads)}
