"""Tests for mqstore.codec: exact round-trips of message properties and field tables."""

from __future__ import annotations

import enum
import json
import math
import struct
from collections import OrderedDict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqstore.codec import (
    PROPERTY_FIELDS,
    decode_properties,
    decode_table,
    encode_properties,
    encode_table,
)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


# --------------------------------------------------------------------------- helpers


def float_bits(x: float) -> bytes:
    return struct.pack(">d", x)


def assert_same(actual: Any, expected: Any, path: str = "$", *, ordered: bool = True) -> None:
    """Recursive equality that also demands identical types.

    ``expected`` is the value that was encoded: tuples must come back as lists and
    bytearrays as bytes; floats are compared bit for bit (so NaN == NaN and -0.0 != 0.0);
    Decimals by sign, digits and exponent; datetimes by wall time, microsecond and offset.
    With ``ordered`` (the default) dict key order must match too.
    """
    if isinstance(expected, tuple):
        want_type: type = list
    elif isinstance(expected, bytearray):
        want_type = bytes
    else:
        want_type = type(expected)
    assert type(actual) is want_type, f"{path}: {type(actual)!r} is not {want_type!r}"
    if want_type is float:
        assert float_bits(actual) == float_bits(expected), f"{path}: {actual!r} != {expected!r}"
    elif want_type is Decimal:
        assert actual.as_tuple() == expected.as_tuple(), f"{path}: {actual!r} != {expected!r}"
    elif want_type is datetime:
        assert actual.replace(tzinfo=None) == expected.replace(tzinfo=None), path
        assert actual.utcoffset() == expected.utcoffset(), path
        assert (actual.tzinfo is None) == (expected.utcoffset() is None), path
    elif want_type is dict:
        if ordered:
            assert list(actual) == list(expected), f"{path}: keys or key order differ"
        else:
            assert sorted(actual) == sorted(expected), f"{path}: keys differ"
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}.{key}", ordered=ordered)
    elif want_type is list:
        assert len(actual) == len(expected), f"{path}: lengths differ"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{i}]", ordered=ordered)
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def roundtrip_headers(headers: dict[str, Any]) -> dict[str, Any]:
    text = encode_properties({"headers": headers})
    assert isinstance(text, str)
    json.loads(text)  # always valid JSON (and so valid TEXT)
    return decode_properties(text)["headers"]


def roundtrip_table(table: dict[str, Any]) -> dict[str, Any]:
    return decode_table(encode_table(table))


def test_assert_same_detects_differences() -> None:
    # The helper must not be vacuous.
    for actual, expected in [
        (1, True),
        (1.0, 1),
        (0.0, -0.0),
        (float("nan"), float("inf")),
        (Decimal("1.0"), Decimal("1.00")),
        ([1], (1, 2)),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        (datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 1)),
        (
            datetime(2020, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
            datetime(2020, 1, 1, tzinfo=UTC),
        ),
        (b"x", "x"),
    ]:
        with pytest.raises(AssertionError):
            assert_same(actual, expected)
    assert_same(float("nan"), float("nan"))
    assert_same({"a": 1, "b": 2}, {"b": 2, "a": 1}, ordered=False)
    with pytest.raises(AssertionError):
        assert_same({"a": 1}, {"b": 1}, ordered=False)
    assert_same([1, b"x"], (1, bytearray(b"x")))


# --------------------------------------------------------------------------- API shape


def test_property_fields_match_pika() -> None:
    pika = pytest.importorskip("pika")
    assert PROPERTY_FIELDS == tuple(vars(pika.BasicProperties()))
    assert len(set(PROPERTY_FIELDS)) == 14


def test_none_fast_path() -> None:
    assert encode_properties({}) is None
    assert encode_properties(dict.fromkeys(PROPERTY_FIELDS)) is None
    assert decode_properties(None) == {}


def test_none_values_are_omitted() -> None:
    text = encode_properties({"content_type": "text/plain", "priority": None, "headers": None})
    assert decode_properties(text) == {"content_type": "text/plain"}


def test_all_properties_roundtrip() -> None:
    fields = {
        "content_type": "application/json",
        "content_encoding": "gzip",
        "headers": {"a": 1},
        "delivery_mode": 2,
        "priority": 9,
        "correlation_id": "corr",
        "reply_to": "amq.rabbitmq.reply-to",
        "expiration": "60000",
        "message_id": "m-1",
        "timestamp": 1_700_000_000,
        "type": "order.created",
        "user_id": "guest",
        "app_id": "app",
        "cluster_id": "c",
    }
    decoded = decode_properties(encode_properties(fields))
    assert_same(decoded, fields)


def test_empty_headers_are_kept() -> None:
    decoded = decode_properties(encode_properties({"headers": {}}))
    assert decoded == {"headers": {}}
    assert type(decoded["headers"]) is dict


def test_decode_returns_fresh_objects() -> None:
    text = encode_properties({"headers": {"a": [1, 2]}})
    first = decode_properties(text)
    first["headers"]["a"].append(3)
    assert decode_properties(text) == {"headers": {"a": [1, 2]}}


def test_properties_from_pika_roundtrip() -> None:
    pika = pytest.importorskip("pika")
    props = pika.BasicProperties(
        content_type="text/plain",
        delivery_mode=pika.DeliveryMode.Persistent,
        headers={"k": "v", "n": [1, 2]},
        timestamp=123,
    )
    decoded = decode_properties(encode_properties(vars(props)))
    assert decoded == {
        "content_type": "text/plain",
        "delivery_mode": 2,
        "headers": {"k": "v", "n": [1, 2]},
        "timestamp": 123,
    }
    assert type(decoded["delivery_mode"]) is int


# --------------------------------------------------------------------------- scalar types


@pytest.mark.parametrize(
    "value",
    [
        "",
        "plain",
        "ünïcødé ☃ \U0001f600",
        '["M", {"x": 1}]',
        "[",
        '\x00\n\t"\\',
        b"",
        b"\x00\xff binary",
        True,
        False,
        None,
        0,
        1,
        -1,
        INT64_MIN,
        INT64_MAX,
        2**31,
        0.0,
        -0.0,
        1.5,
        1e16,
        5e-324,
        -1.7976931348623157e308,
        float("inf"),
        float("-inf"),
        float("nan"),
        Decimal("0"),
        Decimal("1.00"),
        Decimal("1E+2"),
        Decimal("-0"),
        Decimal("-0.000"),
        Decimal("123456789012345678901234567890.123456789"),
        Decimal("1E-30"),
        Decimal("NaN"),
        Decimal("-sNaN12"),
        Decimal("Infinity"),
        datetime(2024, 2, 29, 23, 59, 59, 999999),
        datetime(1, 1, 1),
        datetime(2024, 1, 1, 12, tzinfo=UTC),
        datetime(2024, 1, 1, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=5, seconds=7, microseconds=3))),
        datetime(2000, 1, 1, tzinfo=timezone(timedelta(microseconds=1))),
        datetime(2000, 1, 1, tzinfo=timezone(timedelta(hours=-23, minutes=-59, seconds=-1))),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(seconds=-1))),
        [],
        [1, "a", None],
        {},
        {"nested": {"deeper": [b"x", Decimal("2.50")]}},
    ],
)
def test_value_roundtrip(value: Any) -> None:
    assert_same(roundtrip_headers({"k": value}), {"k": value})
    assert_same(roundtrip_table({"k": value}), {"k": value})
    assert_same(roundtrip_headers({"k": [value]}), {"k": [value]})
    assert_same(roundtrip_headers({"k": {"inner": value}}), {"k": {"inner": value}})


def test_bool_is_not_int() -> None:
    decoded = roundtrip_headers({"t": True, "f": False, "one": 1, "zero": 0, "l": [True, 1]})
    assert decoded["t"] is True
    assert decoded["f"] is False
    assert type(decoded["one"]) is int and decoded["one"] == 1
    assert type(decoded["zero"]) is int and decoded["zero"] == 0
    assert [type(x) for x in decoded["l"]] == [bool, int]


def test_float_is_not_int() -> None:
    decoded = roundtrip_headers({"f": 1.0, "i": 1, "big": 1e22})
    assert type(decoded["f"]) is float
    assert type(decoded["i"]) is int
    assert type(decoded["big"]) is float and decoded["big"] == 1e22


def test_float_edge_cases_bit_exact() -> None:
    nan_payload = struct.unpack(">d", bytes.fromhex("7ff8000000000123"))[0]
    negative_nan = struct.unpack(">d", bytes.fromhex("fff8000000000000"))[0]
    values = [-0.0, 0.0, math.inf, -math.inf, math.nan, nan_payload, negative_nan, 0.1, 2.0**-1074]
    decoded = roundtrip_headers({"v": values})["v"]
    assert [float_bits(x) for x in decoded] == [float_bits(x) for x in values]
    assert math.copysign(1.0, decoded[0]) == -1.0


def test_decimal_exponent_preserved() -> None:
    for text in ["1.0", "1.00", "100", "1E+2", "1.000E+5", "-0.10", "0E-7"]:
        decoded = roundtrip_headers({"d": Decimal(text)})["d"]
        assert type(decoded) is Decimal
        assert str(decoded) == text
        assert decoded.as_tuple() == Decimal(text).as_tuple()


def test_datetimes() -> None:
    naive = datetime(2023, 6, 1, 8, 30, 15, 123456)
    aware = datetime(2023, 6, 1, 8, 30, 15, 654321, tzinfo=timezone(timedelta(hours=2)))
    decoded = roundtrip_headers({"naive": naive, "aware": aware})
    assert decoded["naive"] == naive
    assert decoded["naive"].tzinfo is None
    assert decoded["naive"].microsecond == 123456
    assert decoded["aware"] == aware
    assert decoded["aware"].utcoffset() == timedelta(hours=2)
    assert decoded["aware"].microsecond == 654321


def test_zoneinfo_datetime_keeps_offset() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        tz = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no tz database")
    value = datetime(2024, 7, 1, 12, 0, tzinfo=tz)
    decoded = roundtrip_headers({"d": value})["d"]
    assert decoded == value
    assert decoded.utcoffset() == timedelta(hours=2)
    assert decoded.replace(tzinfo=None) == datetime(2024, 7, 1, 12, 0)


def test_bytes_and_bytearray() -> None:
    decoded = roundtrip_headers({"b": b"\x00\x01\xfe\xff", "ba": bytearray(b"abc")})
    assert decoded == {"b": b"\x00\x01\xfe\xff", "ba": b"abc"}
    assert type(decoded["b"]) is bytes
    assert type(decoded["ba"]) is bytes


def test_tuple_becomes_list() -> None:
    decoded = roundtrip_headers({"t": (1, (2, "x"), [])})
    assert decoded == {"t": [1, [2, "x"], []]}
    assert type(decoded["t"]) is list
    assert type(decoded["t"][1]) is list


def test_nested_structures() -> None:
    headers = {
        "x-death": [
            {
                "count": 1,
                "reason": "expired",
                "queue": "q",
                "time": datetime(2024, 1, 1, tzinfo=UTC),
                "routing-keys": ["a", "b"],
            }
        ],
        "deep": {"a": {"b": {"c": [[[], {}], {"d": (Decimal("3.14"), b"z", None)}]}}},
    }
    assert_same(roundtrip_headers(headers), headers)


def test_key_order_preserved_in_headers() -> None:
    headers = {"z": 1, "a": 2, "m": {"y": 1, "b": 2}}
    decoded = roundtrip_headers(headers)
    assert list(decoded) == ["z", "a", "m"]
    assert list(decoded["m"]) == ["y", "b"]


def test_keys_that_look_like_tags() -> None:
    headers = {
        "M": {"L": ["b", "D"]},
        "b": "aGVsbG8=",
        "D": "1.5",
        "T": "2024-01-01T00:00:00",
        "f": "7ff8000000000000",
        "L": ["L", []],
        "tuple-like": ["M", {"a": 1}],
        "": "empty key",
    }
    decoded = roundtrip_headers(headers)
    assert_same(decoded, headers)
    assert decoded["L"] == ["L", []]
    assert decoded["tuple-like"] == ["M", {"a": 1}]
    assert type(decoded["b"]) is str
    assert type(decoded["D"]) is str


def test_subclasses_are_stored_as_base_types() -> None:
    class Color(enum.IntEnum):
        red = 3

    class Name(str, enum.Enum):  # noqa: UP042 - str() of such members is "Name.alice"
        alice = "alice"

    class MyFloat(float):
        pass

    headers = {
        "i": Color.red,
        "s": Name.alice,
        "f": MyFloat(1.5),
        "d": OrderedDict(a=1),
        Name.alice: "key subclass",
    }
    decoded = roundtrip_headers(headers)
    assert decoded == {"i": 3, "s": "alice", "f": 1.5, "d": {"a": 1}, "alice": "key subclass"}
    assert [type(v) for v in decoded.values()] == [int, str, float, dict, str]
    assert [type(k) for k in decoded] == [str] * 5


def test_headers_accept_any_mapping() -> None:
    decoded = decode_properties(encode_properties({"headers": MappingProxyType({"a": 1})}))
    assert decoded == {"headers": {"a": 1}}
    assert type(decoded["headers"]) is dict


def test_shared_subtrees_are_not_cycles() -> None:
    shared = [1, 2]
    decoded = roundtrip_headers({"a": shared, "b": shared, "c": {"x": shared}})
    assert decoded == {"a": [1, 2], "b": [1, 2], "c": {"x": [1, 2]}}


# --------------------------------------------------------------------------- field tables


def test_encode_table_empty_is_empty_string() -> None:
    assert encode_table({}) == ""
    assert decode_table("") == {}
    assert decode_table(None) == {}


def test_encode_table_is_canonical() -> None:
    a = encode_table({"x-match": "all", "b": {"z": 1, "a": 2}, "a": 1})
    b = encode_table({"a": 1, "b": {"a": 2, "z": 1}, "x-match": "all"})
    assert a == b
    assert decode_table(a) == {"a": 1, "b": {"a": 2, "z": 1}, "x-match": "all"}


def test_encode_table_label_in_errors() -> None:
    with pytest.raises(TypeError, match=r"argument 'x-foo' has unsupported type set"):
        encode_table({"x-foo": {1}}, label="argument")
    with pytest.raises(TypeError, match=r"key 'x-foo' has unsupported type"):
        encode_table({"x-foo": {1}})


def test_encode_table_rejects_non_mapping() -> None:
    with pytest.raises(TypeError, match="mapping"):
        encode_table([("a", 1)])  # type: ignore[arg-type]


def test_table_roundtrip_types() -> None:
    table = {
        "x-message-ttl": 60000,
        "x-dead-letter-exchange": "dlx",
        "x-queue-mode": None,
        "x-single-active-consumer": True,
        "x-args": [1.5, b"b", Decimal("2.0")],
    }
    decoded = roundtrip_table(table)
    assert_same(decoded, table, ordered=False)
    assert list(decoded) == sorted(table)


# --------------------------------------------------------------------------- header errors


def test_unsupported_type_names_path_and_type() -> None:
    with pytest.raises(TypeError, match=r"header 'a\.b' has unsupported type set"):
        encode_properties({"headers": {"a": {"b": {1, 2}}}})
    with pytest.raises(TypeError, match=r"header 'a' has unsupported type object"):
        encode_properties({"headers": {"a": object()}})
    with pytest.raises(TypeError, match=r"header 'l\[1\]' has unsupported type complex"):
        encode_properties({"headers": {"l": [1, 2j]}})
    with pytest.raises(TypeError, match=r"header 'x\.y\[0\]\.z' has unsupported type date"):
        encode_properties({"headers": {"x": {"y": [{"z": datetime(2020, 1, 1).date()}]}}})
    with pytest.raises(TypeError, match=r"header 'm' has unsupported type memoryview"):
        encode_properties({"headers": {"m": memoryview(b"x")}})


def test_non_str_keys_rejected() -> None:
    with pytest.raises(TypeError, match=r"header key 1 of type int; .*keys must be str"):
        encode_properties({"headers": {1: "x"}})
    with pytest.raises(TypeError, match=r"header 'outer' has key b'k' of type bytes"):
        encode_properties({"headers": {"outer": {b"k": 1}}})
    with pytest.raises(TypeError, match=r"key 'a\.b' has key None of type NoneType"):
        encode_table({"a": {"b": {None: 1}}})


def test_long_keys() -> None:
    ok = "k" * 255
    assert roundtrip_headers({ok: 1}) == {ok: 1}
    with pytest.raises(ValueError, match=r"header 'kkk.*key is 256 UTF-8 bytes"):
        encode_properties({"headers": {"k" * 256: 1}})
    with pytest.raises(ValueError, match=r"header 'a\.é.*key is 256 UTF-8 bytes"):
        encode_properties({"headers": {"a": {"é" * 128: 1}}})


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_int_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match=r"header 'a\.n' has int .* signed 64-bit"):
        encode_properties({"headers": {"a": {"n": value}}})
    with pytest.raises(ValueError, match=r"header 'l\[0\]' has int"):
        encode_properties({"headers": {"l": [value]}})


def test_reference_cycles_rejected() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(ValueError, match=r"header 'a\[1\]' contains a reference cycle"):
        encode_properties({"headers": {"a": loop}})
    table: dict[str, Any] = {}
    table["self"] = table
    with pytest.raises(ValueError, match="reference cycle"):
        encode_properties({"headers": {"t": table}})


# --------------------------------------------------------------------------- property errors


def test_unknown_field_rejected() -> None:
    with pytest.raises(TypeError, match=r"unknown message property 'contenttype'"):
        encode_properties({"contenttype": "text/plain"})
    with pytest.raises(TypeError, match=r"unknown message property 'bogus'"):
        encode_properties({"bogus": None})


SHORTSTR_FIELDS = [
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
]


@pytest.mark.parametrize("name", SHORTSTR_FIELDS)
def test_shortstr_fields(name: str) -> None:
    for value in ["", "x", "x" * 255, "é" * 127, "\U0001f600" * 63]:
        decoded = decode_properties(encode_properties({name: value}))
        assert decoded == {name: value}
        assert type(decoded[name]) is str
    with pytest.raises(TypeError, match=rf"property '{name}' must be str, got int"):
        encode_properties({name: 5})
    with pytest.raises(TypeError, match=rf"property '{name}' must be str, got bytes"):
        encode_properties({name: b"x"})
    with pytest.raises(ValueError, match=rf"property '{name}' is 256 UTF-8 bytes"):
        encode_properties({name: "x" * 256})
    with pytest.raises(ValueError, match=rf"property '{name}' is 256 UTF-8 bytes"):
        encode_properties({name: "é" * 128})


def test_delivery_mode() -> None:
    class Mode(enum.Enum):
        persistent = 2

    for value, expected in [(1, 1), (2, 2), (Mode.persistent, 2)]:
        decoded = decode_properties(encode_properties({"delivery_mode": value}))
        assert decoded == {"delivery_mode": expected}
        assert type(decoded["delivery_mode"]) is int
    for bad in [0, 3, -1]:
        with pytest.raises(ValueError, match=r"'delivery_mode' must be 1 or 2"):
            encode_properties({"delivery_mode": bad})
    for bad in ["2", True, 2.0]:
        with pytest.raises(TypeError, match=r"'delivery_mode' must be int"):
            encode_properties({"delivery_mode": bad})


def test_delivery_mode_pika_enum() -> None:
    pika = pytest.importorskip("pika")
    text = encode_properties({"delivery_mode": pika.DeliveryMode.Transient})
    decoded = decode_properties(text)
    assert decoded == {"delivery_mode": 1}
    assert type(decoded["delivery_mode"]) is int


def test_priority() -> None:
    for value in [0, 5, 255]:
        decoded = decode_properties(encode_properties({"priority": value}))
        assert decoded == {"priority": value}
        assert type(decoded["priority"]) is int
    for bad in [-1, 256]:
        with pytest.raises(ValueError, match=r"'priority' must be in 0\.\.255"):
            encode_properties({"priority": bad})
    for bad in ["1", True, 1.0]:
        with pytest.raises(TypeError, match=r"'priority' must be int"):
            encode_properties({"priority": bad})


def test_timestamp() -> None:
    for value in [0, 1_700_000_000, 2**64 - 1]:
        decoded = decode_properties(encode_properties({"timestamp": value}))
        assert decoded == {"timestamp": value}
        assert type(decoded["timestamp"]) is int
    for value in [
        datetime(2024, 5, 6, 7, 8, 9, 10),
        datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=timezone(timedelta(hours=-3))),
    ]:
        decoded = decode_properties(encode_properties({"timestamp": value}))
        assert_same(decoded, {"timestamp": value})
    for bad in [-1, 2**64]:
        with pytest.raises(ValueError, match=r"'timestamp' must be in 0\.\."):
            encode_properties({"timestamp": bad})
    for bad in ["0", True, 1.5]:
        with pytest.raises(TypeError, match=r"'timestamp' must be int"):
            encode_properties({"timestamp": bad})


def test_headers_must_be_mapping() -> None:
    with pytest.raises(TypeError, match=r"property 'headers' must be a dict, got list"):
        encode_properties({"headers": [("a", 1)]})


# --------------------------------------------------------------------------- corrupt input


@pytest.mark.parametrize(
    "text",
    ['{"a":["Z",1]}', '{"a":["M"]}', '{"a":["M",[1]]}', '{"a":["L",{}]}', "[1]", "{", '{"a":1} x'],
)
def test_corrupt_table_text(text: str) -> None:
    with pytest.raises(ValueError, match="corrupt"):
        decode_table(text)


def test_corrupt_properties_text() -> None:
    with pytest.raises(ValueError, match="corrupt"):
        decode_properties('"just a string"')
    with pytest.raises(ValueError, match="corrupt"):
        decode_properties("{nope")


def test_pure_python_json_fallback_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    import json.encoder

    import mqstore.codec as codec

    sample = {"b": [1, -0.0, "é\u2028", None, True], "a": {"z": ["M", {}], "y": 1e300}}
    fast = "".join(codec._make_iterencode(True)(sample, 0))
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    slow = "".join(codec._make_iterencode(True)(sample, 0))
    assert slow == fast
    assert fast.startswith('{"a":{"y":1e+300,"z":["M",{}]},"b":[1,-0.0,')
    assert fast.isascii()


# --------------------------------------------------------------------------- property tests

keys = st.text(max_size=12)
fixed_offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
    st.floats(),
    st.text(),
    st.binary(max_size=20),
    st.binary(max_size=20).map(bytearray),
    st.decimals(),
    st.datetimes(timezones=st.none() | fixed_offsets),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=12,
)
tables = st.dictionaries(keys, values, max_size=6)


@settings(max_examples=75, deadline=None)
@given(tables)
def test_headers_roundtrip_property(table: dict[str, Any]) -> None:
    assert_same(roundtrip_headers(table), table)


@settings(max_examples=40, deadline=None)
@given(tables)
def test_table_roundtrip_property(table: dict[str, Any]) -> None:
    decoded = roundtrip_table(table)
    # encode_table sorts keys at every level (canonical text), so ignore key order.
    assert_same(decoded, table, ordered=False)
    assert list(decoded) == sorted(decoded)
    assert encode_table(decoded) == encode_table(table)


shortstrs = st.text(max_size=63)
properties = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(SHORTSTR_FIELDS, shortstrs),
        "headers": tables,
        "delivery_mode": st.sampled_from([1, 2]),
        "priority": st.integers(0, 255),
        "timestamp": st.integers(0, 2**64 - 1) | st.datetimes(timezones=st.none() | fixed_offsets),
    },
)


@settings(max_examples=40, deadline=None)
@given(properties)
def test_properties_roundtrip_property(fields: dict[str, Any]) -> None:
    text = encode_properties(fields)
    if not fields:
        assert text is None
    assert_same(decode_properties(text), fields)
