"""The history checker itself (RELIABILITY.md section 4.0), on hand-made histories: a
checker that cannot fail proves nothing."""

from __future__ import annotations

import pytest

from .harness import History

pytestmark = pytest.mark.crash


def _history() -> History:
    history = History()
    history.published("a")
    history.published("b")
    history.attempt("c")  # in flight at a kill: outcome unknown
    return history


def test_clean_history_has_no_problems() -> None:
    history = _history()
    history.delivered("a", "x", redelivered=False, delivery_count=1, t_leased=1.0, ack="auto")
    history.delivered("b", "x", redelivered=False, delivery_count=1, t_leased=2.0, ack="auto")
    verdict = history.check()
    assert verdict.problems(allow_duplicates=False) == {}
    assert verdict.recovered == set()


def test_classifies_lost_unexpected_recovered_and_duplicated() -> None:
    history = _history()
    history.delivered("a", "x", redelivered=False, delivery_count=1, t_leased=1.0, ack="auto")
    history.delivered("a", "y", redelivered=False, delivery_count=1, t_leased=2.0, ack="auto")
    history.delivered("c", "x", redelivered=False, delivery_count=1, t_leased=3.0, ack="auto")
    history.delivered("z", "x", redelivered=False, delivery_count=1, t_leased=4.0, ack="auto")
    verdict = history.check()
    assert verdict.lost == {"b"}
    assert verdict.unexpected == {"z"}
    assert verdict.recovered == {"c"}
    assert verdict.duplicated == {"a": 2}
    assert len(verdict.bad_redelivery) == 1  # the second "a" is not flagged redelivered
    assert verdict.acked_twice == set()  # auto-acks are not lease acks


def test_delivery_settled_by_nobody_is_lost() -> None:
    history = _history()
    history.delivered("a", "x", redelivered=False, delivery_count=1, t_leased=1.0)  # died
    history.delivered("b", "x", redelivered=False, delivery_count=1, t_leased=1.0, ack="lost")
    assert history.check().lost == {"a", "b"}


def test_overlapping_valid_leases_are_a_double_lease() -> None:
    history = _history()
    first = history.delivered("a", "x", redelivered=False, delivery_count=1, t_leased=1.0)
    history.delivered("a", "y", redelivered=True, delivery_count=2, t_leased=2.0)
    first.ack, first.t_acked = "ok", 3.0  # x's ack succeeded after y got the message
    verdict = history.check()
    assert len(verdict.double_lease) == 1
    assert "double_lease" in verdict.problems(allow_duplicates=True)


def test_redelivery_after_lost_lease_is_allowed_and_two_successful_acks_are_not() -> None:
    history = _history()
    first = history.delivered("a", "x", redelivered=False, delivery_count=1, t_leased=1.0)
    second = history.delivered("a", "y", redelivered=True, delivery_count=2, t_leased=2.0)
    first.ack, first.t_acked = "lost", 3.0
    second.ack, second.t_acked = "ok", 4.0
    history.delivered("b", "x", redelivered=False, delivery_count=1, t_leased=1.0, ack="auto")
    assert history.check().problems(allow_duplicates=True) == {}
    first.ack = "ok"
    assert history.check().acked_twice == {"a"}
