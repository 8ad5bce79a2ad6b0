"""Tests for mqstore.routing: RabbitMQ routing semantics for all four exchange types."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqstore.routing import (
    TopicIndex,
    compile_topic,
    direct_matches,
    fanout_matches,
    headers_match,
    topic_matches,
    validate_headers_binding,
)

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# ---------------------------------------------------------------------------
# Reference models (deliberately naive; obviously correct by inspection)
# ---------------------------------------------------------------------------


def ref_split(key: str) -> tuple[str, ...]:
    # RabbitMQ: split_topic_key(<<>>) -> [] ; otherwise split on every '.'.
    return () if key == "" else tuple(key.split("."))


@functools.lru_cache(maxsize=1 << 16)
def ref_words_match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        # zero words, or swallow one word and stay on '#'
        return ref_words_match(rest, words) or (bool(words) and ref_words_match(pattern, words[1:]))
    if not words:
        return False
    return (head == "*" or head == words[0]) and ref_words_match(rest, words[1:])


def ref_topic(pattern: str, key: str) -> bool:
    return ref_words_match(ref_split(pattern), ref_split(key))


def ref_eq(expected: Any, actual: Any) -> bool:
    # Scalars used by the headers strategies: bool is its own kind, int/float compare by
    # value, str/bytes compare by UTF-8 bytes.
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, str | bytes) and isinstance(actual, str | bytes):
        e = expected.encode() if isinstance(expected, str) else expected
        a = actual.encode() if isinstance(actual, str) else actual
        return e == a
    if isinstance(expected, str | bytes) or isinstance(actual, str | bytes):
        return False
    if expected is None or actual is None:
        return expected is None and actual is None
    return expected == actual


def ref_headers(args: dict[str, Any] | None, headers: dict[str, Any] | None) -> bool:
    args = args or {}
    headers = headers or {}
    mode = args.get("x-match")
    if mode not in ("all", "any", "all-with-x", "any-with-x"):
        mode = "all"
    relevant = {
        k: v
        for k, v in args.items()
        if k != "x-match" and (mode.endswith("-with-x") or not k.startswith("x-"))
    }
    results = [k in headers and (v is None or ref_eq(v, headers[k])) for k, v in relevant.items()]
    return all(results) if mode.startswith("all") else any(results)


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

PATTERN_WORDS = st.sampled_from(["", "a", "b", "*", "#"])
KEY_WORDS = st.sampled_from(["", "a", "b", "c", "*", "#"])
patterns = st.lists(PATTERN_WORDS, max_size=6).map(".".join)
routing_keys = st.lists(KEY_WORDS, max_size=7).map(".".join)
# Raw strings over the separator alphabet also exercise "..", leading/trailing dots.
raw_keys = st.text(alphabet="ab.*#", max_size=8)

# ---------------------------------------------------------------------------
# direct / fanout
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("binding_key", "routing_key", "expected"),
    [
        ("a", "a", True),
        ("a", "A", False),
        ("", "", True),
        ("", "a", False),
        ("a.*", "a.b", False),  # no wildcards for direct
        ("#", "anything", False),
        ("a.b", "a.b", True),
    ],
)
def test_direct_matches(binding_key: str, routing_key: str, expected: bool) -> None:
    assert direct_matches(binding_key, routing_key) is expected


@pytest.mark.parametrize(("binding_key", "routing_key"), [("", ""), ("x", "y"), ("a.*", "")])
def test_fanout_always_matches(binding_key: str, routing_key: str) -> None:
    assert fanout_matches(binding_key, routing_key) is True


# ---------------------------------------------------------------------------
# topic: explicit cases
# ---------------------------------------------------------------------------

TOPIC_CASES = [
    # '#' alone matches everything, including the empty key
    ("#", "", True),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("#", ".", True),
    # '#' in the middle matches zero or more words
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.b.c", False),
    ("a.#.b", "b.a.b", False),
    ("a.#", "a", True),
    ("a.#", "a.b.c", True),
    ("a.#", "ab", False),
    ("#.a", "a", True),
    ("#.a", "x.y.a", True),
    ("#.a", "a.x", False),
    ("#.b.#", "b", True),
    ("#.b.#", "a.b.c", True),
    ("#.b.#", "a.c", False),
    # '*' is exactly one word
    ("*", "a", True),
    ("*", "a.b", False),
    ("a.*", "a", False),
    ("a.*", "a.b", True),
    ("a.*", "a.b.c", False),
    ("*.b.c", "a.b.c", True),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    # The empty routing key is ZERO words (RabbitMQ split_topic_key(<<>>) -> []).
    ("", "", True),
    ("", "a", False),
    ("*", "", False),
    ("*.#", "", False),
    ("#.*", "", False),
    ("#.*.#", "", False),
    ("#.#", "", True),
    ("#.#.#", "", True),
    # ... but '*' matches an empty word inside a non-empty key
    ("a.*", "a.", True),
    ("*.a", ".a", True),
    ("a.*.b", "a..b", True),
    ("*.*", ".", True),
    ("*", ".", False),
    ("#", "..", True),
    # empty words are literal words in patterns too
    ("a..b", "a..b", True),
    ("a..b", "a.b", False),
    ("a.", "a.", True),
    ("a.", "a", False),
    (".a", ".a", True),
    (".a", "a", False),
    (".", ".", True),
    (".", "", False),
    ("a.#", "a.", True),
    # wildcard combinations
    ("#.#", "a", True),
    ("#.#", "a.b.c", True),
    ("#.*", "a", True),
    ("#.*", "a.b", True),
    ("*.#", "a", True),
    ("*.#", "a.b.c", True),
    ("*.*.#", "a", False),
    ("*.*.#", "a.b", True),
    ("#.*.*", "a", False),
    ("#.*.#", "a", True),
    ("*.#.*", "a", False),
    ("*.#.*", "a.b", True),
    ("*.#.*", "a.x.y.b", True),
    ("a.#.#.b", "a.b", True),
    ("a.#.*.#.b", "a.b", False),
    ("a.#.*.#.b", "a.x.b", True),
    # wildcards only have meaning as whole words
    ("a*", "ab", False),
    ("a*", "a*", True),
    ("a#", "a.b", False),
    ("a.b#", "a.b", False),
    # routing-key words are literal: '*'/'#' in a key do not act as wildcards
    ("a.b", "a.*", False),
    ("a.b", "#", False),
    ("a.*", "a.*", True),
    ("a.#", "a.#", True),
    # case-sensitive
    ("A.*", "a.b", False),
]


@pytest.mark.parametrize(("pattern", "routing_key", "expected"), TOPIC_CASES)
def test_topic_matches_table(pattern: str, routing_key: str, expected: bool) -> None:
    assert topic_matches(pattern, routing_key) is expected
    assert compile_topic(pattern)(routing_key) is expected
    index = TopicIndex()
    index.add(pattern, "q")
    assert index.match(routing_key) == ({"q"} if expected else set())


@pytest.mark.parametrize(("pattern", "routing_key", "expected"), TOPIC_CASES)
def test_reference_model_agrees_with_table(pattern: str, routing_key: str, expected: bool) -> None:
    # Guards the oracle used by the property tests below.
    assert ref_topic(pattern, routing_key) is expected


# The binding/expectation table from RabbitMQ's own topic exchange test suite.
RABBIT_BINDINGS = {
    "t1": "a.b.c",
    "t2": "a.*.c",
    "t3": "a.#.b",
    "t4": "a.b.b.c",
    "t5": "#",
    "t6": "#.#",
    "t7": "#.b",
    "t8": "*.*",
    "t9": "a.*",
    "t10": "*.b.c",
    "t11": "a.#",
    "t12": "a.#.#",
    "t13": "b.b.c",
    "t14": "a.b.b",
    "t15": "a.b",
    "t16": "b.c",
    "t17": "",
    "t18": "*.*.*",
    "t19": "vodka.martini",
    "t20": "a.b.c",
    "t21": "*.#",
    "t22": "#.*.#",
    "t23": "*.#.#",
    "t24": "#.#.#",
    "t25": "*",
    "t26": "#.b.#",
}
RABBIT_EXPECTED = {
    "a.b.c": "t1 t2 t5 t6 t10 t11 t12 t18 t20 t21 t22 t23 t24 t26",
    "a.b": "t3 t5 t6 t7 t8 t9 t11 t12 t15 t21 t22 t23 t24 t26",
    "a.b.b": "t3 t5 t6 t7 t11 t12 t14 t18 t21 t22 t23 t24 t26",
    "": "t5 t6 t17 t24",
    "b.c.c": "t5 t6 t18 t21 t22 t23 t24 t26",
    "a.a.a.a.a": "t5 t6 t11 t12 t21 t22 t23 t24",
    "vodka.gin": "t5 t6 t8 t21 t22 t23 t24",
    "vodka.martini": "t5 t6 t8 t19 t21 t22 t23 t24",
    "b.b.c": "t5 t6 t10 t13 t18 t21 t22 t23 t24 t26",
    "nothing.here.at.all": "t5 t6 t21 t22 t23 t24",
    "oneword": "t5 t6 t21 t22 t23 t24 t25",
}


def _rabbit_index() -> TopicIndex:
    index = TopicIndex()
    for queue, pattern in RABBIT_BINDINGS.items():
        index.add(pattern, queue)
    return index


@pytest.mark.parametrize(("routing_key", "expected"), sorted(RABBIT_EXPECTED.items()))
def test_rabbitmq_suite_table(routing_key: str, expected: str) -> None:
    want = set(expected.split())
    index = _rabbit_index()
    assert index.match(routing_key) == want
    assert {q for q, p in RABBIT_BINDINGS.items() if topic_matches(p, routing_key)} == want


def test_rabbitmq_suite_table_after_removals() -> None:
    index = _rabbit_index()
    for queue in ("t1", "t5", "t11", "t19", "t21"):
        index.discard(RABBIT_BINDINGS[queue], queue)
    assert len(index) == len(RABBIT_BINDINGS) - 5
    assert index.match("a.b.c") == set("t2 t6 t10 t12 t18 t20 t22 t23 t24 t26".split())
    assert index.match("") == {"t6", "t17", "t24"}
    assert index.match("oneword") == {"t6", "t22", "t23", "t24", "t25"}


def test_pathological_patterns_do_not_backtrack() -> None:
    # A backtracking matcher is exponential here; the NFA/trie are polynomial.
    pattern = ".".join(["#"] * 25 + ["*"] * 3 + ["#"] * 25 + ["z"])
    key_miss = ".".join(["a"] * 60)
    key_hit = key_miss + ".z"
    assert topic_matches(pattern, key_miss) is False
    assert topic_matches(pattern, key_hit) is True
    alternating = ".".join(["#", "a"] * 15 + ["b"])
    assert topic_matches(alternating, ".".join(["a"] * 80)) is False
    assert topic_matches(alternating, ".".join(["a"] * 80 + ["b"])) is True
    index = TopicIndex()
    index.add(pattern, 1)
    index.add(alternating, 2)
    assert index.match(key_miss) == set()
    assert index.match(key_hit) == {1}
    assert index.match(".".join(["a"] * 80 + ["b"])) == {2}


def test_compile_topic_is_cached() -> None:
    assert compile_topic("cache.*.test.#") is compile_topic("cache.*.test.#")
    assert compile_topic("cache.*.test.#") is not compile_topic("cache.*.other.#")


# ---------------------------------------------------------------------------
# TopicIndex: explicit behaviour
# ---------------------------------------------------------------------------


def test_topic_index_add_discard_len_and_dedup() -> None:
    index = TopicIndex()
    assert len(index) == 0
    assert index.match("a") == set()
    index.add("a.*", "q1")
    index.add("a.*", "q1")  # same pair: idempotent
    index.add("#", "q1")  # same value, another pattern
    index.add("a.b", "q2")
    assert len(index) == 3
    assert index.match("a.b") == {"q1", "q2"}
    index.discard("a.*", "q1")
    assert len(index) == 2
    assert index.match("a.b") == {"q1", "q2"}  # still reachable through '#'
    index.discard("#", "q1")
    assert index.match("a.b") == {"q2"}
    index.discard("a.b", "nope")  # absent value: no-op
    index.discard("x.y.z", "q2")  # absent pattern: no-op
    index.discard("a", "q2")  # prefix of an existing pattern: no-op
    assert len(index) == 1
    assert index.match("a.b") == {"q2"}
    index.discard("a.b", "q2")
    assert len(index) == 0
    assert index.match("a.b") == set()


def test_topic_index_prunes_empty_nodes() -> None:
    index = TopicIndex()
    index.add("a.b.c", 1)
    index.add("a.b", 2)
    index.discard("a.b.c", 1)
    assert index.match("a.b") == {2}
    assert "c" not in index._root.children["a"].children["b"].children
    index.discard("a.b", 2)
    assert index._root.children == {}


def test_topic_index_empty_pattern_and_key() -> None:
    index = TopicIndex()
    index.add("", "empty")
    index.add("#", "hash")
    index.add("*", "star")
    assert index.match("") == {"empty", "hash"}
    assert index.match("x") == {"hash", "star"}
    assert index.match(".") == {"hash"}


# ---------------------------------------------------------------------------
# topic: properties against the reference model
# ---------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(pattern=patterns, key=routing_keys | raw_keys)
def test_topic_matches_agrees_with_reference(pattern: str, key: str) -> None:
    expected = ref_topic(pattern, key)
    assert topic_matches(pattern, key) is expected
    assert compile_topic(pattern)(key) is expected


@PROPERTY_SETTINGS
@given(pattern=raw_keys, key=raw_keys)
def test_topic_matches_agrees_with_reference_on_raw_strings(pattern: str, key: str) -> None:
    assert topic_matches(pattern, key) is ref_topic(pattern, key)


@PROPERTY_SETTINGS
@given(
    bindings=st.lists(st.tuples(patterns, st.integers(0, 5)), max_size=12),
    removals=st.lists(st.tuples(patterns, st.integers(0, 5)), max_size=6),
    keys=st.lists(routing_keys | raw_keys, min_size=1, max_size=5),
)
def test_topic_index_agrees_with_reference(
    bindings: list[tuple[str, int]],
    removals: list[tuple[str, int]],
    keys: list[str],
) -> None:
    index = TopicIndex()
    model: set[tuple[str, int]] = set()
    for pattern, value in bindings:
        index.add(pattern, value)
        model.add((pattern, value))
    # Remove a mix of present and absent pairs.
    for pattern, value in removals + bindings[::2]:
        index.discard(pattern, value)
        model.discard((pattern, value))
    assert len(index) == len(model)
    for key in keys:
        expected = {value for pattern, value in model if ref_topic(pattern, key)}
        assert index.match(key) == expected


# ---------------------------------------------------------------------------
# headers: explicit cases
# ---------------------------------------------------------------------------

HEADERS_CASES = [
    # default mode is all
    ({"a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 0}, True),
    ({"a": 1, "b": "x"}, {"a": 1}, False),
    ({"a": 1, "b": "x"}, {"a": 1, "b": "y"}, False),
    ({"x-match": "all", "a": 1}, {"a": 1}, True),
    ({"x-match": "any", "a": 1, "b": 2}, {"b": 2}, True),
    ({"x-match": "any", "a": 1, "b": 2}, {"a": 2, "b": 1}, False),
    ({"x-match": "any", "a": 1}, {}, False),
    # no non-x arguments: all matches everything, any matches nothing
    ({}, {}, True),
    ({}, None, True),
    (None, {"a": 1}, True),
    ({"x-match": "all"}, {"a": 1}, True),
    ({"x-match": "any"}, {"a": 1}, False),
    ({"x-match": "any"}, None, False),
    ({"x-match": "any", "x-a": 1}, {"x-a": 1}, False),
    ({"x-match": "all", "x-a": 1}, {}, True),
    # x- arguments are ignored for all/any ...
    ({"x-match": "all", "a": 1, "x-b": 2}, {"a": 1}, True),
    ({"x-match": "all", "a": 1}, {"a": 1, "x-b": 2}, True),
    ({"x-match": "any", "x-b": 2, "a": 1}, {"x-b": 2}, False),
    # ... but take part for the -with-x variants
    ({"x-match": "all-with-x", "a": 1, "x-b": 2}, {"a": 1}, False),
    ({"x-match": "all-with-x", "a": 1, "x-b": 2}, {"a": 1, "x-b": 2}, True),
    ({"x-match": "all-with-x", "x-b": 2}, {"x-b": 3}, False),
    ({"x-match": "any-with-x", "x-b": 2}, {"x-b": 2}, True),
    ({"x-match": "any-with-x", "a": 1, "x-b": 2}, {"a": 0, "x-b": 2}, True),
    ({"x-match": "any-with-x", "a": 1, "x-b": 2}, {"a": 0, "x-b": 0}, False),
    ({"x-match": "any-with-x"}, {"x-match": "any-with-x"}, False),
    # x-match itself never takes part, even with -with-x
    ({"x-match": "all-with-x"}, {}, True),
    ({"x-match": "all-with-x", "a": 1}, {"a": 1, "x-match": "other"}, True),
    # None (AMQP void) binding value: presence test
    ({"a": None}, {"a": "anything"}, True),
    ({"a": None}, {"a": None}, True),
    ({"a": None}, {"a": False}, True),
    ({"a": None}, {"b": 1}, False),
    ({"a": None}, None, False),
    ({"x-match": "any", "a": None, "b": 1}, {"a": 0}, True),
    ({"a": 1}, {"a": None}, False),
    ({"a": ""}, {"a": None}, False),
    # numeric types: int equals float by value (Erlang 1 == 1.0)
    ({"a": 1}, {"a": 1.0}, True),
    ({"a": 1.5}, {"a": 1.5}, True),
    ({"a": 2}, {"a": 2.5}, False),
    # bool is not a number (AMQP bool decodes to an atom, true =/= 1)
    ({"a": True}, {"a": 1}, False),
    ({"a": 1}, {"a": True}, False),
    ({"a": False}, {"a": 0}, False),
    ({"a": 0.0}, {"a": False}, False),
    ({"a": True}, {"a": True}, True),
    ({"a": False}, {"a": False}, True),
    ({"a": True}, {"a": False}, False),
    # strings: longstr and binary are both binaries, compared by bytes
    ({"a": "x"}, {"a": "x"}, True),
    ({"a": "x"}, {"a": b"x"}, True),
    ({"a": b"\xc3\xa9"}, {"a": "é"}, True),
    ({"a": "x"}, {"a": "X"}, False),
    ({"a": "1"}, {"a": 1}, False),
    ({"a": ""}, {"a": b""}, True),
    # decimals compare as {Scale, Unscaled}
    ({"a": Decimal("1.5")}, {"a": Decimal("1.5")}, True),
    ({"a": Decimal("1.0")}, {"a": Decimal("1.00")}, False),
    ({"a": Decimal("1")}, {"a": 1}, False),
    # nested values: kinds must agree too
    ({"a": [1, "x"]}, {"a": [1, "x"]}, True),
    ({"a": [1, "x"]}, {"a": (1, "x")}, True),
    ({"a": [1]}, {"a": [1.0]}, False),
    ({"a": [1]}, {"a": [True]}, False),
    ({"a": ["x"]}, {"a": [b"x"]}, False),
    ({"a": [1, 2]}, {"a": [2, 1]}, False),
    ({"a": [1]}, {"a": [1, 1]}, False),
    ({"a": {"k": 1, "j": [None]}}, {"a": {"j": [None], "k": 1}}, True),
    ({"a": {"k": 1}}, {"a": {"k": 2}}, False),
    ({"a": {"k": 1}}, {"a": {"k": 1, "z": 0}}, False),
    ({"a": {"k": 1}}, {"a": [("k", 1)]}, False),
    ({"a": []}, {"a": {}}, False),
    # timestamps
    (
        {"a": datetime(2024, 1, 1, tzinfo=UTC)},
        {"a": datetime(2024, 1, 1, tzinfo=UTC)},
        True,
    ),
    ({"a": datetime(2024, 1, 1, tzinfo=UTC)}, {"a": 1704067200}, False),
    # invalid / non-string x-match routes as all (RabbitMQ legacy fallback)
    ({"x-match": "foo", "a": 1, "b": 2}, {"a": 1}, False),
    ({"x-match": "foo", "a": 1, "b": 2}, {"a": 1, "b": 2}, True),
    ({"x-match": "ANY", "a": 1, "b": 2}, {"a": 1}, False),
    ({"x-match": b"any", "a": 1, "b": 2}, {"a": 1}, False),
    ({"x-match": None, "a": 1}, {"a": 1}, True),
    # keys are case-sensitive
    ({"A": 1}, {"a": 1}, False),
    ({"x-match": "all", "X-a": 1}, {}, False),  # "X-" is not the "x-" prefix
]


@pytest.mark.parametrize(("args", "headers", "expected"), HEADERS_CASES)
def test_headers_match_table(
    args: dict[str, Any] | None, headers: dict[str, Any] | None, expected: bool
) -> None:
    assert headers_match(args, headers) is expected


@pytest.mark.parametrize("mode", ["all", "any", "all-with-x", "any-with-x"])
def test_validate_headers_binding_accepts_modes(mode: str) -> None:
    validate_headers_binding({"x-match": mode, "a": 1})
    assert headers_match({"x-match": mode, "a": 1}, {"a": 1}) is True


@pytest.mark.parametrize("arguments", [None, {}, {"a": 1}, {"x-other": "foo"}])
def test_validate_headers_binding_allows_missing_x_match(arguments: dict | None) -> None:
    validate_headers_binding(arguments)
    assert headers_match(arguments, {}) is (not arguments or "a" not in arguments)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "foo",
            'Invalid x-match field value <<"foo">>; expected all, any, all-with-x, or any-with-x',
        ),
        ("ALL", 'Invalid x-match field value <<"ALL">>;'),
        ("", "Invalid x-match field value <<>>;"),
        ("all ", 'Invalid x-match field value <<"all ">>;'),
        ("é", 'Invalid x-match field value <<"é"/utf8>>;'),
    ],
)
def test_validate_headers_binding_rejects_bad_value(value: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        validate_headers_binding({"x-match": value})
    assert str(excinfo.value).startswith(message)
    assert "x-match" in str(excinfo.value)


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(1, "long"), (True, "bool"), (None, "void"), (b"all", "binary"), (["all"], "array")],
)
def test_validate_headers_binding_rejects_bad_type(value: Any, type_name: str) -> None:
    with pytest.raises(ValueError, match=rf"^Invalid x-match field type {type_name} \(value "):
        validate_headers_binding({"x-match": value})


# ---------------------------------------------------------------------------
# headers: properties against the reference model
# ---------------------------------------------------------------------------

HEADER_KEYS = st.sampled_from(["a", "b", "c", "x-a", "x-b", "x-match"])
HEADER_VALUES = st.sampled_from([None, 0, 1, 1.0, 2.5, True, False, "", "1", "a", b"a", "x"])
X_MATCH = st.sampled_from([None, "all", "any", "all-with-x", "any-with-x", "bogus"])


@st.composite
def header_bindings(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.integers(0, 15)) == 0:
        return None
    args = draw(st.dictionaries(HEADER_KEYS, HEADER_VALUES, max_size=5))
    mode = draw(X_MATCH)
    if mode is not None:
        args["x-match"] = mode
    return args


message_headers = st.none() | st.dictionaries(HEADER_KEYS, HEADER_VALUES, max_size=5)


@PROPERTY_SETTINGS
@given(args=header_bindings(), headers=message_headers)
def test_headers_match_agrees_with_reference(
    args: dict[str, Any] | None, headers: dict[str, Any] | None
) -> None:
    assert headers_match(args, headers) is ref_headers(args, headers)


@PROPERTY_SETTINGS
@given(args=header_bindings())
def test_headers_binding_matches_its_own_values(args: dict[str, Any] | None) -> None:
    # Publishing the binding's own arguments as headers satisfies every mode that has at
    # least one participating argument, and always satisfies "all".
    headers = dict(args or {})
    mode = (args or {}).get("x-match")
    participating = [
        k
        for k in headers
        if k != "x-match" and (str(mode).endswith("-with-x") or not k.startswith("x-"))
    ]
    expected = bool(participating) or mode not in ("any", "any-with-x")
    assert headers_match(args, headers) is expected


@PROPERTY_SETTINGS
@given(args=header_bindings(), headers=message_headers)
def test_headers_validation_is_consistent_with_routing(
    args: dict[str, Any] | None, headers: dict[str, Any] | None
) -> None:
    # A binding rejected by validation routes exactly like the same binding with "all".
    try:
        validate_headers_binding(args)
    except ValueError as exc:
        assert "x-match" in str(exc)
        assert args is not None
        as_all = {**args, "x-match": "all"}
        assert headers_match(args, headers) is headers_match(as_all, headers)
    else:
        assert args is None or args.get("x-match", "all") in (
            "all",
            "any",
            "all-with-x",
            "any-with-x",
        )
