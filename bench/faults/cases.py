"""The fault cases: 1-7 here, 8-12 in ``cases_more``, 13-16 in ``cases_time``. Each takes a
running fake Twilio and a temporary folder, runs a campaign through its fault, and returns
the harness's Verdict. ``ALL[n - 1]`` is case n."""

from __future__ import annotations

import random

from bench.faults import cases_more, cases_time
from bench.faults.harness import (
    Scenario, restart_postgres_immediately, restart_redis_losing_everything, start_postgres, start_redis,
)
from bench.faults.harness import finish as _finish


def kill_one_of_two_workers(fake, tmp, customers=1000):
    """1. kill -9 one of two worker groups mid-campaign, then start a replacement."""
    fake.latency_s = 0.02
    s = Scenario(fake, tmp, customers=customers, SMS_RATE_LIMIT="60/second")
    try:
        a = s.start_workers()
        s.start_workers()
        s.launch()
        s.wait_until(lambda: s.sent_count() >= len(s.eligible) // 3, 120)
        s.kill9(a)
        s.start_workers()
        return _finish(s, "1. kill -9 one of two workers")
    finally:
        s.stop()


def kill_after_accept_before_commit(fake, tmp, customers=300):
    """2. kill -9 while Twilio has accepted a message and its answer is still on the way."""
    s = Scenario(fake, tmp, customers=customers)
    victim = sorted(s.eligible)[len(s.eligible) // 2]
    fake.hang_after_accept(victim, 30.0)
    try:
        group = s.start_workers()
        s.launch()
        s.wait_until(lambda: fake.accepted(victim), 120)
        s.kill9(group)
        s.start_workers()
        verdict = _finish(s, "2. kill -9 after accept, before commit")
        from models import Message, database

        with database.connection_context():
            row = Message.get(Message.campaign == s.campaign_id, Message.to_phone == victim)
        if row.reason != "found at Twilio after an unanswered request":
            verdict.expected_failures_ok = False
            verdict.notes.append(f"the victim's row was not reconciled: {row.status} {row.reason}")
        return verdict
    finally:
        s.stop()


def _service_restart_mid_campaign(fake, tmp, customers, case, restart, restore):
    """A third of the way into a campaign, restart a service; always restore it."""
    fake.latency_s = 0.02
    s = Scenario(fake, tmp, customers=customers, SMS_RATE_LIMIT="60/second")
    try:
        s.start_workers()
        s.launch()
        s.wait_until(lambda: s.sent_count() >= len(s.eligible) // 3, 120)
        restart()
        return _finish(s, case)
    finally:
        restore()
        s.stop()


def redis_restart_losing_everything(fake, tmp, customers=1000):
    """3. Redis restarts with every key lost mid-campaign; the sweeper finishes the job."""
    return _service_restart_mid_campaign(
        fake, tmp, customers, "3. Redis restart, all data lost", restart_redis_losing_everything, start_redis)


def postgres_restart_immediate(fake, tmp, customers=1000):
    """4. PostgreSQL restarts (immediate mode: no clean shutdown) mid-campaign."""
    return _service_restart_mid_campaign(
        fake, tmp, customers, "4. PostgreSQL restart (immediate)", restart_postgres_immediately, start_postgres)


def error_storm_429_500(fake, tmp, customers=1000, storm_s=5.0):
    """5. Twilio answers 429 to 30% and 500 to 10% of requests for a while."""
    s = Scenario(fake, tmp, customers=customers)
    try:
        fake.set_error_rates(rate_429=0.3, rate_500=0.1)
        s.start_workers()
        s.launch()
        s.wait_until(lambda: False, storm_s)
        fake.set_error_rates()
        return _finish(s, "5. 429 for 30% and 500 for 10% of requests")
    finally:
        s.stop()


def accepted_then_lost_answers(fake, tmp, customers=1000, count=20):
    """6. Twilio accepts, then the connection drops or the answer is a 500 ('maybe sent')."""
    s = Scenario(fake, tmp, customers=customers)
    try:
        for mode in random.Random(7).choices(["drop", "500"], k=count):
            fake.accept_then_fail(1, mode)
        s.start_workers()
        s.launch()
        return _finish(s, f"6. accepted, then dropped or 500 ({count} messages)")
    finally:
        s.stop()


def permanent_errors_for_some_numbers(fake, tmp, customers=1000):
    """7. Specific numbers answer 21211, 21614 and 21610."""
    s = Scenario(fake, tmp, customers=customers)
    numbers = sorted(s.eligible)[:9]
    codes = {p: str(code) for p, code in zip(numbers, [21211, 21614, 21610] * 3)}
    for phone, code in codes.items():
        fake.fail_number(phone, int(code))
    s.expected_failures = codes
    try:
        s.start_workers()
        s.launch()
        verdict = _finish(s, "7. 21211 / 21614 / 21610 for 9 numbers")
        requests_per_number = [sum(1 for r in fake.requests if r["to"] == p) for p in numbers]
        if requests_per_number != [1] * len(numbers):
            verdict.expected_failures_ok = False
            verdict.notes.append(f"permanent errors were retried: {requests_per_number}")
        from models import Customer, database

        with database.connection_context():
            opted_out = [p for p, c in codes.items() if c == "21610"]
            still = Customer.select().where(Customer.phone.in_(opted_out), Customer.sms_subscribed == True).count()  # noqa: E712
        if still:
            verdict.expected_failures_ok = False
            verdict.notes.append(f"{still} customers who answered 21610 are still subscribed")
        return verdict
    finally:
        s.stop()


ALL = [
    kill_one_of_two_workers,
    kill_after_accept_before_commit,
    redis_restart_losing_everything,
    postgres_restart_immediate,
    error_storm_429_500,
    accepted_then_lost_answers,
    permanent_errors_for_some_numbers,
]
ALL += cases_more.CASES + cases_time.CASES
