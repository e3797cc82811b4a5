"""Admission without a server: the connection ceiling, the handshake bucket and the Retry-After spread."""

from __future__ import annotations

import resource

import pytest

from gateway.admission import FD_RESERVE, MAX_RETRY_AFTER_S, Admission, Refusal, Refused, connection_ceiling


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_full_gateway_refuses_with_503_and_a_retry_after() -> None:
    admission = Admission(max_connections=3, accept_rate_per_s=100, clock=Clock(), draw=lambda: 0.99)
    admission.admit(open_connections=2)
    with pytest.raises(Refused) as refused:
        admission.admit(open_connections=3)
    assert refused.value.reason == Refusal.FULL
    assert refused.value.status == 503 and refused.value.code == "unavailable"
    assert refused.value.headers() == {"Retry-After": "5"}
    assert admission.refused[Refusal.FULL] == 1 and admission.admitted == 1


def test_a_draining_gateway_refuses_every_handshake() -> None:
    admission = Admission(clock=Clock())
    with pytest.raises(Refused) as refused:
        admission.admit(open_connections=0, draining=True)
    assert refused.value.reason == Refusal.DRAINING
    assert refused.value.body()["error"]["code"] == "unavailable"
    assert int(refused.value.headers()["Retry-After"]) >= 1


def test_the_bucket_admits_its_burst_then_its_rate() -> None:
    clock = Clock()
    admission = Admission(accept_rate_per_s=10, clock=clock, draw=lambda: 0.0)
    for _ in range(10):
        admission.admit(open_connections=0)
    with pytest.raises(Refused) as refused:
        admission.admit(open_connections=0)
    assert refused.value.reason == Refusal.RATE
    clock.t += 0.25  # two and a half tokens come back
    admission.admit(open_connections=0)
    admission.admit(open_connections=0)
    with pytest.raises(Refused):
        admission.admit(open_connections=0)
    assert admission.admitted == 12 and admission.refused[Refusal.RATE] == 2


def test_retry_after_spreads_a_storm_over_the_time_the_bucket_needs() -> None:
    """500 refusals in a second at 100/s: clients are told 1 to 5 s, spread, never more than the cap."""
    clock = Clock()
    draws = iter(i / 500 for i in range(10_000))
    admission = Admission(accept_rate_per_s=100, burst=1, clock=clock, draw=lambda: next(draws))
    admission.admit(open_connections=0)
    answers = []
    for _ in range(500):
        with pytest.raises(Refused) as refused:
            admission.admit(open_connections=0)
        answers.append(refused.value.retry_after_s)
    assert min(answers) == 1
    assert max(answers) == 5
    assert len(set(answers)) == 5
    assert all(1 <= value <= MAX_RETRY_AFTER_S for value in answers)


def test_a_quiet_second_after_a_storm_answers_one_second_again() -> None:
    clock = Clock()
    admission = Admission(accept_rate_per_s=10, burst=1, clock=clock, draw=lambda: 0.99)
    admission.admit(open_connections=0)
    for _ in range(100):
        with pytest.raises(Refused):
            admission.admit(open_connections=0)
    clock.t += 5.0
    admission.admit(open_connections=0)
    with pytest.raises(Refused) as refused:
        admission.admit(open_connections=0)
    assert refused.value.retry_after_s == 1


def test_the_ceiling_never_passes_the_open_files_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_ceiling(10) == 10
    if soft != resource.RLIM_INFINITY:
        assert connection_ceiling(10**9) == soft - FD_RESERVE


def test_a_drain_paces_its_closes_to_what_the_other_gateways_can_take() -> None:
    from gateway.server import MIN_DRAIN_SPREAD_S, drain_spread_s

    assert drain_spread_s(10, rate_per_s=500, max_s=20) == MIN_DRAIN_SPREAD_S  # a few clients: the floor
    assert drain_spread_s(2_500, rate_per_s=250, max_s=20) == 10.0  # 250 closes a second
    assert drain_spread_s(19_900, rate_per_s=500, max_s=20) == 20.0  # never past WS_DRAIN_MAX_S
    assert drain_spread_s(5_000, rate_per_s=500, max_s=0) == 0.0  # 0: close everyone at once
