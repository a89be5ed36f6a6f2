"""The fast fault cases of the fault-injection suite (bench/faults), in CI: real worker
processes, the Redis broker, PostgreSQL and the fake Twilio. The slower cases (killed
workers, Redis and PostgreSQL restarts, a skewed clock, quiet hours) run with
``python -m bench.faults``."""

from __future__ import annotations

import pytest

from bench.faults import cases, cases_more, cases_time


@pytest.mark.parametrize(
    "case",
    [cases.error_storm_429_500, cases.accepted_then_lost_answers, cases.permanent_errors_for_some_numbers],
    ids=["429-and-500-storm", "accepted-then-lost", "permanent-errors"],
)
def test_fault_case_loses_and_duplicates_nothing(case, fake_twilio, tmp_path):
    verdict = case(fake_twilio, str(tmp_path), customers=300)
    assert (verdict.lost, verdict.duplicated, verdict.ineligible_sent, verdict.sid_mismatch) == (0, 0, 0, 0), verdict.notes
    assert verdict.analytics_match and verdict.expected_failures_ok, verdict.notes
    assert verdict.eligible == 270


def test_worst_moment_crash_is_reconciled_not_resent(fake_twilio, tmp_path):
    verdict = cases.kill_after_accept_before_commit(fake_twilio, str(tmp_path), customers=100)
    assert verdict.ok, verdict.notes


@pytest.mark.parametrize(
    "case",
    [cases_more.lists_fail_while_reconciling, cases_more.two_campaigns_at_once, cases_more.scheduled_campaign,
     cases_time.number_answers_500_forever, cases_time.listing_lags_behind_creates],
    ids=["lists-fail-while-reconciling", "two-campaigns-same-template", "scheduled-once", "500-forever-settles",
         "listing-lag"],
)
def test_exactly_once_fault_case(case, fake_twilio, tmp_path):
    # The cases of the "exactly once" issue that need no service restart: each checks the
    # ledger and its own expectations (found not resent, own SIDs, one fan-out, settled)
    verdict = case(fake_twilio, str(tmp_path), customers=200)
    assert verdict.ok, verdict.notes
