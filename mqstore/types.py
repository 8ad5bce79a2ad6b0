"""Value types handed to users: properties, method frames and deliveries, shaped like pika's.

pika users read ``method.delivery_tag``, ``result.method.queue`` and
``properties.headers``; these classes carry the same attribute names so callbacks written
for pika run unchanged.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from .codec import PROPERTY_FIELDS


class ExchangeType(enum.StrEnum):
    """The exchange types mqstore routes with (pika's ``ExchangeType``)."""

    direct = "direct"
    fanout = "fanout"
    topic = "topic"
    headers = "headers"


class DeliveryMode(enum.IntEnum):
    """pika's ``DeliveryMode``; mqstore keeps every message on disk either way."""

    Transient = 1
    Persistent = 2


PERSISTENT_DELIVERY_MODE = 2
TRANSIENT_DELIVERY_MODE = 1


class BasicProperties:
    """AMQP message properties, as ``pika.BasicProperties``; every field defaults to None.

    ``amqp_encoded`` is not a property: on a delivered message that an AMQP client
    published, it holds the property bytes exactly as sent, so the AMQP server can pass them
    through unchanged. It is ignored on publish and by equality.
    """

    __slots__ = (*PROPERTY_FIELDS, "amqp_encoded")

    def __init__(
        self,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: dict[str, Any] | None = None,
        delivery_mode: int | None = None,
        priority: int | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        expiration: str | None = None,
        message_id: str | None = None,
        timestamp: Any = None,
        type: str | None = None,
        user_id: str | None = None,
        app_id: str | None = None,
        cluster_id: str | None = None,
    ) -> None:
        # Plain assignments, not a loop over PROPERTY_FIELDS: one of these is built for
        # every delivered message.
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.headers = headers
        self.delivery_mode = delivery_mode
        self.priority = priority
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.expiration = expiration
        self.message_id = message_id
        self.timestamp = timestamp
        self.type = type
        self.user_id = user_id
        self.app_id = app_id
        self.cluster_id = cluster_id
        self.amqp_encoded: bytes | None = None

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> BasicProperties:
        props = cls()
        for name, value in fields.items():
            setattr(props, name, value)
        return props

    def fields(self) -> dict[str, Any]:
        """The fields that are set, by name."""
        return {n: v for n in PROPERTY_FIELDS if (v := getattr(self, n)) is not None}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BasicProperties):
            return NotImplemented
        return self.fields() == other.fields()

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.fields().items())
        return f"<BasicProperties({inner})>"


@dataclass(frozen=True, slots=True)
class QueueDeclareOk:
    """``Queue.DeclareOk``: the queue's name (server-named when declared as '') and counts."""

    queue: str
    message_count: int
    consumer_count: int
    NAME = "Queue.DeclareOk"


@dataclass(frozen=True, slots=True)
class ExchangeDeclareOk:
    NAME = "Exchange.DeclareOk"


@dataclass(frozen=True, slots=True)
class ExchangeDeleteOk:
    NAME = "Exchange.DeleteOk"


@dataclass(frozen=True, slots=True)
class ExchangeBindOk:
    NAME = "Exchange.BindOk"


@dataclass(frozen=True, slots=True)
class ExchangeUnbindOk:
    NAME = "Exchange.UnbindOk"


@dataclass(frozen=True, slots=True)
class QueueBindOk:
    NAME = "Queue.BindOk"


@dataclass(frozen=True, slots=True)
class QueueUnbindOk:
    NAME = "Queue.UnbindOk"


@dataclass(frozen=True, slots=True)
class QueueDeleteOk:
    message_count: int
    NAME = "Queue.DeleteOk"


@dataclass(frozen=True, slots=True)
class QueuePurgeOk:
    message_count: int
    NAME = "Queue.PurgeOk"


@dataclass(frozen=True, slots=True)
class BasicQosOk:
    NAME = "Basic.QosOk"


@dataclass(frozen=True, slots=True)
class ConfirmSelectOk:
    NAME = "Confirm.SelectOk"


@dataclass(frozen=True, slots=True)
class Method:
    """pika's ``frame.Method``: what declare/bind/delete calls return (``.method``)."""

    channel_number: int
    method: Any


@dataclass(frozen=True, slots=True)
class Deliver:
    """``Basic.Deliver``: passed as ``method`` to consumer callbacks."""

    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    delivery_count: int = 1
    NAME = "Basic.Deliver"


@dataclass(frozen=True, slots=True)
class GetOk:
    """``Basic.GetOk``: the ``method`` returned by ``basic_get``."""

    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    message_count: int
    delivery_count: int = 1
    NAME = "Basic.GetOk"


@dataclass(frozen=True, slots=True)
class Return:
    """``Basic.Return``: an unroutable mandatory message coming back to its publisher."""

    reply_code: int
    reply_text: str
    exchange: str
    routing_key: str
    NAME = "Basic.Return"


@dataclass(frozen=True, slots=True)
class ReturnedMessage:
    """pika's ``ReturnedMessage``: what ``UnroutableError.messages`` holds."""

    method: Return
    properties: BasicProperties
    body: bytes

    @classmethod
    def no_route(
        cls, exchange: str, routing_key: str, properties: BasicProperties | None, body: bytes
    ) -> ReturnedMessage:
        """A mandatory message no queue took (Basic.Return 312 NO_ROUTE)."""
        return cls(
            Return(312, "NO_ROUTE", exchange, routing_key), properties or BasicProperties(), body
        )

    @classmethod
    def rejected(
        cls, exchange: str, routing_key: str, properties: BasicProperties | None, body: bytes
    ) -> ReturnedMessage:
        """A message a full queue refused (x-overflow reject-publish): NackError's."""
        return cls(
            Return(0, "REJECT_PUBLISH", exchange, routing_key),
            properties or BasicProperties(),
            body,
        )


@dataclass(slots=True)
class LeasedMessage:
    """One message leased from a queue, as the store returns it (internal). Not frozen:
    the store builds one per leased message, and a frozen dataclass's ``__init__`` costs
    several times as much."""

    entry_id: int
    token: int
    queue: str
    exchange: str
    routing_key: str
    properties: dict[str, Any]
    body: bytes
    delivery_count: int
    message_count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    amqp_properties: bytes | None = None
    consumer_timeout_ms: int = 0
    leased_at_ms: int = 0
    lease_ms: int = 0  # 0: taken with auto_ack (no lease)


class Clock(Protocol):
    """Where mqstore reads time. Lease deadlines use ``now_ms``, which must be host-wide
    and never jump with the wall clock; ``wall_ms`` is only for user-visible timestamps."""

    def now_ms(self) -> int: ...

    def wall_ms(self) -> int: ...


class SystemClock:
    """CLOCK_BOOTTIME: shared by every process on the host, immune to settimeofday, and
    reset by a reboot (which is why leases also record the boot id)."""

    _CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)

    def now_ms(self) -> int:
        return time.clock_gettime_ns(self._CLOCK) // 1_000_000

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000


def boot_id() -> str:
    """Identifies this boot of the host; leases taken under another boot id are void."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        # No /proc (not Linux): fall back to the boot time, stable for the boot.
        return f"boottime-{int(time.time() - time.monotonic())}-{os.name}"
