"""Topic exchanges route through a per-process trie of their bindings; any change of
bindings or queues, in this process or another, makes it stale."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import mqstore


def count(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def test_a_binding_added_after_routing_is_used_at_once(blocking_connect) -> None:
    channel = blocking_connect().channel()
    channel.exchange_declare("t", "topic")
    channel.queue_declare("a")
    channel.queue_bind("a", "t", "x.*")
    channel.basic_publish("t", "x.1", b"m")  # builds the trie
    channel.queue_declare("b")
    channel.queue_bind("b", "t", "#.1")
    channel.basic_publish("t", "x.1", b"m")
    assert (count(channel, "a"), count(channel, "b")) == (2, 1)


def test_unbinding_and_deleting_queues_are_seen_by_the_cached_trie(blocking_connect) -> None:
    channel = blocking_connect().channel()
    channel.exchange_declare("t", "topic")
    for name in ("a", "b"):
        channel.queue_declare(name)
        channel.queue_bind(name, "t", "k.#")
    channel.basic_publish("t", "k", b"m")
    channel.queue_unbind("a", "t", "k.#")
    channel.queue_delete("b")
    channel.queue_declare("b")  # a new queue under the old name, not bound
    channel.basic_publish("t", "k", b"m")
    assert (count(channel, "a"), count(channel, "b")) == (1, 0)


def test_a_binding_made_by_another_process_invalidates_this_processs_trie(db_path) -> None:
    connection = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=db_path))
    try:
        channel = connection.channel()
        channel.exchange_declare("t", "topic")
        channel.queue_declare("mine")
        channel.queue_bind("mine", "t", "*.x")
        channel.basic_publish("t", "a.x", b"m")  # this process caches the trie
        other = textwrap.dedent(
            f"""
            import mqstore
            c = mqstore.BlockingConnection(mqstore.ConnectionParameters(path={db_path!r}))
            ch = c.channel()
            ch.queue_declare("theirs")
            ch.queue_bind("theirs", "t", "a.*")
            c.close()
            """
        )
        subprocess.run([sys.executable, "-c", other], check=True, capture_output=True)
        channel.basic_publish("t", "a.x", b"m")
        assert (count(channel, "mine"), count(channel, "theirs")) == (2, 1)
    finally:
        connection.close()


def test_many_topic_bindings_route_to_exactly_the_matching_queues(blocking_connect) -> None:
    channel = blocking_connect(durability="normal").channel()
    channel.exchange_declare("t", "topic")
    for i in range(300):
        channel.queue_declare(f"q{i}")
        channel.queue_bind(f"q{i}", "t", f"a.{i}.*" if i % 2 else f"a.{i}.#")
    channel.basic_publish("t", "a.7.x", b"m")
    channel.basic_publish("t", "a.8", b"m")
    assert count(channel, "q7") == 1
    assert count(channel, "q8") == 1
    assert sum(count(channel, f"q{i}") for i in range(300)) == 2
