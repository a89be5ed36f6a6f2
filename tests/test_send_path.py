"""The spec's send path on a StubBroker with in-process workers, on SQLite and PostgreSQL,
through the real twilio client and the fake Twilio API."""

from __future__ import annotations

import json
import time

import dramatiq


import actors
import analytics
import fanout
from models import Campaign, CampaignAnalytics, CampaignStatus, Customer, Event, Message, MessageStatus, Suppression
from segments import measure
from sms import FOOTER
from tests.conftest import FROM_NUMBER, join_all
from tests.factories import make_campaign, make_customers, phone_for


def run_campaign(broker, campaign_id: int) -> None:
    actors.send_campaign.send(campaign_id)
    join_all(broker)


def statuses(campaign_id: int) -> dict[str, int]:
    return analytics.database_counts(campaign_id)


def test_campaign_sends_one_sms_per_eligible_customer(db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given 40 customers, of whom 3 are unsubscribed, 2 have bad phones and 1 has no QR code
    ids = make_customers(40, unsubscribed={1, 2, 3}, bad_phones={4: "12345", 5: "+1555abc"}, no_qr={6})
    campaign_id = make_campaign()

    # When the campaign runs
    run_campaign(stub_broker, campaign_id)

    # Then each of the 34 eligible customers got exactly one message, ending with the footer
    assert len(fake_twilio.messages) == 34
    assert sorted(m["to"] for m in fake_twilio.messages) == sorted(phone_for(i) for i in [0, *range(7, 40)])
    for sent in fake_twilio.messages:
        assert sent["body"].endswith("\n" + FOOTER)
        assert sent["from"] == FROM_NUMBER
        assert measure(sent["body"]).segments == 1
    # And each message has a short link of its own
    rows = list(Message.select().where(Message.status == MessageStatus.SENT))
    assert all(f"/q/{row.link_code}\n" in row.body for row in rows) and len({row.link_code for row in rows}) == 34
    assert all(row.twilio_sid.startswith("SM") for row in rows)
    # And the others are recorded skipped with their reasons
    skipped = {m.customer_id: m.error_code for m in Message.select().where(Message.status == MessageStatus.SKIPPED)}
    assert skipped == {
        ids[1]: "unsubscribed", ids[2]: "unsubscribed", ids[3]: "unsubscribed",
        ids[4]: "invalid_phone", ids[5]: "invalid_phone", ids[6]: "no_qr_code",
    }
    # And the analytics equal the database and the campaign is completed
    figures = CampaignAnalytics.get(CampaignAnalytics.campaign == campaign_id)
    assert (figures.targeted, figures.sent, figures.skipped, figures.failed, figures.pending) == (40, 34, 6, 0, 0)
    assert figures.segments == 34
    assert json.loads(figures.skipped_by_reason) == {"invalid_phone": 2, "no_qr_code": 1, "unsubscribed": 3}
    assert statuses(campaign_id) == {"sent": 34, "skipped": 6}
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.COMPLETED


def test_running_the_fan_out_twice_sends_nothing_twice(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a campaign of 30 eligible customers
    make_customers(30)
    campaign_id = make_campaign()

    # When send_campaign is enqueued twice at once, and once more after it finished
    actors.send_campaign.send(campaign_id)
    actors.send_campaign.send(campaign_id)
    join_all(stub_broker)
    actors.send_campaign.send(campaign_id)
    join_all(stub_broker)

    # Then every customer got exactly one message and there is one row per customer
    tos = [m["to"] for m in fake_twilio.messages]
    assert len(tos) == 30 and len(set(tos)) == 30
    assert Message.select().count() == 30


def test_send_sms_redelivered_after_success_sends_nothing(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a campaign that has been sent
    make_customers(3)
    campaign_id = make_campaign()
    run_campaign(stub_broker, campaign_id)
    assert len(fake_twilio.messages) == 3

    # When the broker redelivers every send_sms message
    for message in Message.select():
        actors.send_sms.send(message.id)
    join_all(stub_broker)

    # Then Twilio saw no second message
    assert len(fake_twilio.messages) == 3
    assert Message.select().where(Message.attempts != 1).count() == 0


def test_campaign_that_does_not_exist_is_recorded_not_crashed(sqlite_db, stub_broker, stub_worker, twilio_backend):
    # When a fan-out is enqueued for a campaign id that does not exist
    actors.send_campaign.send(4242)
    join_all(stub_broker)  # fail_fast: a dead-lettered message would raise here

    # Then an operator-visible event names it
    event = Event.get(Event.campaign_id == 4242)
    assert event.code == "campaign_not_found" and "4242" in event.detail


def test_send_sms_for_a_missing_message_is_recorded(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    actors.send_sms.send(999_999)
    join_all(stub_broker)
    assert Event.get(Event.code == "message_not_found").detail == "message 999999 does not exist"
    assert fake_twilio.messages == []


def test_unknown_placeholder_fails_the_campaign_with_the_reason(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    make_customers(5)
    campaign_id = make_campaign("Hi {frist_name}: {short_url}")

    run_campaign(stub_broker, campaign_id)

    campaign = Campaign.get_by_id(campaign_id)
    assert campaign.status == CampaignStatus.FAILED
    assert "{frist_name}" in campaign.status_reason
    assert Message.select().count() == 0 and fake_twilio.messages == []
    assert Event.get(Event.campaign_id == campaign_id).code == "campaign_failed"


def test_template_that_cannot_fit_even_with_an_empty_name_fails_the_campaign(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    make_customers(5)
    campaign_id = make_campaign("Hi {first_name}! " + "Big sale today. " * 8 + "{short_url}")

    run_campaign(stub_broker, campaign_id)

    campaign = Campaign.get_by_id(campaign_id)
    assert campaign.status == CampaignStatus.FAILED
    assert "cannot fit in one SMS even with an empty name" in campaign.status_reason
    assert fake_twilio.messages == []


def test_a_name_that_forces_ucs2_fails_only_that_customer(db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a template that fits in GSM-7 but not in 70 UCS-2 units
    ids = make_customers(3)
    Customer.update(first_name="Zoë").where(Customer.id == ids[1]).execute()
    campaign_id = make_campaign()

    run_campaign(stub_broker, campaign_id)

    # Then that one customer is failed with a reason that names the character, the others sent
    failed = Message.get(Message.customer == ids[1])
    assert failed.status == MessageStatus.FAILED and failed.error_code == "too_long"
    assert "UCS-2" in failed.reason and "ë" in failed.reason
    assert len(fake_twilio.messages) == 2
    assert statuses(campaign_id) == {"sent": 2, "failed": 1}
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.COMPLETED


def test_permanent_twilio_errors_fail_the_record_once(db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given Twilio rejects one number as invalid and one recipient has replied STOP
    ids = make_customers(4)
    fake_twilio.fail_number(phone_for(1), 21211)
    fake_twilio.fail_number(phone_for(2), 21610)
    campaign_id = make_campaign()

    run_campaign(stub_broker, campaign_id)

    # Then each is failed with its code after exactly one request, and the STOP unsubscribes
    codes = {m.customer_id: m.error_code for m in Message.select().where(Message.status == MessageStatus.FAILED)}
    assert codes == {ids[1]: "21211", ids[2]: "21610"}
    assert [r["to"] for r in fake_twilio.requests].count(phone_for(1)) == 1
    assert Customer.get_by_id(ids[2]).sms_subscribed is False
    assert Suppression.get(Suppression.phone_e164 == phone_for(2)).source == "twilio_21610"  # the number, not the row
    figures = analytics.analytics_dict(campaign_id)
    assert figures["failed_by_reason"] == {"21211": 1, "21610": 1} and figures["sent"] == 2

    # And the next campaign skips the customer who replied STOP, without asking Twilio
    requests_before = len(fake_twilio.requests)
    next_campaign = make_campaign(name="Next")
    run_campaign(stub_broker, next_campaign)
    row = Message.get(Message.campaign == next_campaign, Message.customer == ids[2])
    assert (row.status, row.error_code) == (MessageStatus.SKIPPED, "unsubscribed")
    assert phone_for(2) not in [r["to"] for r in fake_twilio.requests[requests_before:]]


def test_sender_error_pauses_the_campaign_and_sends_nothing_more(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    make_customers(10)
    fake_twilio.fail_all(21606)
    campaign_id = make_campaign()

    run_campaign(stub_broker, campaign_id)

    campaign = Campaign.get_by_id(campaign_id)
    assert campaign.status == CampaignStatus.PAUSED and "21606" in campaign.status_reason
    assert fake_twilio.messages == []
    assert Message.select().where(Message.status == MessageStatus.FAILED).count() == 0


class CountProcessed(dramatiq.Middleware):
    """Counts processed messages by actor (a test seam on the broker, not a patch)."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def after_process_message(self, broker, message, *, result=None, exception=None):
        self.counts[message.actor_name] = self.counts.get(message.actor_name, 0) + 1


def test_metrics_updates_are_coalesced(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a campaign of 300 customers and a counter of processed messages
    counter = CountProcessed()
    stub_broker.add_middleware(counter)
    try:
        make_customers(300)
        campaign_id = make_campaign()
        started = time.monotonic()

        # When it runs
        run_campaign(stub_broker, campaign_id)
        elapsed_ms = (time.monotonic() - started) * 1000
    finally:
        stub_broker.middleware.remove(counter)

    # Then 300 sends ran far fewer aggregations: at most one per debounce window, plus the last
    delay_ms = actors.settings.metrics_delay_ms
    assert counter.counts["send_sms"] == 300
    assert 1 <= counter.counts["update_metrics"] <= elapsed_ms / delay_ms + 5  # + the last, and a retry or two
    assert counter.counts["update_metrics"] < 300 / 3
    assert analytics.analytics_dict(campaign_id)["sent"] == 300


def test_dispatcher_keeps_about_three_windows_in_flight_and_carries_the_campaign_limit(sqlite_db, stub_broker):
    # Given a campaign of 100 customers with its own limit of 5 a minute (slower than the global one)
    make_customers(100)
    campaign_id = make_campaign()
    Campaign.update(rate_limit="5/minute").where(Campaign.id == campaign_id).execute()
    result = fanout.fan_out(campaign_id, short_url_base="https://x.test/q")

    # When the dispatcher runs (no worker: we look at what it put on the broker)
    actors.dispatch_campaign.fn(campaign_id, result.dispatch_token)

    # Then it enqueued three windows of the campaign's limit, each carrying that limit,
    # and scheduled itself to top up
    sends = [dramatiq.Message.decode(raw) for raw in stub_broker.queues["sms"].queue]
    assert len(sends) == 15
    assert all(m.options["extra_rate_limit"] == [f"campaign:{campaign_id}", "5/minute"] for m in sends)
    assert Message.select().where(Message.queued_at.is_null(False)).count() == 15
    assert len(stub_broker.queues["campaigns.DQ"].queue) == 1

    # And a second run while those are still in flight adds nothing
    actors.dispatch_campaign.fn(campaign_id, result.dispatch_token)
    assert len(stub_broker.queues["sms"].queue) == 15

    # And a superseded chain (an older token) stops
    actors.dispatch_campaign.fn(campaign_id, "stale-token")
    assert len(stub_broker.queues["campaigns.DQ"].queue) == 2


def test_a_malformed_campaign_rate_limit_fails_the_campaign(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    make_customers(2)
    campaign_id = make_campaign()
    Campaign.update(rate_limit="fast please").where(Campaign.id == campaign_id).execute()
    run_campaign(stub_broker, campaign_id)
    campaign = Campaign.get_by_id(campaign_id)
    assert campaign.status == CampaignStatus.FAILED and "fast please" in campaign.status_reason
    assert fake_twilio.messages == []
