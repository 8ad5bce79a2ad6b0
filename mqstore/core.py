"""Broker rules with no I/O: name and argument validation, declare equivalence, reply texts.

Every face (blocking, asyncio, AMQP server) goes through these checks, so the same bad input
gets the same reply code and text everywhere, matching RabbitMQ's.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import errors, routing

VHOST = "/"
DEFAULT_VISIBILITY_TIMEOUT_MS = 30_000
DEFAULT_CONSUMER_TIMEOUT_MS = 30 * 60 * 1000
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
MAX_NAME_BYTES = 255
TEN_YEARS_MS = 10 * 365 * 24 * 3600 * 1000

EXCHANGE_TYPES = frozenset({"direct", "fanout", "topic", "headers"})
SYSTEM_EXCHANGES = {
    "": "direct",
    "amq.direct": "direct",
    "amq.fanout": "fanout",
    "amq.topic": "topic",
    "amq.headers": "headers",
    "amq.match": "headers",
}
QUEUE_TYPES = frozenset({"classic", "quorum"})
OVERFLOW_MODES = frozenset({"drop-head", "reject-publish", "reject-publish-dlx"})

# Queue arguments RabbitMQ compares on redeclare; unknown x-arguments are stored, not compared.
EQUIVALENT_QUEUE_ARGS = (
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-visibility-timeout",
    "x-consumer-timeout",
    "x-deduplication-window",
)


def queue_desc(name: str) -> str:
    return f"queue '{name}' in vhost '{VHOST}'"


def exchange_desc(name: str) -> str:
    return f"exchange '{name}' in vhost '{VHOST}'"


def no_queue(name: str) -> errors.NotFoundError:
    return errors.NotFoundError(f"NOT_FOUND - no {queue_desc(name)}")


def no_exchange(name: str) -> errors.NotFoundError:
    return errors.NotFoundError(f"NOT_FOUND - no {exchange_desc(name)}")


def resource_locked(name: str) -> errors.ResourceLockedError:
    return errors.ResourceLockedError(
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked {queue_desc(name)}. It "
        "could be originally declared on another connection or the exclusive property value "
        "does not match that of the original declaration."
    )


def precondition(text: str) -> errors.PreconditionFailedError:
    return errors.PreconditionFailedError(f"PRECONDITION_FAILED - {text}")


def unknown_delivery_tag(tag: int) -> errors.PreconditionFailedError:
    return precondition(f"unknown delivery tag {tag}")


def _flag(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def inequivalent(
    arg: str, what: str, received: Any, current: Any
) -> errors.PreconditionFailedError:
    return precondition(
        f"inequivalent arg '{arg}' for {what}: received {_flag_repr(received)} "
        f"but current is {_flag_repr(current)}"
    )


def _flag_repr(value: Any) -> str:
    if value is None:
        return "none"
    return f"'{_flag(value)}'"


def check_name(kind: str, name: Any, *, allow_reserved: bool = False) -> str:
    """Validate a queue or exchange name: str, at most 255 UTF-8 bytes, no ``amq.`` prefix."""
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be str, not {type(name).__name__}")
    # RabbitMQ strips CR and LF from names instead of refusing them.
    name = name.replace("\r", "").replace("\n", "")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise precondition(f"{kind} name is longer than {MAX_NAME_BYTES} bytes: {name[:40]!r}...")
    if not allow_reserved and name.startswith("amq."):
        raise errors.AccessRefusedError(
            f"ACCESS_REFUSED - {kind} name '{name}' contains reserved prefix 'amq.*'"
        )
    return name


def check_routing_key(routing_key: Any) -> str:
    if not isinstance(routing_key, str):
        raise TypeError(f"routing_key must be str, not {type(routing_key).__name__}")
    if len(routing_key.encode("utf-8")) > MAX_NAME_BYTES:
        raise precondition(f"routing key is longer than {MAX_NAME_BYTES} bytes")
    return routing_key


def check_exchange_type(exchange_type: Any) -> str:
    value = getattr(exchange_type, "value", exchange_type)
    if value not in EXCHANGE_TYPES:
        # RabbitMQ 4.x answers 406 on the channel (3.x closed the connection with 503).
        raise precondition(f"unknown exchange type '{value}'")
    return str(value)


def coerce_body(body: Any) -> bytes:
    """Bodies are bytes; str is encoded as UTF-8, anything else is a TypeError."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    raise TypeError(f"message body must be bytes or str, not {type(body).__name__}")


def _int_arg(name: str, qname: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise precondition(
            f"invalid arg '{name}' for {queue_desc(qname)}: "
            f"expected integer, got {type(value).__name__}"
        )
    return value


def _check_non_negative(name: str, qname: str, value: Any) -> int:
    value = _int_arg(name, qname, value)
    if value < 0:
        raise precondition(
            f"invalid arg '{name}' for {queue_desc(qname)}: {{value_negative,{value}}}"
        )
    return value


def _check_positive(name: str, qname: str, value: Any) -> int:
    value = _check_non_negative(name, qname, value)
    if value == 0:
        raise precondition(f"invalid arg '{name}' for {queue_desc(qname)}: {{value_zero,0}}")
    return value


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """What mqstore enforces from a queue's arguments."""

    visibility_timeout_ms: int | None
    consumer_timeout_ms: int
    max_priority: int | None


def feature_columns(args: Mapping[str, Any]) -> dict[str, Any]:
    """The ``mq_queues`` columns the queue features read in SQL, from (already validated)
    queue arguments; None where the feature is off."""
    dlx = args.get("x-dead-letter-exchange")
    return {
        "message_ttl_ms": _int_or_none(args.get("x-message-ttl")),
        "max_length": _int_or_none(args.get("x-max-length")),
        "max_length_bytes": _int_or_none(args.get("x-max-length-bytes")),
        "dead_letter_exchange": dlx if isinstance(dlx, str) else None,
        "delivery_limit": _int_or_none(args.get("x-delivery-limit")),
        "expires_ms": _int_or_none(args.get("x-expires")),
    }


def dedup_window_ms(args: Mapping[str, Any]) -> int | None:
    """``x-deduplication-window`` (seconds, already validated) in ms; None: off."""
    value = args.get("x-deduplication-window")
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return max(1, int(value * 1000))


def _check_dedup_window(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise precondition(
            f"invalid arg 'x-deduplication-window' for {queue_desc(name)}: "
            f"expected number of seconds, got {type(value).__name__}"
        )
    if not value > 0 or value * 1000 > TEN_YEARS_MS:
        raise precondition(
            f"invalid arg 'x-deduplication-window' for {queue_desc(name)}: "
            f"{{value_out_of_range,{value}}}"
        )


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def message_expiration(expiration: Any) -> int | None:
    """A message's ``expiration`` property as milliseconds (already checked at publish)."""
    if expiration is None:
        return None
    try:
        return max(0, int(expiration))
    except (TypeError, ValueError):
        return None


def queue_settings(name: str, arguments: Mapping[str, Any] | None) -> QueueSettings:
    """Validate queue arguments as RabbitMQ does (406 naming the argument) and extract the
    ones the store needs as columns."""
    args = dict(arguments or {})
    ttl = args.get("x-message-ttl")
    if ttl is not None:
        ttl = _check_non_negative("x-message-ttl", name, ttl)
        if ttl > TEN_YEARS_MS:
            raise precondition(
                f"invalid arg 'x-message-ttl' for {queue_desc(name)}: {{value_too_large,{ttl}}}"
            )
    if "x-expires" in args:
        _check_positive("x-expires", name, args["x-expires"])
    if "x-deduplication-window" in args:
        _check_dedup_window(name, args["x-deduplication-window"])
    for key in ("x-max-length", "x-max-length-bytes", "x-delivery-limit"):
        if key in args:
            _check_non_negative(key, name, args[key])
    dlx = args.get("x-dead-letter-exchange")
    if dlx is not None and not isinstance(dlx, str):
        raise precondition(
            f"invalid arg 'x-dead-letter-exchange' for {queue_desc(name)}: "
            f"expected longstr, got {type(dlx).__name__}"
        )
    dlrk = args.get("x-dead-letter-routing-key")
    if dlrk is not None and not isinstance(dlrk, str):
        raise precondition(
            f"invalid arg 'x-dead-letter-routing-key' for {queue_desc(name)}: "
            f"expected longstr, got {type(dlrk).__name__}"
        )
    if "x-overflow" in args and args["x-overflow"] not in OVERFLOW_MODES:
        raise precondition(f"invalid arg 'x-overflow' for {queue_desc(name)}: invalid_overflow")
    if "x-queue-type" in args and args["x-queue-type"] not in QUEUE_TYPES:
        raise precondition(f"unsupported queue type '{args['x-queue-type']}'")
    if "x-dead-letter-routing-key" in args and "x-dead-letter-exchange" not in args:
        raise precondition(
            f"invalid arg 'x-dead-letter-routing-key' for {queue_desc(name)}: "
            "routing_key_but_no_dlx_defined"
        )
    max_priority = None
    if "x-max-priority" in args:
        max_priority = _check_non_negative("x-max-priority", name, args["x-max-priority"])
        if max_priority > 255:
            raise precondition(
                f"invalid arg 'x-max-priority' for {queue_desc(name)}: "
                f"{{max_value_exceeded,{max_priority}}}"
            )
    visibility = None
    if "x-visibility-timeout" in args:
        visibility = _check_positive("x-visibility-timeout", name, args["x-visibility-timeout"])
    consumer_timeout = DEFAULT_CONSUMER_TIMEOUT_MS
    if "x-consumer-timeout" in args:
        consumer_timeout = _check_positive("x-consumer-timeout", name, args["x-consumer-timeout"])
    return QueueSettings(visibility, consumer_timeout, max_priority)


def check_queue_equivalence(
    name: str,
    current: Mapping[str, Any],
    *,
    durable: bool,
    auto_delete: bool,
    arguments: Mapping[str, Any] | None,
) -> None:
    """406 when a redeclare differs from the existing queue (exclusivity is checked by the
    caller, which knows the owning connection)."""
    what = queue_desc(name)
    if bool(current["durable"]) != durable:
        raise inequivalent("durable", what, durable, bool(current["durable"]))
    if bool(current["auto_delete"]) != auto_delete:
        raise inequivalent("auto_delete", what, auto_delete, bool(current["auto_delete"]))
    old_args = current["arguments"] or {}
    new_args = arguments or {}
    for key in EQUIVALENT_QUEUE_ARGS:
        if old_args.get(key) != new_args.get(key):
            raise inequivalent(key, what, new_args.get(key), old_args.get(key))


def check_exchange_equivalence(
    name: str,
    current: Mapping[str, Any],
    *,
    exchange_type: str,
    durable: bool,
    auto_delete: bool,
    internal: bool,
) -> None:
    what = exchange_desc(name)
    if current["type"] != exchange_type:
        raise inequivalent("type", what, exchange_type, current["type"])
    for arg, value in (("durable", durable), ("auto_delete", auto_delete), ("internal", internal)):
        if bool(current[arg]) != value:
            raise inequivalent(arg, what, value, bool(current[arg]))


def check_binding_arguments(exchange_type: str, arguments: Mapping[str, Any] | None) -> None:
    if exchange_type == "headers":
        try:
            routing.validate_headers_binding(arguments or {})
        except ValueError as exc:
            raise precondition(str(exc)) from None


def check_expiration(expiration: Any) -> None:
    """Per-message ``expiration`` must be a non-negative integer string, as RabbitMQ checks."""
    if expiration is None:
        return
    try:
        value = int(expiration)
    except (TypeError, ValueError):
        raise precondition(f"invalid expiration '{expiration}': no_integer") from None
    if value < 0:
        raise precondition(f"invalid expiration '{expiration}': {{value_negative,{value}}}")


def check_prefetch(prefetch_count: Any, prefetch_size: Any = 0) -> int:
    if isinstance(prefetch_count, bool) or not isinstance(prefetch_count, int):
        raise TypeError(f"prefetch_count must be int, not {type(prefetch_count).__name__}")
    if not 0 <= prefetch_count <= 65535:
        raise ValueError(f"prefetch_count must be between 0 and 65535, got {prefetch_count}")
    if prefetch_size:
        raise errors.FeatureNotSupportedError(
            f"NOT_IMPLEMENTED - prefetch_size!=0 ({prefetch_size})"
        )
    return prefetch_count


def server_queue_name() -> str:
    """A unique name for ``queue_declare(queue='')``, in RabbitMQ's style."""
    return "amq.gen-" + secrets.token_urlsafe(16)


def new_consumer_tag(channel_number: int, counter: int) -> str:
    return f"ctag{channel_number}.{secrets.token_hex(8)}{counter}"


def new_lease_token() -> int:
    """A fencing token: random 62 bits, so no two leases of one message share a token."""
    return secrets.randbits(62) + 1
