"""The framer and property pass-through, in-process: no input may raise anything but a
Fault (which becomes Connection.Close), bodies are cut at frame_max, and redelivery headers
are spliced into raw property bytes without re-encoding the rest."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands, decode, frame, header

from mqstore.amqp import framing
from mqstore.amqp.replies import Fault

VALID = [
    frame.marshal(commands.Channel.Open(), 1),
    frame.marshal(commands.Queue.Declare(queue="q", arguments={"x-max-length": 5}), 1),
    frame.marshal(commands.Basic.Publish(exchange="", routing_key="q"), 1),
    frame.marshal(header.ContentHeader(0, 3, commands.Basic.Properties(headers={"a": 1})), 1),
    struct.pack(">BHI", 3, 1, 3) + b"abc" + b"\xce",
    framing.HEARTBEAT_FRAME,
]


def _consume(data: bytes) -> None:
    buf = bytearray(data)
    try:
        for _ in framing.take_frames(buf, 131072):
            pass
    except Fault as fault:
        assert 500 <= fault.code < 600


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_fault(data: bytes) -> None:
    _consume(data)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_frames_only_ever_fault(data: st.DataObject) -> None:
    stream = bytearray(b"".join(VALID))
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(stream) - 1))
        stream[at] = data.draw(st.integers(0, 255))
    _consume(bytes(stream))


def test_valid_frames_decode_and_partial_input_waits() -> None:
    stream = b"".join(VALID)
    buf = bytearray(stream[:-3])
    frames = list(framing.take_frames(buf, 131072))
    assert [f.kind for f in frames] == [1, 1, 1, 2, 3]  # the heartbeat is incomplete
    buf += stream[-3:]
    assert [f.kind for f in framing.take_frames(buf, 131072)] == [8]
    assert frames[3].raw_properties == commands.Basic.Properties(headers={"a": 1}).marshal()


def test_bodies_split_at_frame_max_and_empty_body_has_no_body_frame() -> None:
    deliver = framing.Deliver("c", 1, False, "ex!", "k")  # a name pamqp's validator refuses
    data = framing.content_frames(1, deliver, b"\x00\x00", b"x" * 10000, 4096)
    buf = bytearray(data)
    frames = list(framing.take_frames(buf, 4096))
    bodies = [f.obj for f in frames if f.kind == 3]
    assert [len(b) for b in bodies] == [4088, 4088, 1824]
    empty = list(
        framing.take_frames(bytearray(framing.content_frames(1, deliver, b"\0\0", b"", 4096)), 4096)
    )
    assert [f.kind for f in empty] == [1, 2]


def test_delivery_count_spliced_into_raw_properties() -> None:
    for props in (
        commands.Basic.Properties(content_type="text/plain", headers={"d": 0.5}),
        commands.Basic.Properties(content_type="a", content_encoding="b", delivery_mode=2),
        commands.Basic.Properties(),
    ):
        raw = props.marshal()
        spliced = framing._splice_delivery_count(raw, 3)
        assert spliced is not None
        content = struct.pack(">HHQ", 60, 0, 0) + spliced
        _, _, content_header = frame.unmarshal(framing._frame(2, 1, content))
        decoded = content_header.properties
        assert decoded.headers["x-delivery-count"] == 3
        assert decoded.content_type == props.content_type
        assert decoded.delivery_mode == props.delivery_mode
        if props.headers:
            assert decoded.headers["d"] == props.headers["d"]
            assert raw[17:] in spliced  # the publisher's bytes, untouched, then the new entry


def test_frame_too_large_and_bad_end_are_501() -> None:
    big = struct.pack(">BHI", 3, 1, 5000) + b"x" * 5000 + b"\xce"
    for data, text in ((big, "frame_too_large"), (VALID[0][:-1] + b"\x00", "frame_end")):
        try:
            list(framing.take_frames(bytearray(data), 4096))
        except Fault as fault:
            assert fault.code == 501 and text in fault.text
        else:
            raise AssertionError("no fault")


def test_amqplain_table_decodes() -> None:
    from mqstore.amqp.connection import _credentials

    table = b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x05guest"
    assert _credentials("AMQPLAIN", table) == ("guest", "guest")
    assert _credentials("PLAIN", "\x00guest\x00guest") == ("guest", "guest")
    assert _credentials("PLAIN", "garbage") == (None, "")
    assert decode.field_table(struct.pack(">I", len(table)) + table)[1]["LOGIN"] == "guest"
