"""Fault cases 13-17: Redis frozen (SIGSTOP), a worker group's clock 90 s ahead (libfaketime),
a number Twilio answers 500 forever, a backlog across the start and end of quiet hours, and
Twilio's list lagging behind its creates."""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter

import redis

from bench.common import REDIS_URL, sliding_window_max
from bench.faults.harness import FAST_RECOVERY, Scenario, Verdict, finish

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
#: libfaketime 0.9.10 breaks Python 3.11's time.sleep (clock_nanosleep with TIMER_ABSTIME on
#: CLOCK_MONOTONIC: EINVAL when monotonic is not faked, a sleep 90 s too long when it is).
#: This shim, preloaded first, sends clock_nanosleep straight to the kernel; monotonic time
#: stays real (FAKETIME_DONT_FAKE_MONOTONIC=1), so the absolute deadline Python computed holds.
_SLEEP_SHIM = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int clock_nanosleep(clockid_t clock, int flags, const struct timespec *request, struct timespec *remain) {
    return syscall(SYS_clock_nanosleep, clock, flags, request, remain) == -1 ? errno : 0;
}
"""


def faketime_env(tmp: str, offset_s: int) -> dict[str, str]:
    """The environment of a process whose wall clock is ``offset_s`` ahead (libfaketime)."""
    if not os.path.exists(FAKETIME_LIB):
        raise RuntimeError(f"{FAKETIME_LIB} is missing: apt-get install -y faketime")
    source, shim = os.path.join(tmp, "sleep_shim.c"), os.path.join(tmp, "sleep_shim.so")
    with open(source, "w") as f:
        f.write(_SLEEP_SHIM)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", shim, source], check=True, capture_output=True, timeout=60)
    return dict(LD_PRELOAD=f"{shim}:{FAKETIME_LIB}", FAKETIME=f"{offset_s:+d}s", FAKETIME_DONT_FAKE_MONOTONIC="1")


def _fail(verdict: Verdict, note: str) -> None:
    verdict.expected_failures_ok = False
    verdict.notes.append(note)


def redis_frozen(fake, tmp, customers=1000):
    """13. Redis frozen (SIGSTOP) for longer than the heartbeat timeout, then SIGCONT."""
    fake.latency_s = 0.02
    s = Scenario(fake, tmp, customers=customers, SMS_RATE_LIMIT="60/second")
    pid = int(redis.Redis.from_url(REDIS_URL).info("server")["process_id"])
    freeze_s = 2 * int(s.env["DRAMATIQ_HEARTBEAT_TIMEOUT_MS"]) / 1000 + 2
    try:
        s.start_workers()
        s.start_workers()
        s.launch()
        s.wait_until(lambda: s.sent_count() >= len(s.eligible) // 3, 120)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(freeze_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        verdict = finish(s, f"13. Redis frozen {freeze_s:g} s (SIGSTOP)")
        verdict.notes.append(f"Redis (pid {pid}) stopped {freeze_s:g} s > DRAMATIQ_HEARTBEAT_TIMEOUT_MS "
                             f"{s.env['DRAMATIQ_HEARTBEAT_TIMEOUT_MS']}")
        return verdict
    finally:
        os.kill(pid, signal.SIGCONT)  # never leave the shared server stopped
        s.stop()


def one_group_clock_ahead(fake, tmp, customers=600, skew_s=90, count=10):
    """14. One worker group's clock 90 s ahead of the others (libfaketime)."""
    from models import Message, MessageStatus, database
    from peewee import fn

    ahead_env = faketime_env(tmp, skew_s)
    s = Scenario(fake, tmp, customers=customers, SMS_RATE_LIMIT="50/second")
    try:
        for mode in random.Random(14).choices(["drop", "500"], k=count):
            fake.accept_then_fail(1, mode)
        normal = s.start_workers(extra_args=("-v",))
        ahead = s.start_workers(extra_args=("-v",), **ahead_env)
        s.launch()
        spread = []

        def heartbeats_spread() -> bool:  # the broker's heartbeats are written on each worker's clock
            scores = [score for _, score in s.redis.zrange(f"{s.ns}:__heartbeats__", 0, -1, withscores=True)]
            if len(scores) >= 2:
                spread.append((max(scores) - min(scores)) / 1000)
            return False

        s.wait_until(heartbeats_spread, 5)
        verdict = finish(s, f"14. one worker group {skew_s} s ahead", 240)
        with database.connection_context():
            attempts = Message.select(fn.SUM(Message.attempts)).where(Message.campaign == s.campaign_id).scalar() or 0
            found = Message.select().where(Message.campaign == s.campaign_id, Message.status == MessageStatus.SENT,
                                           Message.reason == "found at Twilio after an unanswered request").count()
        offset = re.findall(r"this host's clock is (-?[\d.]+) s behind", ahead.tail(10**9))
        logs = [g.tail(10**9) for g in (normal, ahead)]
        received = [len(re.findall(r"Received message send_sms\(", log)) for log in logs]
        retries = [log.count("Retrying message") for log in logs]
        per_message = Counter(re.findall(r"Received message send_sms\(\d+\) with id '([^']+)'", "\n".join(logs)))
        timeout_s = int(s.env["DRAMATIQ_HEARTBEAT_TIMEOUT_MS"]) / 1000
        verdict.notes += [
            f"the skewed group measured its offset from the database's clock: {offset[0] if offset else 'not logged'} s",
            f"broker heartbeats spread {max(spread, default=0):.1f} s (heartbeat timeout {timeout_s:g} s"
            + ("; the skewed group's maintenance takes the others for dead)" if max(spread, default=0) > timeout_s else ")"),
            f"send_sms received {received[0]} + {received[1]} times (normal + skewed group) for {len(s.eligible)} "
            f"messages, at most {max(per_message.values(), default=0)} times one message; Dramatiq retries "
            f"{retries[0]} + {retries[1]}; attempts {attempts}; {found} of {count} maybe-sent found at Twilio",
            f"events: campaign_restarted {s.events('campaign_restarted')}, unknown_outcome {s.events('unknown_outcome')}, "
            f"retries_exhausted {s.events('retries_exhausted')}",
        ]
        if not received[1] or not ahead.alive():
            _fail(verdict, "the skewed group did not take part (it exited, or received nothing)")
        return verdict
    finally:
        s.stop()


def number_answers_500_forever(fake, tmp, customers=300, max_retries=6):
    """15. One number Twilio answers 500 forever without creating a message: settles unknown_outcome."""
    from models import Message, database

    s = Scenario(fake, tmp, customers=customers, SMS_MAX_RETRIES=str(max_retries))
    victim = sorted(s.eligible)[len(s.eligible) // 2]
    fake.fail_number(victim, 20500, http_status=500)
    s.expected_failures = {victim: "unknown_outcome"}
    reconcile_s = float(s.env["RECONCILE_AFTER_S"])
    bound_s = max_retries * (reconcile_s + 1 + 1) + 5  # a cycle is RECONCILE_AFTER_S + 1 s, plus 1 s of queueing each
    settled = []

    def victim_settled() -> bool:
        with database.connection_context():
            row = Message.get_or_none(Message.campaign == s.campaign_id, Message.to_phone == victim)
        if row is not None and row.status == "failed" and not settled:
            settled.append(time.time())
        return s.finished()

    try:
        s.start_workers()
        s.launch()
        finished = s.wait_until(victim_settled, bound_s + 120)
        verdict = finish(s, f"15. a number answering 500 forever (SMS_MAX_RETRIES={max_retries})", 10)
        asked = [r["at"] for r in fake.requests if r["to"] == victim]
        took = settled[0] - asked[0] if settled and asked else float("nan")
        verdict.notes.append(f"settled after {took:.1f} s (bound SMS_MAX_RETRIES x (RECONCILE_AFTER_S + 2 s) + 5 s = "
                             f"{bound_s:g} s), {len(asked)} requests to it (budget {max_retries}); "
                             f"unknown_outcome events {s.events('unknown_outcome')}")
        if not finished:
            _fail(verdict, "the campaign did not complete")
        if not settled or took > bound_s:
            _fail(verdict, f"the row did not settle within {bound_s:g} s")
        if len(asked) > max_retries:
            _fail(verdict, f"{len(asked)} requests for a budget of {max_retries}")
        return verdict
    finally:
        s.stop()


def quiet_hours_cross_a_backlog(fake, tmp, customers=300, rate=5, start_after_s=15, length_s=30,
                                sweep_stale_after_s="45"):
    """16. A backlog crossing the start and the end of quiet hours (recipients in UTC)."""
    from models import Customer, Message, MessageStatus, database, utcnow

    # The dispatcher looks again every 30 s while everything waits for quiet hours
    # (actors.campaigns.QUIET_RECHECK_MS), so a sweeper stale cut-off under that (FAST_RECOVERY:
    # 6 s) would restart the waiting campaign; production has 60 s.
    s = Scenario(fake, tmp, customers=customers, SMS_RATE_LIMIT=f"{rate}/second", SWEEP_STALE_AFTER_S=sweep_stale_after_s)
    with database.connection_context():
        Customer.update(time_zone="UTC").execute()
        now_db, now_host = utcnow(), time.time()
    start = (now_db + dt.timedelta(seconds=start_after_s + 1)).replace(microsecond=0)
    end = start + dt.timedelta(seconds=length_s)
    start_at = now_host + (start - now_db).total_seconds()  # on the fake's clock (this host's)
    end_at = start_at + length_s
    window = f"{start:%H:%M:%S}-{end:%H:%M:%S}"
    inflight_max = s.processes * s.threads
    try:
        s.start_workers(QUIET_HOURS=window, DEFAULT_TIME_ZONE="UTC")
        s.launch()
        s.wait_until(lambda: time.time() >= start_at, start_after_s + 5)
        with database.connection_context():
            backlog = Message.select().where(Message.campaign == s.campaign_id,
                                             Message.status.in_([MessageStatus.PENDING, MessageStatus.SENDING])).count()
        verdict = finish(s, f"16. quiet hours {length_s} s across a backlog", 240)
        times = sorted(m["accepted_at"] for m in fake.messages)
        grace_s, slack_s = 0.5, 0.2
        early = [t for t in times if start_at <= t < start_at + grace_s]
        inside = [t for t in times if start_at + grace_s <= t < end_at - slack_s]
        after = [t for t in times if t >= end_at - slack_s]
        busiest = sliding_window_max(after, 1.0)
        restarts = s.events("campaign_restarted")
        verdict.notes.append(
            f"window {window} UTC: {len([t for t in times if t < start_at])} sent before, backlog {backlog} at its start, "
            f"{len(early)} in flight at its start (bound {inflight_max}), {len(inside)} inside it, {len(after)} after; "
            f"most in any 1 s after it: {busiest} (limit {rate}); first after it +{(after[0] - end_at) if after else 0:.2f} s; "
            f"campaign_restarted {restarts}")
        if backlog == 0 or not after:
            _fail(verdict, "no backlog crossed the window: the case proves nothing")
        if inside or len(early) > inflight_max:
            _fail(verdict, f"{len(inside) + len(early)} messages accepted inside quiet hours")
        if busiest > rate:
            _fail(verdict, f"the rate limit was exceeded after quiet hours: {busiest} in 1 s")
        if restarts:
            _fail(verdict, f"{restarts} campaign_restarted events")
        return verdict
    finally:
        s.stop()


def _lagging_run(fake, tmp, *, customers: int, count: int, lag_s: float, seed: int) -> tuple[Verdict, int]:
    """A campaign whose first ``count`` creates are accepted, then dropped or answered 500,
    while Twilio lists a message only ``lag_s`` after accepting it; returns the verdict and
    how many of the maybe-sent customers Twilio accepted twice."""
    s = Scenario(fake, tmp, customers=customers)
    try:
        fake.list_lag(lag_s)
        for mode in random.Random(seed).choices(["drop", "500"], k=count):
            fake.accept_then_fail(1, mode)
        s.start_workers()
        s.launch()
        verdict = finish(s, f"17. Twilio lists a message {lag_s:g} s after accepting it ({count} maybe sent)")
        accepted = Counter(m["to"] for m in fake.messages)
        maybe = {r["to"] for r in fake.requests if r["outcome"].startswith("accepted_then")}
        return verdict, sum(1 for to in maybe if accepted[to] > 1)
    finally:
        fake.list_lag(0)
        s.stop()


def listing_lags_behind_creates(fake, tmp, customers=300, count=20):
    """17. Twilio's list lags its creates: 0 doubles under RECONCILE_AFTER_S, the stated window above it."""
    reconcile_s = float(FAST_RECOVERY["RECONCILE_AFTER_S"])
    verdict, doubled = _lagging_run(fake, tmp, customers=customers, count=count, lag_s=reconcile_s / 2, seed=17)
    if doubled:
        _fail(verdict, f"{doubled} maybe-sent customers texted twice with a lag under RECONCILE_AFTER_S")
    # Above the bound the window is real: measured, on a small campaign of its own.
    fake.reset()
    over, doubled_over = _lagging_run(fake, tmp, customers=100, count=5, lag_s=reconcile_s * 3, seed=71)
    verdict.notes.append(f"lag {reconcile_s / 2:g} s < RECONCILE_AFTER_S {reconcile_s:g} s: {doubled} of {count} "
                         f"maybe-sent customers texted twice; lag {reconcile_s * 3:g} s > RECONCILE_AFTER_S: "
                         f"{doubled_over} of 5 texted twice (the window the README states), lost {over.lost}")
    if doubled_over != 5 or over.lost:
        _fail(verdict, "above RECONCILE_AFTER_S every maybe-sent customer should be texted twice (and none lost): "
                       "the case no longer measures the window")
    return verdict


CASES = [redis_frozen, one_group_clock_ahead, number_answers_500_forever, quiet_hours_cross_a_backlog,
         listing_lags_behind_creates]
