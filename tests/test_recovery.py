"""Recovery without Redis's help: the sweeper, the error-storm pause, pause and resume."""

from __future__ import annotations

import datetime as dt

import dramatiq
from dramatiq import Worker

import actors
import analytics
import fanout
import campaigns
from models import Campaign, CampaignStatus, Event, Message, MessageStatus, utcnow
from tests.conftest import join_all
from tests.factories import make_campaign, make_customers, phone_for


def test_sweeper_finishes_a_campaign_after_the_broker_forgot_everything(db, stub_broker, twilio_backend, fake_twilio):
    # Given a campaign whose fan-out ran and whose dispatcher enqueued sends...
    make_customers(20)
    campaign_id = make_campaign()
    actors.send_campaign.fn(campaign_id)
    actors.dispatch_campaign.fn(campaign_id, Campaign.get_by_id(campaign_id).dispatch_token)
    assert Message.select().where(Message.queued_at.is_null(False)).count() == 20
    # ...when the broker loses every message (as a Redis restart without persistence does)
    stub_broker.flush_all()
    actors.services.reset_services()  # Redis would have lost the metrics debounce keys too
    actors.services.configure_services(backend=twilio_backend, requeue_after_s=0)
    Campaign.update(heartbeat_at=None).where(Campaign.id == campaign_id).execute()

    # When the sweeper runs (it reads only the database) and a worker processes the result
    result = actors.sweep()
    assert result.restarted == [campaign_id]
    worker = Worker(stub_broker, worker_timeout=50, worker_threads=4)
    worker.start()
    try:
        join_all(stub_broker)
    finally:
        worker.stop()

    # Then every customer got exactly one message and the campaign completed
    assert sorted(m["to"] for m in fake_twilio.messages) == sorted(phone_for(i) for i in range(20))
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.COMPLETED
    assert Event.get(Event.code == "campaign_restarted").campaign_id == campaign_id
    # And a second sweep finds nothing to restart
    assert actors.sweep().restarted == []


def test_an_error_storm_pauses_the_campaign(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a list where almost every number is rejected by Twilio
    make_customers(60)
    for i in range(60):
        if i % 10:
            fake_twilio.fail_number(phone_for(i), 21211)
    actors.services.configure_services(error_storm=(20, 20, 0.8))
    campaign_id = make_campaign()

    actors.send_campaign.send(campaign_id)
    join_all(stub_broker)

    # Then the campaign is paused with the reason, with customers left pending, not burned
    campaign = Campaign.get_by_id(campaign_id)
    assert campaign.status == CampaignStatus.PAUSED and campaign.status_reason.startswith("error storm")
    counts = analytics.database_counts(campaign_id)
    assert counts.get("pending", 0) > 0 and counts["failed"] >= 16


def test_pause_then_resume_sends_everyone_exactly_once(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a sender error pauses a campaign part-way
    make_customers(30)
    campaign_id = make_campaign()
    fake_twilio.fail_all(21606)
    actors.send_campaign.send(campaign_id)
    join_all(stub_broker)
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.PAUSED
    assert fake_twilio.messages == []

    # When the operator fixes the sender and resumes
    fake_twilio.fail_all(None)
    assert actors.resume(campaign_id) is True
    join_all(stub_broker)

    # Then everyone is sent exactly once and the campaign completes
    tos = [m["to"] for m in fake_twilio.messages]
    assert sorted(tos) == sorted(phone_for(i) for i in range(30))
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.COMPLETED
    assert actors.resume(campaign_id) is False
    assert Message.select().where(Message.status != MessageStatus.SENT).count() == 0


def test_rows_a_dead_worker_left_sending_under_a_cancelled_campaign_are_settled(db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a campaign cancelled while two of its rows were left ``sending`` by a worker that
    # died, one after Twilio accepted it (its record lost), one before it was sent
    make_customers(3)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
    accepted, unsent, pending = list(Message.select().order_by(Message.id))
    twilio_backend.send(to=accepted.to_phone, body=accepted.body)
    an_hour_ago = utcnow() - dt.timedelta(hours=1)
    Message.update(status=MessageStatus.SENDING, sending_at=an_hour_ago, attempts=1).where(
        Message.id.in_([accepted.id, unsent.id])).execute()
    campaigns.cancel_campaign(campaign_id)

    # When the sweeper runs and a worker processes what it enqueued
    result = actors.sweep()
    join_all(stub_broker)

    # Then the accepted one is recorded sent with Twilio's SID (not sent again), the unsent
    # one cancelled like the pending one, and a second sweep finds nothing left
    assert sorted(result.reconciling) == sorted([accepted.id, unsent.id])
    assert len(fake_twilio.messages) == 1
    rows = {m.id: m for m in Message.select()}
    assert (rows[accepted.id].status, rows[accepted.id].twilio_sid) == (MessageStatus.SENT, fake_twilio.messages[0]["sid"])
    assert rows[unsent.id].status == MessageStatus.CANCELLED and rows[pending.id].status == MessageStatus.CANCELLED
    assert actors.sweep().reconciling == []


def test_a_row_settled_cancelled_by_reconciliation_is_counted(db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a cancelled campaign whose only row a dead worker left ``sending`` before sending it,
    # and its analytics computed then
    make_customers(1)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
    Message.update(status=MessageStatus.SENDING, sending_at=utcnow() - dt.timedelta(hours=1), attempts=1).execute()
    campaigns.cancel_campaign(campaign_id)
    analytics.recompute_analytics(campaign_id)

    # When the sweeper has it reconciled
    actors.sweep()
    join_all(stub_broker)

    # Then Twilio had nothing, the row is cancelled, and the analytics say so
    assert fake_twilio.messages == []
    assert Message.get().status == MessageStatus.CANCELLED
    figures = analytics.analytics_dict(campaign_id)
    assert (figures["cancelled"], figures["pending"]) == (1, 0)


def test_the_sweeper_sends_a_stuck_row_once_with_its_campaigns_limits(db, stub_broker):
    # Given a paused campaign with its own rate limit, and a row a dead worker left ``sending``
    make_customers(2)
    campaign_id = make_campaign()
    Campaign.update(rate_limit="5/minute").where(Campaign.id == campaign_id).execute()
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
    stuck = Message.select().order_by(Message.id).first()
    Message.update(status=MessageStatus.SENDING, sending_at=utcnow() - dt.timedelta(hours=1)).where(
        Message.id == stuck.id).execute()
    campaigns.pause_campaign(campaign_id, "paused by an operator")

    # When the sweeper runs twice, before any worker took the message
    first, second = actors.sweep(), actors.sweep()

    # Then the row was sent to be reconciled once, as the dispatcher would send it
    assert (first.reconciling, second.reconciling) == ([stuck.id], [])
    [queued] = [m for m in stub_broker.queues["sms"].queue]
    options = dramatiq.Message.decode(queued).options
    assert options["extra_rate_limit"] == [f"campaign:{campaign_id}", "5/minute"]
    assert options["stop_group"]
