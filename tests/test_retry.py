"""``campaign retry``: once more, exactly once, to the customers whose send failed for a
transient reason; never to permanent failures, opt-outs or those already sent (issue 15).
Through the real twilio client against the fake Twilio, on both databases."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

import actors
import analytics
import consent
import resend
from actors.campaign_ops import retry
from campaigns import Refused
from models import Campaign, CampaignStatus, Event, Message, MessageStatus, connection, utcnow
from tests.conftest import join_all
from tests.factories import make_campaign, make_customers, phone_for

#: Of six customers: 0 and 1 are sent; 2, 3 and 4 meet 429s until their retries run out
#: (4 then replies STOP); 5's number is invalid at Twilio (21211, permanent).
RATE_LIMITED = (2, 3, 4)


def run_with_failures(fake_twilio, stub_broker) -> int:
    """A completed campaign of six customers with every kind of failure (see above)."""
    make_customers(6)
    for index in RATE_LIMITED:
        fake_twilio.fail_number(phone_for(index), 20429)
    fake_twilio.fail_number(phone_for(5), 21211)
    campaign_id = make_campaign()
    actors.send_sms.options.update(max_retries=1, min_backoff=10, max_backoff=50)
    try:
        actors.send_campaign.send(campaign_id)
        join_all(stub_broker, fail_fast=False)
    finally:
        actors.send_sms.options.update(max_retries=10, min_backoff=5_000, max_backoff=15 * 60_000)
    stub_broker.dead_letters_by_queue.clear()  # the exhausted sends, which later joins would raise
    analytics.recompute_analytics(campaign_id)
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.COMPLETED
    return campaign_id


def outcomes(campaign_id: int) -> dict[str, tuple[str, str | None]]:
    return {m.to_phone: (m.status, m.error_code) for m in Message.select().where(Message.campaign == campaign_id)}


def heal(fake_twilio) -> None:
    """Twilio takes every number again, but 21211 stays invalid; its record starts empty."""
    fake_twilio.reset()
    fake_twilio.fail_number(phone_for(5), 21211)


def test_a_retry_after_retries_ran_out_resends_exactly_the_transient_ones_once(db, stub_broker, stub_worker, twilio_backend,
                                                                               fake_twilio):
    # Given a completed campaign: 2 sent, 3 whose retries ran out, 1 invalid number; and
    # one of the 3 has since replied STOP
    campaign_id = run_with_failures(fake_twilio, stub_broker)
    assert outcomes(campaign_id) == {
        phone_for(0): ("sent", None), phone_for(1): ("sent", None), phone_for(2): ("failed", "retries_exhausted"),
        phone_for(3): ("failed", "retries_exhausted"), phone_for(4): ("failed", "retries_exhausted"),
        phone_for(5): ("failed", "21211"),
    }
    consent.opt_out(phone_for(4), source=consent.Source.INBOUND, keyword="STOP")
    heal(fake_twilio)

    # When the operator retries it
    result = retry(campaign_id)
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.SENDING
    join_all(stub_broker)

    # Then exactly the two transient failures still subscribed were asked of Twilio, once each
    assert sorted(r["to"] for r in fake_twilio.requests) == [phone_for(2), phone_for(3)]
    assert len(result.pending) == 2 and result.reconciling == []
    rows = outcomes(campaign_id)
    assert rows[phone_for(2)] == rows[phone_for(3)] == ("sent", None)
    assert rows[phone_for(4)] == ("failed", "retries_exhausted") and rows[phone_for(5)] == ("failed", "21211")
    # And the campaign completed again with analytics equal to its rows
    data = analytics.analytics_dict(campaign_id)
    assert (data["status"], data["sent"], data["failed"], data["failed_by_reason"]) == (
        "completed", 4, 2, {"21211": 1, "retries_exhausted": 1})

    # When it is retried again, nothing is sent twice
    again = retry(campaign_id)
    join_all(stub_broker)
    assert again.token is None and again.total == 0
    assert len(fake_twilio.requests) == 2
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.COMPLETED
    assert Event.select().where(Event.code == "campaign_retried").count() == 1


def test_two_retries_at_once_move_each_row_once(db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a completed campaign with three customers whose retries ran out
    campaign_id = run_with_failures(fake_twilio, stub_broker)
    heal(fake_twilio)
    results, errors = [], []
    start = threading.Barrier(2)

    def operator():
        try:
            with connection():
                start.wait()
                results.append(retry(campaign_id))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    # When two operators retry it at the same moment
    threads = [threading.Thread(target=operator) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    join_all(stub_broker)

    # Then one of them took the rows back and started the campaign, the other found nothing
    assert errors == []
    assert sorted(len(r.pending) for r in results) == [0, 3]
    assert sorted(r.token is not None for r in results) == [False, True]
    # And each customer got exactly one message
    assert sorted(r["to"] for r in fake_twilio.requests) == [phone_for(i) for i in RATE_LIMITED]
    assert analytics.analytics_dict(campaign_id)["sent"] == 5


def test_a_retry_while_a_row_is_still_sending_leaves_it_to_reconciliation(db, stub_broker, stub_worker, twilio_backend,
                                                                          fake_twilio):
    # Given a campaign still sending: one row failed (retries ran out), and one row whose
    # send Twilio accepted but whose answer was lost (left ``sending``, an hour ago)
    campaign_id = run_with_failures(fake_twilio, stub_broker)
    heal(fake_twilio)
    in_flight = Message.get(Message.campaign == campaign_id, Message.to_phone == phone_for(3))
    accepted = twilio_backend.send(to=in_flight.to_phone, body=in_flight.body)
    an_hour_ago = utcnow() - dt.timedelta(hours=1)
    Message.update(status=MessageStatus.SENDING, error_code="read_timeout", sending_at=an_hour_ago,
                   first_attempt_at=an_hour_ago, queued_at=an_hour_ago, attempts=1).where(Message.id == in_flight.id).execute()
    Campaign.update(status=CampaignStatus.SENDING, completed_at=None).where(Campaign.id == campaign_id).execute()

    # When the operator retries it
    result = retry(campaign_id)
    join_all(stub_broker)

    # Then the row in flight was not taken by the retry: it was found at Twilio, not resent
    assert in_flight.id not in result.pending + result.reconciling
    stored = Message.get_by_id(in_flight.id)
    assert (stored.status, stored.twilio_sid) == (MessageStatus.SENT, accepted.sid)
    assert fake_twilio.bodies_to(phone_for(3)) == [in_flight.body]
    # And the failed rows were sent once each (2; 4 too: it did not opt out here)
    assert sorted(r["to"] for r in fake_twilio.requests) == [phone_for(2), phone_for(3), phone_for(4)]
    assert analytics.analytics_dict(campaign_id)["status"] == "completed"


@pytest.mark.parametrize("at_twilio", [True, False], ids=["twilio-has-it", "twilio-has-none"])
def test_a_row_that_was_maybe_sent_is_looked_up_before_any_resend(db, stub_broker, stub_worker, twilio_backend, fake_twilio,
                                                                   at_twilio):
    # Given a completed campaign whose row for customer 2 settled failed ``unknown_outcome``
    # (no answer, and Twilio's list had nothing then): Twilio may have it after all
    campaign_id = run_with_failures(fake_twilio, stub_broker)
    heal(fake_twilio)
    row = Message.get(Message.campaign == campaign_id, Message.to_phone == phone_for(2))
    an_hour_ago = utcnow() - dt.timedelta(hours=1)
    Message.update(error_code="unknown_outcome", sending_at=an_hour_ago, first_attempt_at=an_hour_ago,
                   attempts=10).where(Message.id == row.id).execute()
    accepted = twilio_backend.send(to=row.to_phone, body=row.body) if at_twilio else None
    requests_before = len(fake_twilio.requests)

    # When the operator retries it
    result = retry(campaign_id)
    assert Message.get_by_id(row.id).status in (MessageStatus.SENDING, MessageStatus.SENT)  # never pending
    join_all(stub_broker)

    # Then it was looked up at Twilio first: recorded with the message Twilio has, or sent once
    assert result.reconciling == [row.id]
    stored = Message.get_by_id(row.id)
    assert stored.status == MessageStatus.SENT
    assert fake_twilio.bodies_to(phone_for(2)) == [row.body]
    if at_twilio:
        assert stored.twilio_sid == accepted.sid and stored.reason == "found at Twilio after an unanswered request"
    sent_now = [r["to"] for r in fake_twilio.requests[requests_before:]]
    assert sorted(sent_now) == ([phone_for(3), phone_for(4)] if at_twilio else [phone_for(2), phone_for(3), phone_for(4)])


def test_undelivered_rows_are_retried_only_for_curable_carrier_codes(db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a completed campaign of five sent messages, reported undelivered with 30003
    # (handset off), 30008 (unknown), 30006 (landline), 30007 (filtered), and one delivered
    make_customers(5)
    campaign_id = make_campaign()
    actors.send_campaign.send(campaign_id)
    join_all(stub_broker)
    reports = {0: ("undelivered", "30003"), 1: ("failed", "30008"), 2: ("undelivered", "30006"),
               3: ("undelivered", "30007"), 4: ("delivered", None)}
    ten_minutes_ago = utcnow() - dt.timedelta(minutes=10)
    for index, (status, code) in reports.items():
        Message.update(delivery_status=status, delivery_error_code=code, sent_at=ten_minutes_ago).where(
            Message.campaign == campaign_id, Message.to_phone == phone_for(index)).execute()
    fake_twilio.age(600)
    analytics.recompute_analytics(campaign_id)
    assert analytics.analytics_dict(campaign_id)["undelivered"] == 4
    old_sids = {m.to_phone: m.twilio_sid for m in Message.select()}

    # When the operator retries without --undelivered, nothing is taken back
    assert retry(campaign_id).token is None

    # When with --undelivered
    result = retry(campaign_id, undelivered=True)
    join_all(stub_broker)

    # Then exactly the curable two were sent again, once each, with new SIDs
    assert sorted(code for _id, _sid, code in result.undelivered) == ["30003", "30008"]
    assert sorted(m["to"] for m in fake_twilio.messages) == sorted([phone_for(i) for i in range(5)] + [phone_for(0), phone_for(1)])
    rows = {m.to_phone: m for m in Message.select()}
    for index in (0, 1):
        assert rows[phone_for(index)].status == MessageStatus.SENT and rows[phone_for(index)].delivery_status is None
        assert rows[phone_for(index)].twilio_sid != old_sids[phone_for(index)]
    assert rows[phone_for(2)].delivery_error_code == "30006" and rows[phone_for(2)].twilio_sid == old_sids[phone_for(2)]
    # And the analytics count the two as sent, no longer undelivered
    data = analytics.analytics_dict(campaign_id)
    assert (data["sent"], data["undelivered"], data["delivered"], data["status"]) == (5, 2, 1, "completed")

    # When it is retried with --undelivered again: the resent ones have no report yet, nothing moves
    assert retry(campaign_id, undelivered=True).token is None


def test_a_recent_undelivered_report_waits_so_the_lookup_cannot_take_the_old_message(db, stub_broker, stub_worker, twilio_backend):
    # Given a message sent a moment ago and reported undelivered (30003)
    make_customers(1)
    campaign_id = make_campaign()
    actors.send_campaign.send(campaign_id)
    join_all(stub_broker)
    Message.update(delivery_status="undelivered", delivery_error_code="30003").execute()

    # When it is retried at once, it is left for a retry after UNDELIVERED_MIN_AGE_S
    assert resend.retry_campaign(campaign_id, undelivered=True).total == 0
    later = utcnow() + dt.timedelta(seconds=resend.UNDELIVERED_MIN_AGE_S + 1)
    assert resend.retry_campaign(campaign_id, undelivered=True, now=later).total == 1


@pytest.mark.parametrize("status", [CampaignStatus.DRAFT, CampaignStatus.PAUSED, CampaignStatus.CANCELLED, CampaignStatus.FAILED])
def test_a_retry_is_refused_unless_the_campaign_completed_or_is_sending(db, status):
    # Given a campaign in a state with nothing a retry may do
    make_customers(1)
    campaign_id = make_campaign()
    Campaign.update(status=status).where(Campaign.id == campaign_id).execute()

    # When it is retried, it is refused saying what is true, and nothing changes
    with pytest.raises(Refused) as refused:
        resend.retry_campaign(campaign_id)
    assert refused.value.reason.startswith(f"campaign {campaign_id} ")
    assert Campaign.get_by_id(campaign_id).status == status
