"""Running campaigns as an operator: quiet hours with an injected clock, preview, status,
pause / resume / cancel mid-send, and logs without phone numbers or secrets."""

from __future__ import annotations

import datetime as dt
import re
import time
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import dramatiq
import pytest
from limits import parse

import actors
import analytics
import dispatch
import fanout
import reports
import campaigns
from actors.services import configure_services
import sending
from claims import QuietNow, QuietPolicy
from models import Campaign, CampaignStatus, Customer, Event, Message, MessageStatus
from quiet import QuietHours, recipient_zone
from ratelimit import RateLimit
from tests.conftest import join_all, wait_for
from tests.factories import make_campaign, make_customers

QUIET = QuietHours.parse("21:00-08:00")
NY, LA = ZoneInfo("America/New_York"), ZoneInfo("America/Los_Angeles")
NY_NUMBER, LA_NUMBER, TOLL_FREE = "+12125550123", "+13105550123", "+18005550123"


def utc(zone: ZoneInfo, *args) -> dt.datetime:
    """A local wall-clock time in ``zone`` as naive UTC, the project's convention."""
    return dt.datetime(*args, tzinfo=zone).astimezone(dt.timezone.utc).replace(tzinfo=None)


# --------------------------------------------------------------- quiet hours, pure
def test_new_york_at_20_59_is_sent_and_at_21_00_waits_for_8_00_next_day():
    ny = recipient_zone(NY_NUMBER, customer_zone=None, campaign_zone=None, default_zone="UTC")
    assert ny == NY
    assert QUIET.next_allowed_utc(utc(NY, 2026, 11, 30, 20, 59), ny) is None
    assert QUIET.next_allowed_utc(utc(NY, 2026, 11, 30, 21, 0), ny) == utc(NY, 2026, 12, 1, 8, 0)
    assert QUIET.next_allowed_utc(utc(NY, 2026, 12, 1, 7, 59), ny) == utc(NY, 2026, 12, 1, 8, 0)
    assert QUIET.next_allowed_utc(utc(NY, 2026, 12, 1, 8, 0), ny) is None


def test_los_angeles_follows_its_own_clock_at_the_same_instant():
    instant = utc(NY, 2026, 11, 30, 21, 0)  # 18:00 in Los Angeles
    la = recipient_zone(LA_NUMBER, customer_zone=None, campaign_zone=None, default_zone="America/New_York")
    assert la == LA
    assert QUIET.next_allowed_utc(instant, la) is None
    assert QUIET.next_allowed_utc(utc(LA, 2026, 11, 30, 21, 30), la) == utc(LA, 2026, 12, 1, 8, 0)


def test_a_number_spanning_several_zones_uses_the_customers_then_the_campaigns_zone():
    assert recipient_zone(TOLL_FREE, customer_zone="America/Chicago", campaign_zone="America/Denver", default_zone="UTC") == ZoneInfo("America/Chicago")
    assert recipient_zone(TOLL_FREE, customer_zone=None, campaign_zone="America/Denver", default_zone="UTC") == ZoneInfo("America/Denver")
    assert recipient_zone(TOLL_FREE, customer_zone="Not/AZone", campaign_zone=None, default_zone="America/Phoenix") == ZoneInfo("America/Phoenix")
    # The customer's own zone wins over the number's single zone too (a New Yorker living in LA)
    assert recipient_zone(NY_NUMBER, customer_zone="America/Los_Angeles", campaign_zone=None, default_zone="UTC") == LA


def test_quiet_hours_across_a_dst_change_end_at_local_8_00():
    # The night of 2027-03-14, New York springs forward at 02:00
    assert QUIET.next_allowed_utc(utc(NY, 2027, 3, 13, 23, 0), NY) == utc(NY, 2027, 3, 14, 8, 0)
    assert utc(NY, 2027, 3, 14, 8, 0).hour == 12  # EDT, UTC-4


# ---------------------------------------------------- quiet hours, through the actor
class CaptureDelays(dramatiq.Middleware):
    def __init__(self):
        self.delayed: list = []

    def before_delay_message(self, broker, message):
        self.delayed.append(message)


def test_a_message_due_in_quiet_hours_waits_unclaimed_and_goes_when_its_window_opens(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a New York and a Los Angeles customer, and the clock at 21:00 in New York
    ids = make_customers(2)
    Customer.update(phone=NY_NUMBER).where(Customer.id == ids[0]).execute()
    Customer.update(phone=LA_NUMBER).where(Customer.id == ids[1]).execute()
    clock = SimpleNamespace(now=utc(NY, 2026, 11, 30, 21, 0))
    configure_services(quiet=QuietPolicy(QUIET, "America/New_York", clock=lambda: clock.now))
    capture = CaptureDelays()
    stub_broker.add_middleware(capture)
    try:
        # When the campaign runs
        campaign_id = make_campaign()
        actors.send_campaign.send(campaign_id)
        wait_for(lambda: len(fake_twilio.messages) >= 1)
        token = Campaign.get_by_id(campaign_id).dispatch_token
        stub_broker.join("sms", timeout=10_000)

        # Then Los Angeles (18:00) is sent; New York's row is not claimed, nor deferred in the
        # broker: it waits, pending, for the dispatcher
        assert [m["to"] for m in fake_twilio.messages] == [LA_NUMBER]
        assert not [m for m in capture.delayed if m.actor_name == "send_sms"]
        row = Message.get(Message.customer == ids[0])
        assert (row.status, row.attempts, row.queued_at, row.time_zone) == (MessageStatus.PENDING, 0, None, "America/New_York")
        # And the waiting campaign is not taken for a stalled one
        assert actors.sweep().restarted == []

        # When it is 08:00 in New York and the dispatcher looks again
        clock.now = utc(NY, 2026, 12, 1, 8, 0)
        actors.dispatch_campaign.send(campaign_id, token)
        wait_for(lambda: len(fake_twilio.messages) >= 2)
    finally:
        stub_broker.middleware.remove(capture)

    # Then New York is sent, once
    assert sorted(m["to"] for m in fake_twilio.messages) == sorted([LA_NUMBER, NY_NUMBER])
    join_all(stub_broker)
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.COMPLETED
    assert not Event.select().where(Event.code == "campaign_restarted").exists()



class SlotsThatTakeAMinute:
    """A ``BatchSlots`` whose slot is had only once the clock has moved on a minute (as a
    slot waited for would be); counts the batch's tries."""

    def __init__(self, clock: SimpleNamespace) -> None:
        self.clock = clock
        self.tries = 0

    def group(self, campaign_id):
        return campaign_id

    def take_many(self, costs, campaign_id):
        self.tries += len(costs)
        return [0] * len(costs)

    def __call__(self, cost, campaign_id, first=None):
        self.clock.now += dt.timedelta(minutes=1)


def test_a_send_whose_slot_ends_in_quiet_hours_is_deferred_not_sent(sqlite_db, stub_broker, twilio_backend, fake_twilio):
    # Given a New York customer, the clock at 20:59:30 there, and a slot that takes a minute
    [customer_id] = make_customers(1)
    Customer.update(phone=NY_NUMBER).where(Customer.id == customer_id).execute()
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
    row = Message.get(Message.campaign == campaign_id)
    clock = SimpleNamespace(now=utc(NY, 2026, 11, 30, 20, 59, 30))
    slots = SlotsThatTakeAMinute(clock)

    # When it is sent
    with pytest.raises(QuietNow):
        sending.send_message(row.id, backend=twilio_backend, short_url_base="https://x.test/q", acquire_slot=slots,
                             quiet=QuietPolicy(QUIET, "America/New_York", clock=lambda: clock.now))

    # Then its batch tried for the slot before 21:00, but nothing was sent after: the row
    # waits for 08:00, its attempt undone
    assert slots.tries == 1
    assert fake_twilio.messages == []
    row = Message.get_by_id(row.id)
    assert (row.status, row.attempts, row.queued_at) == (MessageStatus.PENDING, 0, utc(NY, 2026, 12, 1, 8, 0))


# ------------------------------------------------------------- preview and status
def test_preview_renders_exactly_and_counts_the_audience(sqlite_db):
    ids = make_customers(10, unsubscribed={1}, bad_phones={2: "12345"}, no_qr={3})
    Customer.update(first_name="Zoë" + "x" * 30).where(Customer.id == ids[4]).execute()
    Customer.update(first_name="Ãna").where(Customer.id == ids[5]).execute()
    campaign_id = make_campaign("Hi {first_name}: {short_url}")

    result = reports.preview(campaign_id, short_url_base="https://x.test/q", samples=2, price_per_segment=0.01)

    assert result.audience == 10
    assert result.skipped_by_reason == {"unsubscribed": 1, "invalid_phone": 1, "no_qr_code": 1}
    assert result.too_long == 1
    assert result.eligible == 6 and result.encodings == {"GSM-7": 5, "UCS-2": 1}
    assert result.segments == 6 and result.estimated_cost == 0.06
    assert re.fullmatch(r"Hi Sam0: https://x\.test/q/[0-9A-Z]{8}\nReply STOP to unsubscribe", result.samples[0]["body"])
    assert "+1212" not in result.samples[0]["to"] or "*" in result.samples[0]["to"]
    assert Message.select().count() == 0  # nothing was written


def test_status_report_gives_rate_eta_and_progress(sqlite_db):
    make_customers(10)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
    now = campaigns.utcnow()
    Campaign.update(started_at=now - dt.timedelta(seconds=600)).where(Campaign.id == campaign_id).execute()
    first_four = [m.id for m in Message.select().order_by(Message.id).limit(4)]
    for i, message_id in enumerate(first_four):  # one every 20 s, the last now
        Message.update(status=MessageStatus.SENT, sent_at=now - dt.timedelta(seconds=60 - 20 * i)).where(
            Message.id == message_id).execute()

    # (the rate: the 3 sends after the oldest in the window, over the 60 s since it)
    report = campaigns.status_report(campaign_id, now=now, rate_window_s=300)

    assert (report["sent"], report["pending"], report["targeted"]) == (4, 6, 10)
    assert report["rate_per_minute"] == 3.0 and report["eta_seconds"] == 120
    assert report["progress"].endswith("] 4/10") and report["progress"].count("#") == 12


# ------------------------------------------------------- pause, resume, cancel
def set_sms_limit(broker, limit: str) -> None:
    for middleware in broker.middleware:
        if isinstance(middleware, RateLimit):
            middleware.limits["sms"] = parse(limit)


def test_pause_mid_send_stops_within_a_slot_and_resume_sends_everyone_once(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a 500-customer campaign sending at 100 a second
    set_sms_limit(stub_broker, "100/second")
    try:
        make_customers(500, unsubscribed=set(range(0, 500, 10)))
        campaign_id = make_campaign()
        actors.send_campaign.send(campaign_id)
        deadline = time.monotonic() + 30
        while len(fake_twilio.messages) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)

        # When the operator pauses it mid-send
        assert actors.pause(campaign_id) is True
        at_pause = len(fake_twilio.messages)
        time.sleep(0.2)
        settled = len(fake_twilio.messages)
        time.sleep(1.0)

        # Then at most the requests already on the wire complete, and then nothing more
        assert settled - at_pause <= 4  # the worker's threads
        assert len(fake_twilio.messages) == settled
        assert 100 <= settled < 450
        join_all(stub_broker)
        assert len(fake_twilio.messages) == settled

        # When it is resumed, everyone eligible is sent exactly once
        assert actors.resume(campaign_id) is True
        join_all(stub_broker)
        tos = [m["to"] for m in fake_twilio.messages]
        assert len(tos) == 450 and len(set(tos)) == 450
        assert Campaign.get_by_id(campaign_id).status == CampaignStatus.COMPLETED
    finally:
        set_sms_limit(stub_broker, "1000/second")


def test_cancel_mid_send_leaves_no_pending_record(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    set_sms_limit(stub_broker, "100/second")
    try:
        make_customers(300)
        campaign_id = make_campaign()
        actors.send_campaign.send(campaign_id)
        deadline = time.monotonic() + 30
        while len(fake_twilio.messages) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)

        cancelled = actors.cancel(campaign_id)
        join_all(stub_broker)

        counts = analytics.database_counts(campaign_id)
        assert counts.get("pending", 0) == 0 and counts.get("sending", 0) == 0
        # (a message in flight when the cancel came is recorded cancelled a moment later)
        assert counts["cancelled"] >= cancelled > 0
        assert counts["sent"] == len(fake_twilio.messages) and counts["sent"] + counts["cancelled"] == 300
        assert Campaign.get_by_id(campaign_id).status == CampaignStatus.CANCELLED
        assert analytics.analytics_dict(campaign_id)["cancelled"] == counts["cancelled"]
    finally:
        set_sms_limit(stub_broker, "1000/second")


# ----------------------------------------------------------------------- logs
def test_a_full_campaign_logs_no_phone_number_and_no_token(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio, caplog):
    # Given everything logging at DEBUG, and customers whose numbers are formatted every way
    caplog.set_level("DEBUG")
    ids = make_customers(20, bad_phones={3: "12345"})
    Customer.update(phone="(212) 555-0103").where(Customer.id == ids[5]).execute()
    fake_twilio.accept_then_fail(2, "drop")
    fake_twilio.fail_number("+12122000007", 21211)
    campaign_id = make_campaign()

    actors.send_campaign.send(campaign_id)
    join_all(stub_broker)

    # Then the log has the campaign in it but no number in full and no secret
    assert len(fake_twilio.messages) >= 18 and "send_sms" in caplog.text
    text = caplog.text
    assert not re.search(r"\+\d{8,15}", text), re.search(r".{60}\+\d{8,15}.{20}", text)
    assert not re.search(r"%2B\d{8,15}", text)
    assert "555-0103" not in text and "2125550103" not in text
    assert fake_twilio.auth_token not in text


def test_a_scheduled_campaign_waits_then_the_sweeper_starts_it(sqlite_db, stub_broker, twilio_backend, fake_twilio):
    # Given a campaign scheduled an hour from now, whose delayed start the broker then loses
    make_customers(3)
    campaign_id = make_campaign()
    actors.start(campaign_id, campaigns.utcnow() + dt.timedelta(hours=1))
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.SCHEDULED
    assert len(stub_broker.queues["campaigns.DQ"].queue) == 1
    stub_broker.flush_all()
    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        # When a fan-out arrives early (a redelivery, say), nothing is sent or recorded
        actors.send_campaign.send(campaign_id)
        join_all(stub_broker)
        assert Message.select().count() == 0 and fake_twilio.messages == []
        assert actors.sweep().checked == 0

        # When its time has come, the sweeper starts it
        Campaign.update(send_at=campaigns.utcnow() - dt.timedelta(seconds=1)).where(Campaign.id == campaign_id).execute()
        actors.sweep()
        join_all(stub_broker)
    finally:
        worker.stop()
    assert len(fake_twilio.messages) == 3
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.COMPLETED


def test_quiet_hours_ending_inside_the_repeated_autumn_hour_never_end_in_the_past():
    # New York repeats 01:00-02:00 on 2025-11-02; a window ending at 01:30
    window = QuietHours.parse("21:00-01:30")
    second_pass = dt.datetime(2025, 11, 2, 6, 10)  # 01:10 EST, the second time round
    ends = window.next_allowed_utc(second_pass, NY)
    assert ends is not None and ends > second_pass
    assert ends == dt.datetime(2025, 11, 2, 6, 30)  # 01:30 EST


def test_quiet_hours_with_a_utc_offset_are_refused():
    with pytest.raises(ValueError):
        QuietHours.parse("08:00+01:00-09:00")


def test_a_quiet_hours_deferral_does_not_hold_the_dispatchers_budget(sqlite_db, stub_broker):
    # Given a campaign whose first rows were dispatched and then deferred until morning
    make_customers(10)
    campaign_id = make_campaign()
    result = fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
    first = [m.id for m in Message.select().order_by(Message.id).limit(4)]
    morning = campaigns.utcnow() + dt.timedelta(hours=9)
    Message.update(queued_at=morning).where(Message.id.in_(first)).execute()

    # When the dispatcher runs with room for 4 in flight
    enqueued = []
    dispatch.dispatch(campaign_id, result.dispatch_token, enqueue=lambda c, ids: enqueued.extend(ids),
                       max_inflight=4, requeue_after_s=1200)

    # Then the deferred rows do not count as in flight: 4 others go out
    assert len(enqueued) == 4 and not set(enqueued) & set(first)
