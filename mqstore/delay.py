"""Delayed delivery: when a published message becomes deliverable.

Two ways to ask for it (docs/queue-features.md, "Delayed delivery"):

- the ``x-delay`` header, in milliseconds, as RabbitMQ's delayed-message exchange plugin
  reads it (so AMQP clients written for the plugin work unchanged);
- the Python APIs' keyword-only ``delay=`` argument of ``basic_publish``, in **seconds**
  (a number or a ``timedelta``), like ``time.sleep`` and Celery's ``countdown``. It wins
  over a header.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

# 2^32 - 1 ms (~49.7 days): the plugin's own limit on x-delay.
MAX_DELAY_MS = 2**32 - 1


def delay_ms(headers: Mapping[str, Any] | None, delay: float | timedelta | None) -> int | None:
    """Milliseconds to hold the message back, or None to deliver it at once."""
    if delay is not None:
        if isinstance(delay, timedelta):
            seconds = delay.total_seconds()
        elif isinstance(delay, bool) or not isinstance(delay, int | float):
            raise TypeError(f"delay must be seconds (a number or timedelta), not {delay!r}")
        else:
            seconds = float(delay)
        if math.isnan(seconds) or seconds < 0:
            raise ValueError(f"delay must be >= 0 seconds, not {delay!r}")
        ms = math.ceil(seconds * 1000)
        if ms > MAX_DELAY_MS:
            raise ValueError(f"delay must be at most {MAX_DELAY_MS / 1000:.0f} seconds")
        return ms or None
    if not headers:
        return None
    value = headers.get("x-delay")
    if value is None or isinstance(value, bool):
        return None
    try:
        ms = int(value)
    except (TypeError, ValueError):
        return None  # as the plugin: a header it cannot read means no delay
    # The plugin delivers a non-positive delay at once; longer ones are capped.
    return min(ms, MAX_DELAY_MS) if ms > 0 else None


def delayed_type(exchange_type: Any, arguments: Mapping[str, Any] | None) -> Any:
    """The plugin's ``x-delayed-message`` exchange type routes as its ``x-delayed-type``
    argument says: it is stored as that type (``x-delay`` works on every exchange here, so
    nothing else about it differs). Other types are returned unchanged."""
    if getattr(exchange_type, "value", exchange_type) != "x-delayed-message":
        return exchange_type
    inner = (arguments or {}).get("x-delayed-type")
    if inner in (None, "x-delayed-message"):
        from . import core  # the error helpers; imported late to keep this module light

        raise core.precondition("Invalid argument, 'x-delayed-type' must be an exchange type")
    return inner
