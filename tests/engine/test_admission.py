"""Admission control: bounded pairs and tokens, refused at once, never negative, thread-safe."""

from __future__ import annotations

import threading

import pytest

from edgerank.engine.admission import Admission
from edgerank.errors import Overloaded, TooLarge


def test_admit_and_release_track_both_budgets():
    adm = Admission(max_pairs=10, max_tokens=100)
    a = adm.admit(4, 40)
    b = adm.admit(6, 60)
    assert (adm.pairs, adm.tokens) == (10, 100)
    a.release()
    a.release()  # twice is harmless
    assert (adm.pairs, adm.tokens) == (6, 60)
    with b:
        pass
    assert (adm.pairs, adm.tokens) == (0, 0)


@pytest.mark.parametrize("pairs, tokens", [(3, 0), (1, 30)])
def test_beyond_either_budget_is_refused_at_once(pairs, tokens):
    adm = Admission(max_pairs=10, max_tokens=100)
    adm.admit(8, 80)
    with pytest.raises(Overloaded) as err:
        adm.admit(pairs, tokens)
    assert "overloaded" in str(err.value)
    assert adm.refused == 1
    assert (adm.pairs, adm.tokens) == (8, 80)  # the refused request left nothing behind


def test_a_request_larger_than_the_whole_queue_is_too_large_not_overloaded():
    adm = Admission(max_pairs=10, max_tokens=100)
    with pytest.raises(TooLarge, match="max_queue_tokens"):
        adm.admit(5, 101)
    with pytest.raises(TooLarge):
        adm.admit(11, 0)
    assert adm.refused == 0


def test_resize_grows_within_budget_and_keeps_the_old_reservation_on_refusal():
    adm = Admission(max_pairs=10, max_tokens=100)
    other = adm.admit(2, 50)
    ticket = adm.admit(4)  # pairs first, before tokenization
    ticket.resize(5, 40)
    assert (adm.pairs, adm.tokens) == (7, 90)
    with pytest.raises(Overloaded):
        ticket.resize(5, 60)
    assert (ticket.pairs, ticket.tokens) == (5, 40)
    other.release()
    ticket.resize(5, 60)
    assert (adm.pairs, adm.tokens) == (5, 60)


def test_retry_after_follows_the_drain_rate():
    adm = Admission(max_pairs=100, max_tokens=1000, drain_rate=lambda: 500.0)
    adm.admit(1, 1000)
    with pytest.raises(Overloaded) as err:
        adm.admit(1, 1)
    assert err.value.retry_after_s == pytest.approx(2.0)


def test_concurrent_callers_never_exceed_the_budget():
    adm = Admission(max_pairs=50, max_tokens=500)
    peak = {"pairs": 0, "tokens": 0}
    counts = {"ok": 0, "refused": 0}
    lock = threading.Lock()

    def caller(seed: int) -> None:
        for i in range(300):
            pairs, tokens = 1 + (seed + i) % 7, 10 * (1 + (seed * i) % 9)
            try:
                ticket = adm.admit(pairs, tokens)
            except Overloaded:
                with lock:
                    counts["refused"] += 1
                continue
            with lock:
                counts["ok"] += 1
                peak["pairs"] = max(peak["pairs"], adm.pairs)
                peak["tokens"] = max(peak["tokens"], adm.tokens)
            ticket.release()

    threads = [threading.Thread(target=caller, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (adm.pairs, adm.tokens) == (0, 0)
    assert peak["pairs"] <= 50 and peak["tokens"] <= 500
    assert counts["ok"] + counts["refused"] == 8 * 300
    assert adm.refused == counts["refused"]


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        Admission(0, 10)
