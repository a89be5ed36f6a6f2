"""Fault cases 8-12: list failures while reconciling, two campaigns at once, a scheduled
campaign, SIGTERM while Twilio is slow, kill -9 during a 20,000-customer fan-out."""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import signal
import time

from bench.faults.harness import Scenario, Verdict, finish

FOUND = "found at Twilio after an unanswered request"


def _maybe_sent(fake, count: int, seed: int) -> None:
    """The next ``count`` creates are accepted, then dropped or answered 500."""
    for mode in random.Random(seed).choices(["drop", "500"], k=count):
        fake.accept_then_fail(1, mode)


def _fail(verdict: Verdict, note: str) -> None:
    verdict.expected_failures_ok = False
    verdict.notes.append(note)


def _rows_by_phone(campaign_id: int) -> dict:
    from models import Message, database

    with database.connection_context():
        return {r.to_phone: r for r in Message.select().where(Message.campaign == campaign_id) if r.to_phone}


def _check_reconciled(verdict: Verdict, fake, rows: dict) -> int:
    """Every maybe-sent message is recorded with its own SID, as found at Twilio."""
    maybe = [r for r in fake.requests if r["outcome"].startswith("accepted_then")]
    missed = [r for r in maybe if rows.get(r["to"]) is None or rows[r["to"]].twilio_sid != r["sid"]
              or rows[r["to"]].reason != FOUND]
    if missed:
        _fail(verdict, f"{len(missed)} of {len(maybe)} maybe-sent messages were not found at Twilio: "
                       + ", ".join(f"{rows[r['to']].status}/{rows[r['to']].reason}" for r in missed[:5] if r["to"] in rows))
    return len(maybe)


def lists_fail_while_reconciling(fake, tmp, customers=500, count=20):
    """8. Twilio's message list answers 500, 429 and slow while maybe-sent messages are reconciled."""
    s = Scenario(fake, tmp, customers=customers)
    timeout_s = float(s.env["TWILIO_TIMEOUT_S"])
    faults = [("500", 0.0), ("429", 0.0), ("slow", timeout_s + 1.5)] * 5
    try:
        _maybe_sent(fake, count, seed=8)
        for mode, seconds in faults:
            fake.fail_lists(1, mode, seconds)
        s.start_workers()
        s.launch()
        verdict = finish(s, f"8. list 500/429/slow while reconciling ({count})")
        maybe = _check_reconciled(verdict, fake, _rows_by_phone(s.campaign_id))
        left = len(getattr(fake, "_list_faults", ()))
        verdict.notes.append(f"{maybe} maybe-sent messages; {len(faults) - left} of {len(faults)} list failures "
                             f"served (5 x 500, 5 x 429, 5 x slow {timeout_s + 1.5:.1f} s > TWILIO_TIMEOUT_S {timeout_s:g})")
        if left:
            _fail(verdict, f"{left} list failures were never served: fewer lookups than expected")
        return verdict
    finally:
        s.stop()


def two_campaigns_at_once(fake, tmp, customers=500, count=20):
    """9. Two campaigns with the same template over the same customers at once, maybe-sent faults."""
    s = Scenario(fake, tmp, customers=customers)
    second = s.add_campaign(name="Second campaign")
    try:
        _maybe_sent(fake, count, seed=9)
        s.start_workers()
        s.start_workers()
        s.launch()
        s.launch(second)
        finished = s.wait_finished(240)
        parts = [s.verify(f"9. campaign {c}", c) for c in s.campaign_ids]
        verdict = Verdict(
            f"9. two campaigns, same template ({count} maybe-sent)", sum(v.eligible for v in parts),
            sum(v.lost for v in parts), sum(v.duplicated for v in parts), sum(v.ineligible_sent for v in parts),
            sum(v.sid_mismatch for v in parts), all(v.analytics_match for v in parts),
            all(v.expected_failures_ok for v in parts), max(v.seconds for v in parts),
        )
        for v in parts:
            verdict.notes.append(f"{v.case}: lost {v.lost}, duplicated {v.duplicated}, SID mismatches {v.sid_mismatch}, "
                                 f"analytics = DB {v.analytics_match}")
        stray = s.unattributed()
        if stray:
            _fail(verdict, f"{len(stray)} messages at the fake carry a body no row has (sent twice with another link?)")
        maybe = [r for r in fake.requests if r["outcome"].startswith("accepted_then")]
        own = {c: {r.twilio_sid for r in _rows_by_phone(c).values()} for c in s.campaign_ids}
        unmatched = [r for r in maybe if not any(r["sid"] in sids for sids in own.values())]
        verdict.notes.append(f"{len(maybe)} maybe-sent messages, on the rows of campaigns: "
                             + ", ".join(f"{c}: {sum(1 for r in maybe if r['sid'] in sids)}" for c, sids in own.items()))
        if unmatched:
            _fail(verdict, f"{len(unmatched)} of {len(maybe)} maybe-sent messages are on no row")
        if not finished:
            _fail(verdict, "the campaigns did not finish in time")
        if not verdict.ok:
            verdict.notes.append(s.logs()[-3000:])
        return verdict
    finally:
        s.stop()


def scheduled_campaign(fake, tmp, customers=300, lead_s=5.0):
    """10. A campaign scheduled 5 s ahead (as actors.start(id, at_utc=...)): one fan-out, no restart."""
    import campaigns
    from models import Campaign, database

    s = Scenario(fake, tmp, customers=customers)
    try:
        s.start_workers(extra_args=("-v",))  # debug log: every message received, with its arguments
        with database.connection_context():
            at = campaigns.utcnow() + dt.timedelta(seconds=lead_s)
            if not campaigns.schedule_campaign(s.campaign_id, at):
                raise RuntimeError("the campaign could not be scheduled")
            delay_ms = int((at - campaigns.utcnow()).total_seconds() * 1000)
        s.launch(delay_ms=delay_ms)  # what actors.control.start does besides the schedule
        verdict = finish(s, "10. scheduled campaign (5 s ahead)", 180)
        log = s.log_text()
        received = len(re.findall(r"Received message send_campaign\(%d\)" % s.campaign_id, log))
        tokens = set(re.findall(r"Received message dispatch_campaign\(%d, '([0-9a-f]+)'\)" % s.campaign_id, log))
        restarts = s.events("campaign_restarted")
        fan_outs = len(tokens) - restarts  # each fan-out starts a chain with a token; so does each restart
        with database.connection_context():
            campaign = Campaign.get_by_id(s.campaign_id)
        late = (campaign.started_at - at).total_seconds() if campaign.started_at else float("nan")
        verdict.notes.append(f"send_campaign messages processed: {received}; dispatcher chains (tokens): {len(tokens)}; "
                             f"fan-outs: {fan_outs}; campaign_restarted events: {restarts}; "
                             f"started {late:+.2f} s after send_at")
        if fan_outs != 1 or restarts:
            _fail(verdict, f"expected 1 fan-out and 0 restarts, got {fan_outs} and {restarts}")
        return verdict
    finally:
        s.stop()


def sigterm_while_twilio_is_slow(fake, tmp, customers=200, latency_s=3.0, everyone=False):
    """11. SIGTERM of the workers while Twilio answers in 3 s, then a new worker group."""
    from models import Message, MessageStatus, database

    fake.latency_s = latency_s
    timeout_s = latency_s + 2
    s = Scenario(fake, tmp, customers=customers, processes=2, TWILIO_TIMEOUT_S=str(timeout_s),
                 RECONCILE_AFTER_S=str(2 * timeout_s), REQUEUE_AFTER_S=str(4 * timeout_s))
    try:
        group = s.start_workers()
        s.launch()
        s.wait_until(lambda: s.sent_count() >= len(s.eligible) // 3, 120)
        at_signal = s.sent_count()
        began = time.monotonic()
        # The dramatiq parent passes SIGTERM on to its worker processes (one signal each:
        # the orderly shutdown); everyone=True signals every process as Heroku does.
        (os.killpg if everyone else os.kill)(group.proc.pid, signal.SIGTERM)
        try:
            code = group.proc.wait(60)
        except Exception:
            code = None
        took = time.monotonic() - began
        with database.connection_context():
            left_sending = Message.select().where(Message.campaign == s.campaign_id,
                                                  Message.status == MessageStatus.SENDING).count()
        tail = group.tail(10**9)
        s.start_workers()
        verdict = finish(s, f"11. SIGTERM while Twilio answers in {latency_s:g} s", 240)
        verdict.notes.append(f"SIGTERM ({'every process' if everyone else 'the dramatiq parent'}) at {at_signal} sent: "
                             f"exit code {code} after {took:.1f} s; rows left sending {left_sending}; "
                             f"'Killing worker process' in log: {'Killing worker process' in tail}")
        if code is None:
            group.stop()
            _fail(verdict, "the workers did not exit within 60 s of SIGTERM")
        elif code != 0 or "Killing worker process" in tail or took > latency_s + 15:
            _fail(verdict, "the shutdown was not orderly")
        if left_sending and not everyone:
            _fail(verdict, f"an orderly shutdown left {left_sending} rows sending")
        return verdict
    finally:
        s.stop()


def kill9_during_fan_out(fake, tmp, customers=20_000):
    """12. kill -9 of the workers during the fan-out of 20,000 customers, then a restart."""
    import psycopg2

    from bench.common import POSTGRES_URL

    s = Scenario(fake, tmp, customers=customers, processes=2, SMS_RATE_LIMIT="1000/second")
    conn = psycopg2.connect(POSTGRES_URL)
    conn.autocommit = True

    def rows() -> tuple[int, bool]:
        with conn.cursor() as cur:
            cur.execute("SELECT (SELECT count(*) FROM message WHERE campaign_id = %s), "
                        "(SELECT fanout_done_at IS NOT NULL FROM campaign WHERE id = %s)", (s.campaign_id, s.campaign_id))
            return cur.fetchone()

    try:
        group = s.start_workers()
        s.launch()
        deadline, seen = time.monotonic() + 120, (0, False)
        while time.monotonic() < deadline:
            seen = rows()
            if seen[0] >= 500 or seen[1]:
                break
            time.sleep(0.01)
        s.kill9(group)
        after_kill = rows()
        s.start_workers()
        verdict = finish(s, f"12. kill -9 during the fan-out of {customers:,}", 600)
        verdict.notes.append(f"kill -9 when {seen[0]:,} rows existed ({after_kill[0]:,} committed, fan-out done: "
                             f"{after_kill[1]}); campaign_restarted events: {s.events('campaign_restarted')}")
        if after_kill[1] or not 0 < after_kill[0] < customers:
            _fail(verdict, "the kill did not land inside the fan-out (the case missed its moment)")
        return verdict
    finally:
        conn.close()
        s.stop()


CASES = [lists_fail_while_reconciling, two_campaigns_at_once, scheduled_campaign, sigterm_while_twilio_is_slow,
         kill9_during_fan_out]
