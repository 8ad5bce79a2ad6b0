"""Helpers shared by the integration tests."""

from __future__ import annotations

from typing import Any


def drain(channel: Any, queue: str) -> list[bytes]:
    """Every ready message of ``queue`` (auto-acked), in delivery order."""
    bodies = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)
