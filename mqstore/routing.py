"""Exchange routing rules (direct, fanout, topic, headers) as pure functions.

This module has no I/O and imports nothing else from ``mqstore`` so that the routing
semantics can be tested exhaustively in isolation and reused by every storage path.
The rules follow RabbitMQ's own implementation rather than the AMQP 0-9-1 prose,
because clients are written against what the broker actually does:

* topic:   ``rabbit_db_topic_exchange.erl`` (``split_topic_key`` and ``trie_match``)
* headers: ``rabbit_exchange_type_headers.erl`` (``headers_match`` and
  ``validate_binding``)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "TopicIndex",
    "compile_topic",
    "direct_matches",
    "fanout_matches",
    "headers_match",
    "topic_matches",
    "validate_headers_binding",
]

# ---------------------------------------------------------------------------
# direct / fanout
# ---------------------------------------------------------------------------


def direct_matches(binding_key: str, routing_key: str) -> bool:
    """Direct exchanges route on exact, case-sensitive key equality (no wildcards)."""
    return binding_key == routing_key


def fanout_matches(binding_key: str, routing_key: str) -> bool:
    """Fanout exchanges ignore both keys; present so callers can dispatch uniformly."""
    return True


# ---------------------------------------------------------------------------
# topic
# ---------------------------------------------------------------------------

_STAR = "*"
_HASH = "#"


def _split_words(key: str) -> tuple[str, ...]:
    """Split a topic key into words exactly as RabbitMQ does.

    RabbitMQ's ``split_topic_key(<<>>) -> []`` (and ``split_topic_key_binary``) turn the
    empty key into *zero* words, not one empty word; every other key is split on every
    '.', so ``"a."`` is ``["a", ""]``, ``".a"`` is ``["", "a"]``, ``"a..b"`` is
    ``["a", "", "b"]`` and ``"."`` is ``["", ""]``.  Consequences (all confirmed by the
    routing table in RabbitMQ's topic exchange test suite, where routing key ``""``
    reaches exactly the bindings ``""``, ``"#"``, ``"#.#"`` and ``"#.#.#"``):

    * ``"#"`` matches ``""``; ``"*"``, ``"*.#"`` and ``"#.*.#"`` do not (they need a word);
    * ``"*"`` does match an empty word *inside* a key, e.g. ``"a.*"`` matches ``"a."``;
    * binding key ``""`` matches only routing key ``""``.
    """
    return tuple(key.split(".")) if key else ()


def _nfa_match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    """Simulate the pattern as an NFA over words: O(len(pattern) * len(words)), no backtracking.

    A state is an index into ``pattern``.  ``#`` at index i is an epsilon move to i+1
    (zero words) plus a self-loop that consumes one word; ``*`` or a literal consume one
    word and advance.
    """
    end = len(pattern)

    def closure(states: set[int]) -> set[int]:
        out = set()
        for i in states:
            out.add(i)
            while i < end and pattern[i] == _HASH:
                i += 1
                out.add(i)
        return out

    states = closure({0})
    for word in words:
        nxt: set[int] = set()
        for i in states:
            if i == end:
                continue
            p = pattern[i]
            if p == _HASH:
                nxt.add(i)
            elif p == _STAR or p == word:
                nxt.add(i + 1)
        if not nxt:
            return False
        states = closure(nxt)
    return end in states


@functools.lru_cache(maxsize=4096)
def _compile_topic_cached(pattern: str) -> Callable[[str], bool]:
    words = _split_words(pattern)
    # "#.#" means the same as "#" (zero-or-more twice is zero-or-more); collapsing runs
    # keeps the NFA small without changing which keys match.
    collapsed: list[str] = []
    for w in words:
        if not (w == _HASH and collapsed and collapsed[-1] == _HASH):
            collapsed.append(w)
    cpattern = tuple(collapsed)

    if _HASH not in cpattern and _STAR not in cpattern:
        # Splitting is injective, so word-wise equality is plain string equality.
        def match_literal(routing_key: str) -> bool:
            return routing_key == pattern

        return match_literal

    if cpattern == (_HASH,):

        def match_all(routing_key: str) -> bool:
            return True

        return match_all

    if _HASH not in cpattern:
        size = len(cpattern)

        def match_stars(routing_key: str) -> bool:
            rwords = _split_words(routing_key)
            if len(rwords) != size:
                return False
            return all(p == _STAR or p == w for p, w in zip(cpattern, rwords, strict=True))

        return match_stars

    def match_general(routing_key: str) -> bool:
        return _nfa_match(cpattern, _split_words(routing_key))

    return match_general


def compile_topic(pattern: str) -> Callable[[str], bool]:
    """Return a matcher for one binding pattern; compiled matchers are LRU-cached (bounded)
    because the same few binding keys are evaluated for every published message."""
    return _compile_topic_cached(pattern)


def topic_matches(pattern: str, routing_key: str) -> bool:
    """True when topic binding ``pattern`` matches ``routing_key`` (RabbitMQ semantics).

    Words are separated by '.'; ``*`` matches exactly one (possibly empty) word and ``#``
    zero or more words.  Routing-key words are always literal.  See ``_split_words`` for
    how empty keys and empty words are treated.
    """
    return _compile_topic_cached(pattern)(routing_key)


class _Node:
    """One trie node: edges keyed by binding word, plus values bound at this exact pattern."""

    __slots__ = ("children", "is_hash", "values")

    def __init__(self, is_hash: bool) -> None:
        self.children: dict[str, _Node] = {}
        self.values: set[Hashable] = set()
        # Reached through a '#' edge, so matching may loop here consuming words.
        self.is_hash = is_hash


class TopicIndex:
    """Trie of topic binding patterns, so routing one key avoids scanning every binding.

    Mirrors RabbitMQ's topic trie: one edge per binding word, values stored at the node
    where their pattern ends.  Matching walks literal, ``*`` and ``#`` edges together and
    memoises visited ``(node, word position)`` states, so patterns such as ``#.#.#.x``
    cost O(nodes * words) rather than exponential backtracking.

    The index holds a set of ``(pattern, value)`` pairs: adding the same pair twice is a
    no-op and ``len()`` counts distinct pairs.  ``match`` returns a set, so a value bound
    through several matching patterns appears once (RabbitMQ likewise deduplicates
    destinations after routing).
    """

    def __init__(self) -> None:
        self._root = _Node(is_hash=False)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, pattern: str, value: Hashable) -> None:
        """Bind ``value`` under ``pattern``; idempotent for an existing pair."""
        node = self._root
        for word in _split_words(pattern):
            child = node.children.get(word)
            if child is None:
                child = _Node(is_hash=word == _HASH)
                node.children[word] = child
            node = child
        if value not in node.values:
            node.values.add(value)
            self._size += 1

    def discard(self, pattern: str, value: Hashable) -> None:
        """Remove the pair if present (like ``set.discard``) and prune emptied trie nodes."""
        path: list[tuple[_Node, str, _Node]] = []
        node = self._root
        for word in _split_words(pattern):
            child = node.children.get(word)
            if child is None:
                return
            path.append((node, word, child))
            node = child
        if value not in node.values:
            return
        node.values.discard(value)
        self._size -= 1
        for parent, word, child in reversed(path):
            if child.values or child.children:
                break
            del parent.children[word]

    def match(self, routing_key: str) -> set:
        """Values of every pattern that matches ``routing_key``."""
        words = _split_words(routing_key)
        end = len(words)
        result: set = set()
        seen: set[tuple[int, int]] = set()
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            state = (id(node), i)
            if state in seen:
                continue
            seen.add(state)
            if node.is_hash and i < end:
                stack.append((node, i + 1))  # '#' swallows one more word
            children = node.children
            hash_child = children.get(_HASH)
            if hash_child is not None:
                stack.append((hash_child, i))  # '#' matching zero words
            if i == end:
                result.update(node.values)
                continue
            word = words[i]
            literal = children.get(word)
            if literal is not None:
                stack.append((literal, i + 1))
            star = children.get(_STAR)
            if star is not None:
                stack.append((star, i + 1))
        return result


# ---------------------------------------------------------------------------
# headers
# ---------------------------------------------------------------------------

_X_MATCH = "x-match"
_X_MATCH_MODES = frozenset({"all", "any", "all-with-x", "any-with-x"})


def _parse_x_match(value: Any) -> str:
    """Mode used for routing; anything invalid routes as ``all``.

    RabbitMQ's ``parse_x_match`` falls back to ``all`` for unknown values ("legacy; we
    didn't validate"); new bindings are rejected up front by ``validate_headers_binding``.
    """
    if isinstance(value, str) and value in _X_MATCH_MODES:
        return value
    return "all"


def _amqp_type_name(value: Any) -> str:
    """Best-effort AMQP 0-9-1 field type name, for RabbitMQ-shaped error text."""
    if value is None:
        return "void"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "binary"
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _erlang_binary_repr(value: str) -> str:
    """Render a string the way Erlang's ``~tp`` prints a binary, e.g. ``<<"foo">>``."""
    if value == "":
        return "<<>>"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    if value.isascii():
        return f'<<"{escaped}">>'
    return f'<<"{escaped}"/utf8>>'


def validate_headers_binding(arguments: Mapping[str, Any] | None) -> None:
    """Reject a headers-exchange binding whose ``x-match`` is not a known mode.

    Raises ``ValueError`` with RabbitMQ's wording (the caller maps it to AMQP 406
    PRECONDITION_FAILED).  A missing ``x-match`` is allowed and means ``all``.  Like
    RabbitMQ, a non-string value (including bytes, i.e. AMQP ``binary``, and None, i.e.
    ``void``) is a type error rather than being coerced.
    """
    if not arguments or _X_MATCH not in arguments:
        return
    value = arguments[_X_MATCH]
    if isinstance(value, str):
        if value in _X_MATCH_MODES:
            return
        raise ValueError(
            f"Invalid x-match field value {_erlang_binary_repr(value)}; "
            "expected all, any, all-with-x, or any-with-x"
        )
    raise ValueError(
        f"Invalid x-match field type {_amqp_type_name(value)} (value {value!r}); expected longstr"
    )


def _as_bytes(value: Any) -> bytes | None:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None


def _values_equal(expected: Any, actual: Any, *, nested: bool = False) -> bool:
    """Header value equality, modelled on RabbitMQ's ``PV == DV``.

    RabbitMQ compares the decoded Erlang *values* of a top-level binding argument and
    message header with ``==`` and ignores their AMQP type tags.  Mapped to Python:

    * int and float compare numerically (Erlang ``1 == 1.0`` is true), top level only;
    * bool is never equal to a number: AMQP booleans decode to the atoms true/false,
      and ``true == 1`` is false in Erlang (unlike Python's ``True == 1``);
    * str and bytes compare by UTF-8 bytes, top level only (longstr and binary both
      decode to Erlang binaries);
    * Decimal equals only a Decimal with the same digits and exponent (RabbitMQ compares
      the ``{Scale, Unscaled}`` pair, so 1.0 and 1.00 differ);
    * inside arrays and tables RabbitMQ's values carry their type tags, so there the
      kinds must agree as well (``[1]`` does not equal ``[1.0]``, ``["a"]`` not
      ``[b"a"]``).  Tables compare as mappings regardless of key order, a deliberate
      simplification (RabbitMQ compares nested tables as ordered lists);
    * datetime (AMQP timestamp) equals only an equal datetime.  RabbitMQ would also let
      a timestamp equal an integer of the same seconds; we do not model that.
    """
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if isinstance(expected, Decimal) or isinstance(actual, Decimal):
        return (
            isinstance(expected, Decimal)
            and isinstance(actual, Decimal)
            and expected.as_tuple() == actual.as_tuple()
        )
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        if nested and type(expected) is not type(actual):
            return False
        return expected == actual
    expected_bytes = _as_bytes(expected)
    actual_bytes = _as_bytes(actual)
    if expected_bytes is not None or actual_bytes is not None:
        if nested and isinstance(expected, str) != isinstance(actual, str):
            return False
        return expected_bytes == actual_bytes
    if isinstance(expected, Mapping) or isinstance(actual, Mapping):
        if not (isinstance(expected, Mapping) and isinstance(actual, Mapping)):
            return False
        if expected.keys() != actual.keys():
            return False
        return all(_values_equal(expected[k], actual[k], nested=True) for k in expected)
    if isinstance(expected, (list, tuple)) or isinstance(actual, (list, tuple)):
        if not (isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple))):
            return False
        return len(expected) == len(actual) and all(
            _values_equal(e, a, nested=True) for e, a in zip(expected, actual, strict=True)
        )
    if isinstance(expected, datetime) or isinstance(actual, datetime):
        return (
            isinstance(expected, datetime) and isinstance(actual, datetime) and expected == actual
        )
    return type(expected) is type(actual) and bool(expected == actual)


def headers_match(
    binding_arguments: Mapping[str, Any] | None, headers: Mapping[str, Any] | None
) -> bool:
    """True when a headers-exchange binding matches a message's headers (RabbitMQ rules).

    * ``x-match`` selects the mode: ``all`` (default, also used for invalid values),
      ``any``, ``all-with-x`` or ``any-with-x``.  The ``x-match`` argument itself never
      takes part.
    * For ``all``/``any``, binding arguments whose key starts with ``x-`` are ignored; a
      message header is only ever consulted through a binding argument of the same key,
      so ``x-`` headers are then ignored too.  The ``-with-x`` modes include them.
    * A binding argument whose value is None (AMQP void) matches when the header is
      present, whatever its value.  Other values compare per ``_values_equal``.
    * ``all`` with no remaining arguments matches every message; ``any`` with none
      matches nothing (RabbitMQ starts ``all`` at true and ``any`` at false).
    * Missing (None) headers behave as an empty table.
    """
    args = binding_arguments or {}
    data = headers or {}
    mode = _parse_x_match(args.get(_X_MATCH))
    with_x = mode.endswith("-with-x")
    want_all = mode.startswith("all")
    for key, expected in args.items():
        if key == _X_MATCH:
            continue
        if not with_x and isinstance(key, str) and key.startswith("x-"):
            continue
        if key in data:
            ok = expected is None or _values_equal(expected, data[key])
        else:
            ok = False
        if want_all and not ok:
            return False
        if not want_all and ok:
            return True
    return want_all
