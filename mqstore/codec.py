"""Exact text encoding of AMQP message properties and field tables.

Message properties (``pika.BasicProperties`` fields) and field tables (headers, queue and
binding arguments) are stored in SQLite TEXT columns. This module turns them into compact
JSON and back *exactly*: every value comes back with the same type and value.

Pure: no I/O and no imports from the rest of mqstore.

Encoding
--------
A field table is a JSON object whose keys are the table's keys. Each value is either

* a bare JSON scalar, for the types JSON already round-trips exactly: ``str`` (string),
  ``bool`` (true/false), ``None`` (null), ``int`` (integer literal, signed 64-bit) and
  finite ``float`` (Python writes the shortest repr that reads back bit-exact, always with
  a ``.`` or an exponent, so it never reads back as an int); or
* a two-element JSON array ``[tag, payload]`` for everything else:

  ======  ===========================================  ===================================
  tag     Python type                                  payload
  ======  ===========================================  ===================================
  ``M``   ``dict`` (nested table)                      JSON object of encoded values
  ``L``   ``list`` / ``tuple`` (decodes as ``list``)   JSON array of encoded values
  ``b``   ``bytes`` / ``bytearray`` (as ``bytes``)     base64 text
  ``D``   ``decimal.Decimal``                          ``str(d)`` (exact, keeps exponent)
  ``T``   ``datetime.datetime``                        ``isoformat()`` (µs and UTC offset)
  ``f``   non-finite ``float`` (inf, nan)              16 hex digits of the IEEE-754 bits
  ======  ===========================================  ===================================

Because user data never appears as a bare JSON array or object, a JSON array always means
"tagged value" and the format is unambiguous, whatever the user's keys or strings look like.
Plain scalars need no wrapping, so typical headers cost one type check per value.

:func:`encode_table` (queue/binding arguments) sorts keys at every level so equal tables
give identical text (bindings are UNIQUE on it) and encodes an empty table as ``''``.
Headers inside properties keep their insertion order.

Message properties are a JSON object keyed by pika's attribute names, holding only the
fields that are set. Short-string properties, ``delivery_mode``, ``priority`` and an int
``timestamp`` are stored bare; a datetime ``timestamp`` is tagged ``T``; ``headers`` is an
encoded field table.
"""

from __future__ import annotations

import binascii
import json
import json.encoder
import struct
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

__all__ = [
    "PROPERTY_FIELDS",
    "decode_properties",
    "decode_table",
    "encode_properties",
    "encode_table",
]

PROPERTY_FIELDS: tuple[str, ...] = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)
_FIELD_SET = frozenset(PROPERTY_FIELDS)
_SHORTSTR_FIELDS = frozenset(
    (
        "content_type",
        "content_encoding",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "type",
        "user_id",
        "app_id",
        "cluster_id",
    )
)

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1
# A str of at most this many characters is at most 255 UTF-8 bytes (4 bytes per char max).
_SHORTSTR_SAFE_CHARS = 255 // 4
_SHORTSTR_MAX_BYTES = 255

_T_MAP = "M"
_T_LIST = "L"
_T_BYTES = "b"
_T_DECIMAL = "D"
_T_DATETIME = "T"
_T_FLOAT = "f"

_DOUBLE = struct.Struct(">d")


def _no_default(value: Any) -> Any:  # pragma: no cover - the walk only emits JSON types
    raise TypeError(f"not JSON serializable: {_type_name(value)}")


def _make_iterencode(sort_keys: bool) -> Any:
    """A JSON serializer callable as ``f(obj, 0)`` returning string chunks.

    ``json.dumps``/``JSONEncoder.encode`` build a fresh C encoder on every call, which is
    half the cost of encoding a small dict; build it once instead (with a pure-Python
    fallback). check_circular is off because the walk always hands JSON a freshly built
    tree (cycles in user data are detected by the walk itself); allow_nan is off because
    non-finite floats are tagged.
    """
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is not None:
        try:
            return c_make_encoder(
                None,  # markers: no circular check
                _no_default,
                json.encoder.encode_basestring_ascii,
                None,  # indent
                ":",
                ",",
                sort_keys,
                False,  # skipkeys
                False,  # allow_nan
            )
        except TypeError:  # pragma: no cover - a future CPython changed the signature
            pass
    encoder = json.JSONEncoder(  # pragma: no cover - only without the C accelerator
        ensure_ascii=True,
        check_circular=False,
        allow_nan=False,
        separators=(",", ":"),
        sort_keys=sort_keys,
    )
    return lambda obj, _level: encoder.iterencode(obj)  # pragma: no cover


_iterencode = _make_iterencode(False)
_iterencode_sorted = _make_iterencode(True)
# JSONDecoder.decode() wraps scan_once() with regex whitespace handling; we never emit
# whitespace, so call the (C) scanner directly and check for trailing data ourselves.
_scan_once = json.JSONDecoder().scan_once


def _type_name(value: Any) -> str:
    return type(value).__name__


def _load(text: str) -> Any:
    try:
        obj, end = _scan_once(text, 0)
    except StopIteration as exc:
        raise ValueError(f"corrupt encoded text: invalid JSON at offset {exc.value}") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise ValueError(f"corrupt encoded text: {exc}") from None
    if end != len(text):
        raise ValueError(f"corrupt encoded text: trailing data at offset {end}")
    return obj


# --------------------------------------------------------------------------- encoding


def _join(prefix: str | None, key: str) -> str:
    return key if prefix is None else f"{prefix}.{key}"


def _check_key(key: Any, label: str, prefix: str | None) -> str:
    """Slow path for a table key: not an exact ``str``, or possibly longer than 255 bytes."""
    if type(key) is not str:
        if not isinstance(key, str):
            where = f"{label} key" if prefix is None else f"{label} {prefix!r} has key"
            raise TypeError(
                f"{where} {key!r} of type {_type_name(key)}; field table keys must be str"
            )
        key = str.__str__(key)  # str subclass (e.g. a StrEnum member) -> plain str
    if len(key) > _SHORTSTR_SAFE_CHARS:
        size = len(key.encode("utf-8", "surrogatepass"))
        if size > _SHORTSTR_MAX_BYTES:
            raise ValueError(
                f"{label} {_join(prefix, key[:40] + '...')!r}: key is {size} UTF-8 bytes; "
                f"AMQP field table keys are limited to {_SHORTSTR_MAX_BYTES}"
            )
    return key


def _encode_table(
    table: Mapping[Any, Any], label: str, prefix: str | None, seen: set[int] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if type(key) is not str or len(key) > _SHORTSTR_SAFE_CHARS:
            key = _check_key(key, label, prefix)
        t = type(value)
        if (
            t is str
            or t is bool
            or value is None
            or (t is int and _INT64_MIN <= value <= _INT64_MAX)
            or (t is float and value - value == 0.0)
        ):
            out[key] = value
        else:
            out[key] = _encode_value(value, label, _join(prefix, key), seen)
    return out


def _encode_list(values: Any, label: str, path: str, seen: set[int] | None) -> list[Any]:
    out: list[Any] = []
    append = out.append
    for i, value in enumerate(values):
        t = type(value)
        if (
            t is str
            or t is bool
            or value is None
            or (t is int and _INT64_MIN <= value <= _INT64_MAX)
            or (t is float and value - value == 0.0)
        ):
            append(value)
        else:
            append(_encode_value(value, label, f"{path}[{i}]", seen))
    return out


def _enter(value: Any, label: str, path: str, seen: set[int] | None) -> set[int]:
    """Record a container on the current ancestor chain; a repeat means a reference cycle."""
    if seen is None:
        seen = set()
    elif id(value) in seen:
        raise ValueError(f"{label} {path!r} contains a reference cycle")
    seen.add(id(value))
    return seen


def _encode_value(value: Any, label: str, path: str, seen: set[int] | None) -> Any:
    """Encode any supported value (the caller has already tried the bare-scalar fast path)."""
    t = type(value)
    if t is str or t is bool or value is None:
        return value
    if t is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return value
        raise ValueError(
            f"{label} {path!r} has int {value} outside the signed 64-bit range "
            f"[{_INT64_MIN}, {_INT64_MAX}]"
        )
    if t is float:
        if value - value == 0.0:
            return value
        return [_T_FLOAT, _DOUBLE.pack(value).hex()]
    if t is dict:
        seen = _enter(value, label, path, seen)
        encoded: Any = [_T_MAP, _encode_table(value, label, path, seen)]
        seen.discard(id(value))
        return encoded
    if t is list or t is tuple:
        seen = _enter(value, label, path, seen)
        encoded = [_T_LIST, _encode_list(value, label, path, seen)]
        seen.discard(id(value))
        return encoded
    if t is bytes or t is bytearray:
        return [_T_BYTES, binascii.b2a_base64(value, newline=False).decode("ascii")]
    if t is Decimal:
        return [_T_DECIMAL, str(value)]
    if t is datetime:
        return [_T_DATETIME, value.isoformat()]
    return _encode_subclass(value, label, path, seen)


def _encode_subclass(value: Any, label: str, path: str, seen: set[int] | None) -> Any:
    """Instances of subclasses of supported types are stored as the base type.

    This matches what a consumer sees over AMQP (pika encodes by isinstance), e.g. an
    ``IntEnum`` member arrives as a plain int and a ``StrEnum`` member as a plain str.
    """
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):  # bool cannot be subclassed, so this is a true int subclass
        return _encode_value(int.__int__(value), label, path, seen)
    if isinstance(value, float):
        return _encode_value(float.__float__(value), label, path, seen)
    if isinstance(value, dict):
        seen = _enter(value, label, path, seen)
        encoded: Any = [_T_MAP, _encode_table(value, label, path, seen)]
        seen.discard(id(value))
        return encoded
    if isinstance(value, (list, tuple)):
        seen = _enter(value, label, path, seen)
        encoded = [_T_LIST, _encode_list(value, label, path, seen)]
        seen.discard(id(value))
        return encoded
    if isinstance(value, (bytes, bytearray)):
        return [_T_BYTES, binascii.b2a_base64(value, newline=False).decode("ascii")]
    if isinstance(value, Decimal):
        return [_T_DECIMAL, Decimal.__str__(value)]
    if isinstance(value, datetime):
        return [_T_DATETIME, datetime.isoformat(value)]
    raise TypeError(f"{label} {path!r} has unsupported type {_type_name(value)}")


def encode_table(table: Mapping[str, Any], *, label: str = "key") -> str:
    """Encode a field table (queue/binding arguments, headers) as text.

    Keys are sorted, so equal tables always produce identical text (binding arguments are
    part of a UNIQUE constraint). An empty table encodes as ``''``. ``label`` names the
    kind of entry in error messages, e.g. ``label="argument"`` gives
    ``argument 'x-foo' has unsupported type set``.
    """
    if not isinstance(table, Mapping):
        raise TypeError(f"a field table must be a mapping, got {_type_name(table)}")
    if not table:
        return ""
    return "".join(_iterencode_sorted(_encode_table(table, label, None, None), 0))


def _check_shortstr(name: str, value: Any) -> str:
    if type(value) is not str:
        if not isinstance(value, str):
            raise TypeError(f"property {name!r} must be str, got {_type_name(value)}")
        value = str.__str__(value)
    if len(value) > _SHORTSTR_SAFE_CHARS:
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > _SHORTSTR_MAX_BYTES:
            raise ValueError(
                f"property {name!r} is {size} UTF-8 bytes long; "
                f"AMQP short strings are limited to {_SHORTSTR_MAX_BYTES}"
            )
    return value


def _check_delivery_mode(value: Any) -> int:
    if type(value) is not int:
        # pika.DeliveryMode is a plain Enum whose .value is the int.
        inner = getattr(value, "value", value)
        if isinstance(inner, int) and not isinstance(inner, bool):
            value = int.__int__(inner)
        else:
            raise TypeError(f"property 'delivery_mode' must be int 1 or 2, got {_type_name(value)}")
    if value != 1 and value != 2:
        raise ValueError(f"property 'delivery_mode' must be 1 or 2, got {value}")
    return value


def _check_priority(value: Any) -> int:
    if type(value) is not int:
        if isinstance(value, int) and not isinstance(value, bool):
            value = int.__int__(value)
        else:
            raise TypeError(f"property 'priority' must be int 0..255, got {_type_name(value)}")
    if not 0 <= value <= 255:
        raise ValueError(f"property 'priority' must be in 0..255, got {value}")
    return value


def _check_timestamp(value: Any) -> Any:
    if type(value) is not int:
        if isinstance(value, datetime):
            return [_T_DATETIME, datetime.isoformat(value)]
        if isinstance(value, int) and not isinstance(value, bool):
            value = int.__int__(value)
        else:
            raise TypeError(
                "property 'timestamp' must be int (seconds since the epoch) or "
                f"datetime.datetime, got {_type_name(value)}"
            )
    if not 0 <= value <= _UINT64_MAX:
        raise ValueError(
            f"property 'timestamp' must be in 0..{_UINT64_MAX} (unsigned 64-bit), got {value}"
        )
    return value


def _check_headers(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"property 'headers' must be a dict, got {_type_name(value)}")
    return _encode_table(value, "header", None, None)


_CHECKS = {
    "delivery_mode": _check_delivery_mode,
    "priority": _check_priority,
    "timestamp": _check_timestamp,
    "headers": _check_headers,
}


def encode_properties(fields: Mapping[str, Any]) -> str | None:
    """Encode message properties (pika ``BasicProperties`` names -> values) as text.

    Fields whose value is None are omitted; returns None when every field is None.
    Raises TypeError for unknown field names and wrongly typed values, ValueError for
    values out of range (short strings over 255 UTF-8 bytes, priority outside 0..255, ...).
    """
    out: dict[str, Any] | None = None
    for name, value in fields.items():
        if value is None:
            if name not in _FIELD_SET:
                raise TypeError(f"unknown message property {name!r}")
            continue
        if out is None:
            out = {}
        if name in _SHORTSTR_FIELDS:
            if type(value) is str and len(value) <= _SHORTSTR_SAFE_CHARS:
                out[name] = value
            else:
                out[name] = _check_shortstr(name, value)
        else:
            check = _CHECKS.get(name)
            if check is None:
                raise TypeError(f"unknown message property {name!r}")
            out[name] = check(value)
    if out is None:
        return None
    return "".join(_iterencode(out, 0))


# --------------------------------------------------------------------------- decoding


def _corrupt(detail: str) -> ValueError:
    return ValueError(f"corrupt encoded field table: {detail}")


def _decode_table(table: dict[str, Any]) -> dict[str, Any]:
    """Decode tagged values in place (a JSON object fresh from the parser)."""
    for key, value in table.items():
        if type(value) is list:
            table[key] = _decode_value(value)
    return table


def _decode_datetime(text: str) -> datetime:
    """Parse ``datetime.isoformat()`` output exactly.

    The UTC offset is parsed by hand: CPython 3.11's ``fromisoformat`` mis-reads some offsets
    with a microseconds part (e.g. ``+00:00:00.000001`` comes back as UTC).
    """
    end = 26 if len(text) > 19 and text[19] == "." else 19
    wall = datetime.fromisoformat(text[:end])
    if len(text) == end:
        return wall
    offset = text[end:]  # +HH:MM, +HH:MM:SS or +HH:MM:SS.ffffff
    if len(offset) not in (6, 9, 16) or offset[0] not in "+-":
        raise _corrupt(f"bad datetime {text!r}")
    delta = timedelta(
        hours=int(offset[1:3]),
        minutes=int(offset[4:6]),
        seconds=int(offset[7:9]) if len(offset) > 6 else 0,
        microseconds=int(offset[10:16]) if len(offset) > 9 else 0,
    )
    return wall.replace(tzinfo=timezone(-delta if offset[0] == "-" else delta))


def _decode_value(value: list[Any]) -> Any:
    if len(value) != 2:
        raise _corrupt(f"tagged value must be [tag, payload], got {value!r}")
    tag, payload = value
    if tag == _T_MAP:
        if type(payload) is not dict:
            raise _corrupt(f"table payload must be an object, got {payload!r}")
        return _decode_table(payload)
    if tag == _T_LIST:
        if type(payload) is not list:
            raise _corrupt(f"array payload must be a list, got {payload!r}")
        return [_decode_value(x) if type(x) is list else x for x in payload]
    if tag == _T_BYTES:
        return binascii.a2b_base64(payload)
    if tag == _T_DECIMAL:
        return Decimal(payload)
    if tag == _T_DATETIME:
        return _decode_datetime(payload)
    if tag == _T_FLOAT:
        return _DOUBLE.unpack(bytes.fromhex(payload))[0]
    raise _corrupt(f"unknown tag {tag!r}")


def decode_table(text: str | None) -> dict[str, Any]:
    """Inverse of :func:`encode_table`; ``''`` (and None) decode to ``{}``."""
    if not text:
        return {}
    table = _load(text)
    if type(table) is not dict:
        raise _corrupt(f"expected a JSON object, got {_type_name(table)}")
    if "[" in text:  # no '[' anywhere means no tagged values: nothing to convert
        _decode_table(table)
    return table


def decode_properties(text: str | None) -> dict[str, Any]:
    """Inverse of :func:`encode_properties`: the set fields by name; ``{}`` for None."""
    if text is None:
        return {}
    fields = _load(text)
    if type(fields) is not dict:
        raise ValueError(f"corrupt encoded properties: expected a JSON object, got {text!r}")
    if "[" in text:  # no '[' anywhere means no tagged values: nothing to convert
        headers = fields.get("headers")
        if headers:
            _decode_table(headers)
        timestamp = fields.get("timestamp")
        if type(timestamp) is list:
            fields["timestamp"] = _decode_value(timestamp)
    return fields
