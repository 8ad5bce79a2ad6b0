"""AMQP 0-9-1 framing: cut the byte stream into frames, build outbound frames, and carry
message properties through unchanged.

pamqp is the codec for method payloads and content headers, but it is not a framer: it
recognises a heartbeat before its end octet has arrived (gmr/pamqp#53), never splits bodies
at ``frame_max`` and validates names on marshal with a stricter rule than RabbitMQ's. So this
module does the framing itself and hands pamqp exactly one complete frame at a time.
"""

from __future__ import annotations

import datetime
import logging
import struct
from collections.abc import Iterator
from typing import Any

from pamqp import commands, decode, exceptions, frame
from pamqp import header as pamqp_header

from ..codec import PROPERTY_FIELDS
from ..types import BasicProperties
from .replies import Fault

log = logging.getLogger(__name__)

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
# RabbitMQ also accepts the 0-9-1 header as some old clients wrote it.
LEGACY_HEADERS = frozenset({b"AMQP\x01\x01\x00\x09"})

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_OVERHEAD = 8  # 7-byte header + end octet
FRAME_MIN_SIZE = 4096

HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
_HDR = struct.Struct(">BHI")
_CONTENT = struct.Struct(">HHQ")
_IDS = struct.Struct(">HH")


class Frame:
    """One decoded inbound frame. ``raw_properties`` is set on content headers: the property
    bytes as the client sent them, kept so they can be delivered back unchanged."""

    __slots__ = ("channel", "kind", "obj", "raw_properties")

    def __init__(self, kind: int, channel: int, obj: Any, raw_properties: bytes = b"") -> None:
        self.kind = kind
        self.channel = channel
        self.obj = obj
        self.raw_properties = raw_properties


def take_frames(buf: bytearray, frame_max: int) -> Iterator[Frame]:
    """Yield every complete frame at the start of ``buf`` and remove it from the buffer.

    Raises :class:`Fault` 501 for a frame larger than ``frame_max`` or a bad end octet,
    540 for an unknown method, 502 for a method or header pamqp cannot decode.
    """
    while len(buf) >= 7:
        kind, channel, size = _HDR.unpack_from(buf)
        if size + FRAME_OVERHEAD > frame_max:
            raise Fault(
                501,
                f"FRAME_ERROR - type {kind}, all octets = <<>>: "
                f"{{frame_too_large,{size},{frame_max - FRAME_OVERHEAD}}}",
            )
        if len(buf) < size + FRAME_OVERHEAD:
            return
        end = buf[size + 7]
        if end != FRAME_END:
            raise Fault(501, f"FRAME_ERROR - {{invalid_frame_end_marker,{end}}}")
        raw = bytes(buf[: size + FRAME_OVERHEAD])
        del buf[: size + FRAME_OVERHEAD]
        yield _decode(kind, channel, raw)


def _decode(kind: int, channel: int, raw: bytes) -> Frame:
    if kind == FRAME_HEARTBEAT:
        if channel != 0:
            raise Fault(501, "FRAME_ERROR - heartbeat frame on a non-zero channel")
        return Frame(kind, 0, None)
    if kind == FRAME_BODY:
        return Frame(kind, channel, raw[7:-1])
    if kind not in (FRAME_METHOD, FRAME_HEADER):
        raise Fault(501, f"FRAME_ERROR - unknown frame type {kind}")
    payload = raw[7:-1]
    if kind == FRAME_METHOD:
        if len(payload) < 4:
            raise Fault(502, "SYNTAX_ERROR - method frame too short")
        class_id, method_id = _IDS.unpack_from(payload)
        if (class_id << 16) + method_id not in commands.INDEX_MAPPING:
            raise Fault(
                540, f"NOT_IMPLEMENTED - unknown method {class_id}/{method_id}", class_id, method_id
            )
    try:
        _, _, obj = frame.unmarshal(raw)
    except (exceptions.UnmarshalingException, ValueError, TypeError, struct.error) as exc:
        if isinstance(exc, UnicodeDecodeError) or isinstance(exc.__context__, UnicodeDecodeError):
            raise Fault(501, "FRAME_ERROR - Malformed UTF-8 in shortstr") from None
        what = "method" if kind == FRAME_METHOD else "content header"
        raise Fault(502, f"SYNTAX_ERROR - malformed {what} frame: {exc}") from None
    except Exception as exc:  # a decoder bug must not take the server down
        raise Fault(502, f"SYNTAX_ERROR - undecodable frame: {exc!r}") from None
    if kind == FRAME_HEADER:
        if not isinstance(obj, pamqp_header.ContentHeader):
            raise Fault(502, "SYNTAX_ERROR - malformed content header")
        return Frame(kind, channel, obj, payload[_CONTENT.size :])
    return Frame(kind, channel, obj)


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _HDR.pack(kind, channel, len(payload)) + payload + b"\xce"


def method_frame(channel: int, method: Any) -> bytes:
    return frame.marshal(method, channel)


def content_frames(
    channel: int, method: Any, properties: bytes, body: bytes, frame_max: int
) -> bytes:
    """Method + content header + body frames, contiguous, bodies cut at ``frame_max``; an
    empty body gets no body frame (clients wait for none)."""
    parts = [
        frame.marshal(method, channel),
        _frame(FRAME_HEADER, channel, _CONTENT.pack(60, 0, len(body)) + properties),
    ]
    step = frame_max - FRAME_OVERHEAD
    view = memoryview(body)
    for start in range(0, len(body), step):
        parts.append(_frame(FRAME_BODY, channel, bytes(view[start : start + step])))
    return b"".join(parts)


# --- server-sent methods that carry names --------------------------------------------------
# pamqp validates exchange and queue names against the spec's regex on marshal; RabbitMQ (and
# mqstore) accept any UTF-8 name, so these replies must not be re-validated.


class Deliver(commands.Basic.Deliver):
    def validate(self) -> None:
        pass


class GetOk(commands.Basic.GetOk):
    def validate(self) -> None:
        pass


class Return(commands.Basic.Return):
    def validate(self) -> None:
        pass


class DeclareOk(commands.Queue.DeclareOk):
    def validate(self) -> None:
        pass


# --- properties ------------------------------------------------------------------------------

_PAMQP_NAME = {name: ("message_type" if name == "type" else name) for name in PROPERTY_FIELDS}


def to_properties(decoded: commands.Basic.Properties, raw: bytes) -> BasicProperties:
    """pamqp's decoded properties as mqstore's, remembering the raw bytes they came in."""
    props = BasicProperties()
    for name, attr in _PAMQP_NAME.items():
        value = getattr(decoded, attr, None)
        if value is not None and not (name == "cluster_id" and value == ""):
            setattr(props, name, value)
    props.amqp_encoded = raw
    return props


def encode_properties(props: BasicProperties | None, delivery_count: int = 1) -> bytes:
    """The property bytes to deliver: the publisher's own bytes when it spoke AMQP (with
    ``x-delivery-count`` spliced into the headers on a redelivery, as the core adds it),
    else an encoding of the decoded fields."""
    if props is None:
        return b"\x00\x00"
    raw = props.amqp_encoded
    if raw is not None:
        if delivery_count <= 1:
            return raw
        spliced = _splice_delivery_count(raw, delivery_count - 1)
        if spliced is not None:
            return spliced
    return _encode_fields(props.fields())


def _encode_fields(fields: dict[str, Any]) -> bytes:
    kwargs = {_PAMQP_NAME[k]: _pamqp_value(v) for k, v in fields.items()}
    if isinstance(kwargs.get("timestamp"), int):
        kwargs["timestamp"] = datetime.datetime.fromtimestamp(kwargs["timestamp"], datetime.UTC)
    try:
        return commands.Basic.Properties(**kwargs).marshal()
    except (TypeError, ValueError) as exc:
        log.warning(
            "properties not encodable as AMQP, sent without headers: %s",
            exc,
            extra={"action": "properties_dropped"},
        )
        kwargs.pop("headers", None)
        try:
            return commands.Basic.Properties(**kwargs).marshal()
        except (TypeError, ValueError):
            return b"\x00\x00"


def _pamqp_value(value: Any) -> Any:
    """pamqp encodes bytearray as a byte array but has no branch for bytes."""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return {k: _pamqp_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_pamqp_value(v) for v in value]
    return value


_FLAG_CONTENT_TYPE = 0x8000
_FLAG_CONTENT_ENCODING = 0x4000
_FLAG_HEADERS = 0x2000
_DELIVERY_COUNT_KEY = b"x-delivery-count"


def _splice_delivery_count(raw: bytes, count: int) -> bytes | None:
    """Add ``x-delivery-count`` to the headers table inside raw property bytes, leaving every
    other byte as sent. None when the raw bytes are unusual (continued flags, key present)."""
    try:
        (flags,) = struct.unpack_from(">H", raw)
        if flags & 1:
            return None
        offset = 2
        for flag in (_FLAG_CONTENT_TYPE, _FLAG_CONTENT_ENCODING):
            if flags & flag:
                offset += 1 + raw[offset]
        entry = (
            bytes([len(_DELIVERY_COUNT_KEY)])
            + _DELIVERY_COUNT_KEY
            + b"l"
            + struct.pack(">q", count)
        )
        if flags & _FLAG_HEADERS:
            (size,) = struct.unpack_from(">I", raw, offset)
            _, table = decode.field_table(raw[offset : offset + 4 + size])
            if _DELIVERY_COUNT_KEY.decode() in table:
                return None
            start = offset + 4
            return (
                raw[:offset]
                + struct.pack(">I", size + len(entry))
                + raw[start : start + size]
                + entry
                + raw[start + size :]
            )
        return (
            struct.pack(">H", flags | _FLAG_HEADERS)
            + raw[2:offset]
            + struct.pack(">I", len(entry))
            + entry
            + raw[offset:]
        )
    except (struct.error, IndexError, ValueError, exceptions.UnmarshalingException):
        return None
