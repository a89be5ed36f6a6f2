"""Twilio's signals (``twilio_signals.SIGNALS``): for each, the fake Twilio answers it (the
create's answer, or a status callback through the real webhook route, signed like Twilio),
and the product does what the table says: paused with the reason, held until a time,
slowed. ``ValidityPeriod`` on every message. State in the database is checked on both."""

from __future__ import annotations

import datetime as dt

import pytest
import redis
from dramatiq import Worker

import actors
import models
import twilio_signals
from actors import stops
from actors.services import configure_services, get_services
from claims import QuietPolicy
from errors import HoldError, PermanentError, SenderError, TransientError
from models import Campaign, CampaignStatus, Event, Message, MessageStatus
from quiet import QuietHours, zone
from ratelimit import RateLimit, RedisWindows
from settings import Secret, Settings
from signal_actions import SignalActions
from smsservice import classify_twilio_error, make_backend
from tests.conftest import FROM_NUMBER, join_all, twilio_settings, wait_for
from tests.endpoints import POSTGRES_URL, REDIS_URL
from tests.factories import TEMPLATE, make_customers, phone_for
from tests.test_web import PUBLIC, QR_PAGE, TOKEN, Server
from twilio_signals import Action
from web import create_app

OTHER_NUMBER = "+12125550111"
#: 13:00 in Los Angeles (PDT), 16:00 in New York: outside quiet hours everywhere here.
AFTERNOON = dt.datetime(2026, 3, 10, 20, 0)


def signals_at(now: dt.datetime, **overrides) -> SignalActions:
    """The workers' signal actions, with their clock fixed at ``now``."""
    values = dict(hold=stops.hold, held_ms=stops.held_ms, stop_campaign=stops.stop_campaign,
                  global_rate_limit=get_services().sms_rate_limit, retry_after_max_s=60, clock=lambda: now)
    values.update(overrides)
    return configure_services(signals=SignalActions(**values)).signals


def limiter() -> RateLimit:
    return next(m for m in actors.broker.middleware if isinstance(m, RateLimit))


def campaign_from(sender: str, name: str = "Test campaign", **fields) -> int:
    return Campaign.create(name=name, template=TEMPLATE, from_number=sender, **fields).id


def rows(campaign_id: int) -> list[Message]:
    return list(Message.select().where(Message.campaign == campaign_id).order_by(Message.id))


def events(code: str) -> list[Event]:
    return list(Event.select().where(Event.code == code).order_by(Event.id))


@pytest.fixture
def webhooks(db, stub_broker):
    """The web process on the test's database (SQLite or PostgreSQL), signed like Twilio."""
    url = POSTGRES_URL if models.is_postgres() else f"sqlite:///{models.database.obj.database}"
    settings = Settings(database_url=url, twilio_auth_token=Secret(TOKEN), public_base_url=PUBLIC + "/",
                        short_url_base=PUBLIC + "/q", qr_display_url=QR_PAGE)
    settings.validate()
    server = Server(create_app(settings))
    yield server
    server.close()


# ------------------------------------------------------------------ the table, pure


def test_each_code_of_the_table_has_its_action_and_an_http_429_is_20429():
    # Given Twilio's codes
    # When each is looked up
    actions = {code: twilio_signals.signal_for(code).action for code in
               ("20429", "30034", "30032", "30027", "63038", "30007", "30022")}
    # Then each has the action the table says, a 429 without a code too, and others none
    assert actions == {"20429": Action.HOLD_ALL_BRIEFLY, "30034": Action.PAUSE_SENDER, "30032": Action.PAUSE_SENDER,
                       "30027": Action.HOLD_SENDER_UNTIL_CAP_RESET, "63038": Action.HOLD_ALL_FOR_A_DAY,
                       "30007": Action.COUNT_FILTERING, "30022": Action.SLOW_CAMPAIGN}
    assert twilio_signals.signal_for(None, 429).action is Action.HOLD_ALL_BRIEFLY
    assert twilio_signals.signal_for(21211, 400) is None and twilio_signals.signal_for("30003") is None


def test_the_create_answer_of_each_signal_is_classified_with_its_signal():
    # Given Twilio's answers to a create
    # When they are classified
    classified = {code: classify_twilio_error(status, code, "x", retry_after_s=3.0) for code, status in
                  ((20429, 429), (30034, 400), (30032, 400), (30027, 400), (63038, 400), (30007, 400), (30022, 400))}
    # Then each error class says what happens to the message, and each carries its signal
    assert {code: type(exc) for code, exc in classified.items()} == {
        20429: TransientError, 30034: SenderError, 30032: SenderError, 30027: HoldError, 63038: HoldError,
        30007: PermanentError, 30022: TransientError}
    assert all(exc.signal is twilio_signals.SIGNALS[str(code)] for code, exc in classified.items())
    assert classified[20429].retry_after_ms == 3000


def test_a_daily_cap_hold_ends_at_the_next_midnight_in_los_angeles_and_the_account_limit_after_24_hours():
    # Given instants in summer time, in winter time, and just before midnight Pacific
    summer, winter, late = dt.datetime(2026, 3, 10, 20, 0), dt.datetime(2026, 1, 15, 9, 0), dt.datetime(2026, 7, 1, 6, 59)
    # When the holds are computed
    # Then T-Mobile's cap resets at 00:00 America/Los_Angeles (07:00 UTC in PDT, 08:00 in PST)
    assert twilio_signals.hold_until(Action.HOLD_SENDER_UNTIL_CAP_RESET, summer) == dt.datetime(2026, 3, 11, 7, 0)
    assert twilio_signals.hold_until(Action.HOLD_SENDER_UNTIL_CAP_RESET, winter) == dt.datetime(2026, 1, 16, 8, 0)
    assert twilio_signals.hold_until(Action.HOLD_SENDER_UNTIL_CAP_RESET, late) == dt.datetime(2026, 7, 1, 7, 0)
    # And the account's rolling 24 h window is waited out in full
    assert twilio_signals.hold_until(Action.HOLD_ALL_FOR_A_DAY, summer) == dt.datetime(2026, 3, 11, 20, 0)


def test_retry_after_is_read_in_seconds_or_as_a_date_and_capped():
    # Given Retry-After headers
    now = dt.datetime(2026, 3, 10, 20, 0)
    # When they are read
    # Then seconds and HTTP dates both give seconds, nonsense gives none, and the hold is capped
    assert twilio_signals.retry_after_s("5", now) == 5.0
    assert twilio_signals.retry_after_s("Tue, 10 Mar 2026 20:00:30 GMT", now) == 30.0
    assert twilio_signals.retry_after_s("soon", now) is None and twilio_signals.retry_after_s(None, now) is None
    assert twilio_signals.brief_hold_s(600, max_s=60) == 60 and twilio_signals.brief_hold_s(2, max_s=60) == 2
    assert twilio_signals.brief_hold_s(None, max_s=60) is None


def test_a_slow_down_halves_the_rate_down_to_one_a_day():
    # Given limits
    # When each is halved
    # Then the rate halves, a single message per window doubles its window, and a day is the floor
    assert twilio_signals.halved("10/minute") == "5 per 60 seconds"
    assert twilio_signals.halved("1000/second") == "500 per 1 seconds"
    assert twilio_signals.halved("1/minute") == "1 per 120 seconds"
    assert twilio_signals.halved("1 per 86400 seconds") is None


def test_seconds_until_quiet_hours_start_in_the_recipients_zone():
    # Given quiet hours of 21:00-08:00 in New York
    hours, new_york = QuietHours.parse("21:00-08:00"), zone("America/New_York")
    # When it is 20:00 there (00:00 UTC, EDT), 08:00, and 22:00 (inside)
    # Then quiet hours start in 1 h, in 13 h, and now
    assert hours.seconds_until_start(dt.datetime(2026, 3, 11, 0, 0), new_york) == 3600
    assert hours.seconds_until_start(dt.datetime(2026, 3, 11, 12, 0), new_york) == 13 * 3600
    assert hours.seconds_until_start(dt.datetime(2026, 3, 11, 2, 0), new_york) == 0


# ------------------------------------------------------------ the create's answer


def test_a_429_with_retry_after_holds_every_campaigns_sends_for_that_long(db, stub_broker, twilio_backend, fake_twilio):
    # Given two campaigns of 3 customers each, a Retry-After capped at 1 s, one worker thread
    make_customers(3)
    first, second = campaign_from(FROM_NUMBER, "first"), campaign_from(OTHER_NUMBER, "second")
    signals_at(models.utcnow(), retry_after_max_s=1, clock=models.utcnow)
    # And Twilio answers the first create 429 with Retry-After: 120
    fake_twilio.throttle(1, retry_after="120")
    worker = Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        # When both campaigns run
        actors.send_campaign.send(first)
        actors.send_campaign.send(second)
        join_all(stub_broker)
    finally:
        worker.stop()

    # Then every send waited out the hold, whichever campaign it was of
    throttled, *later = fake_twilio.requests
    assert throttled["http_status"] == 429 and later
    # (less 10 ms: the hold's end is kept in whole milliseconds, the fake's times are floats)
    assert all(request["at"] >= throttled["at"] + 0.99 for request in later)
    assert [e.detail for e in events("sends_held")] == [
        "Twilio answered 429 Too Many Requests with Retry-After 120 s: every send held 1 s"]
    # And everyone got exactly one message in the end
    assert sorted(m["to"] for m in fake_twilio.messages) == sorted([phone_for(i) for i in range(3)] * 2)
    assert {Campaign.get_by_id(c).status for c in (first, second)} == {CampaignStatus.COMPLETED}


def test_30034_from_the_create_pauses_every_campaign_of_that_sender_with_the_reason(
        db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given two sending campaigns from one sender and one from another
    make_customers(3)
    unregistered, also_unregistered = campaign_from(FROM_NUMBER, "a"), campaign_from(FROM_NUMBER, "b")
    other = campaign_from(OTHER_NUMBER, "c")
    Campaign.update(status=CampaignStatus.SENDING).where(Campaign.id.in_([also_unregistered, other])).execute()
    signals_at(AFTERNOON)
    # And Twilio refuses every create from it with 30034
    fake_twilio.fail_all(30034)

    # When the first campaign sends
    actors.send_campaign.send(unregistered)
    join_all(stub_broker)

    # Then both campaigns of the sender are paused with the reason, the other one is not
    paused = {c: Campaign.get_by_id(c) for c in (unregistered, also_unregistered)}
    assert {c.status for c in paused.values()} == {CampaignStatus.PAUSED}
    assert all("30034" in c.status_reason and "not registered for US A2P 10DLC" in c.status_reason
               and FROM_NUMBER in c.status_reason for c in paused.values())
    assert Campaign.get_by_id(other).status == CampaignStatus.SENDING
    # And nobody was failed: the messages wait, and the paused campaigns get no slot
    assert {m.status for m in rows(unregistered)} == {MessageStatus.PENDING}
    assert limiter().windows.acquire([], 1, (stops.stop_group(also_unregistered),))[0] == -1


def test_63038_from_the_create_holds_every_send_for_24_hours(db, stub_broker, twilio_backend, fake_twilio):
    # Given a campaign whose first recipient's create is refused with 63038, one worker thread
    make_customers(3)
    capped = campaign_from(FROM_NUMBER, "capped")
    fake_twilio.fail_number(phone_for(0), 63038)
    signals_at(AFTERNOON)
    worker = Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        # When it sends, and later another campaign, from another sender, starts
        actors.send_campaign.send(capped)
        wait_for(lambda: events("sends_held"))
        fake_twilio.fail_number(phone_for(0), 21211)  # (whatever the account does next)
        later = campaign_from(OTHER_NUMBER, "later")
        actors.send_campaign.send(later)
        wait_for(lambda: len(rows(later)) == 3 and Campaign.get_by_id(later).heartbeat_at is not None)
        stub_broker.join("sms", timeout=10_000)
    finally:
        worker.stop()

    # Then every send is held until 24 h later, with an event saying so
    assert [e.detail for e in events("sends_held")] == [
        "Twilio 63038: the account's daily message limit is reached: every send held until 2026-03-11 20:00 UTC"]
    assert limiter().held_ms([twilio_signals.HOLD_ALL_DAY_GROUP]) > 23 * 3_600_000
    # And nothing more reached Twilio: the refused message and all the others are pending
    assert fake_twilio.messages == []
    assert {m.status for m in rows(capped) + rows(later)} == {MessageStatus.PENDING}
    assert Campaign.get_by_id(later).status == CampaignStatus.SENDING


# --------------------------------------------------------- status callbacks (webhook)


def sent_campaign(sender: str, count: int, name: str) -> tuple[int, list[Message]]:
    """A campaign sent through the fake Twilio to ``count`` customers (already existing)."""
    campaign_id = campaign_from(sender, name)
    actors.send_campaign.send(campaign_id)
    join_all(actors.broker)
    return campaign_id, rows(campaign_id)


def test_30032_in_a_delivery_report_pauses_the_senders_sending_campaigns(
        db, webhooks, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a toll-free sender's campaign sent, another of its campaigns sending, and one of another sender
    make_customers(2)
    signals_at(AFTERNOON)
    toll_free = "+18005550100"
    _done, sent = sent_campaign(toll_free, 2, "done")
    sending, other = campaign_from(toll_free, "sending"), campaign_from(OTHER_NUMBER, "other")
    Campaign.update(status=CampaignStatus.SENDING).where(Campaign.id.in_([sending, other])).execute()

    # When Twilio reports the first message undelivered with 30032
    assert webhooks.status(sent[0].twilio_sid, "undelivered", "30032").status_code == 200

    # Then the sender's sending campaign is paused with the reason, the other is not
    campaign = Campaign.get_by_id(sending)
    assert campaign.status == CampaignStatus.PAUSED
    assert campaign.status_reason.startswith("Twilio 30032: the toll-free sender is not verified") and toll_free in campaign.status_reason
    assert Campaign.get_by_id(other).status == CampaignStatus.SENDING
    # And a replay of the report changes nothing more
    assert webhooks.status(sent[0].twilio_sid, "undelivered", "30032").status_code == 200
    assert len(events("campaign_paused")) == 1


def test_30027_in_a_delivery_report_holds_the_senders_traffic_until_midnight_pacific(
        db, webhooks, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a campaign sent from a sender (at 13:00 in Los Angeles)
    make_customers(3)
    signals_at(AFTERNOON)
    _done, sent = sent_campaign(FROM_NUMBER, 3, "done")
    before = len(fake_twilio.messages)

    # When Twilio reports one of its messages undelivered with 30027 (T-Mobile's daily cap)
    assert webhooks.status(sent[1].twilio_sid, "undelivered", "30027").status_code == 200
    # And two more campaigns start: one from that sender, one from another
    held, free = campaign_from(FROM_NUMBER, "held"), campaign_from(OTHER_NUMBER, "free")
    actors.send_campaign.send(held)
    actors.send_campaign.send(free)
    wait_for(lambda: Campaign.get_by_id(free).status == CampaignStatus.COMPLETED)
    stub_broker.join("sms", timeout=10_000)

    # Then the sender's traffic is held until midnight Pacific (07:00 UTC in March), with an event
    assert [e.detail for e in events("sends_held")] == [
        "Twilio 30027: T-Mobile's daily message limit for the brand is reached: the sends from number "
        f"{FROM_NUMBER} held until 2026-03-11 07:00 UTC"]
    assert 10 * 3_600_000 < limiter().held_ms([twilio_signals.hold_sender_group(FROM_NUMBER)]) <= 11 * 3_600_000
    # And the held campaign sent nothing, while the other sender's campaign sent everyone
    assert {m.status for m in rows(held)} == {MessageStatus.PENDING}
    assert Campaign.get_by_id(held).status == CampaignStatus.SENDING
    assert sorted(m["to"] for m in fake_twilio.messages[before:]) == sorted(phone_for(i) for i in range(3))
    assert {m["from"] for m in fake_twilio.messages[before:]} == {OTHER_NUMBER}


def test_30022_in_delivery_reports_halves_the_campaigns_rate_once_a_minute(
        db, webhooks, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a campaign sent at the workers' limit (1000/second in the tests), still sending
    make_customers(3)
    now = [AFTERNOON]
    signals_at(AFTERNOON, clock=lambda: now[0])
    campaign_id, sent = sent_campaign(FROM_NUMBER, 3, "fast")
    Campaign.update(status=CampaignStatus.SENDING).where(Campaign.id == campaign_id).execute()

    # When Twilio reports two messages undelivered with 30022 in the same minute
    for message in sent[:2]:
        assert webhooks.status(message.twilio_sid, "undelivered", "30022").status_code == 200
    # Then the campaign's rate is halved once, with an event
    assert Campaign.get_by_id(campaign_id).rate_limit == "500 per 1 seconds"
    assert [e.detail for e in events("campaign_slowed")] == [
        "Twilio 30022: the carrier's rate limit for the 10DLC campaign was exceeded: rate lowered from 1000/second "
        "to 500 per 1 seconds"]

    # When another comes a minute later
    now[0] = AFTERNOON + dt.timedelta(seconds=61)
    assert webhooks.status(sent[2].twilio_sid, "undelivered", "30022").status_code == 200
    # Then it is halved again, and the dispatcher paces the campaign at its new rate
    assert Campaign.get_by_id(campaign_id).rate_limit == "250 per 1 seconds"
    assert len(events("campaign_slowed")) == 2


def test_a_spike_of_30007_in_delivery_reports_pauses_the_campaign(db, webhooks, stub_broker, stub_worker):
    # Given a sending campaign with 40 sent messages and more pending
    campaign_id = campaign_from(FROM_NUMBER, "filtered", status=CampaignStatus.SENDING)
    customers = make_customers(45)
    for i, customer_id in enumerate(customers):
        Message.create(campaign=campaign_id, customer=customer_id, to_phone=phone_for(i), attempts=1 if i < 40 else 0,
                       status=MessageStatus.SENT if i < 40 else MessageStatus.PENDING,
                       twilio_sid=f"SM{i:032x}" if i < 40 else None)
    sent = rows(campaign_id)[:40]

    # When 17 are reported delivered and 3 filtered (30007): 15 %, under the 20 % of the rule
    for i, message in enumerate(sent[:20]):
        filtered = i in (5, 11, 17)
        webhooks.status(message.twilio_sid, "undelivered" if filtered else "delivered", "30007" if filtered else None)
    join_all(stub_broker)
    # Then the campaign goes on
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.SENDING

    # When the next 20 bring 8 more 30007 (11 of 40 in the end)
    for i, message in enumerate(sent[20:]):
        webhooks.status(message.twilio_sid, "undelivered" if i < 8 else "delivered", "30007" if i < 8 else None)
    join_all(stub_broker)
    # Then the campaign is paused with the reason, and its messages get no slot
    campaign = Campaign.get_by_id(campaign_id)
    assert campaign.status == CampaignStatus.PAUSED
    assert campaign.status_reason.startswith("carrier filtering: ") and "outcomes were Twilio 30007" in campaign.status_reason
    assert limiter().windows.acquire([], 1, (stops.stop_group(campaign_id),))[0] == -1


# ---------------------------------------------------------------- ValidityPeriod


def test_every_message_carries_the_validity_period_setting(db, stub_broker, stub_worker, fake_twilio):
    # Given SMS_VALIDITY_PERIOD_S=600 and quiet hours off
    configure_services(backend=make_backend(twilio_settings(fake_twilio, sms_validity_period_s=600)))
    make_customers(3)
    # When a campaign is sent
    actors.send_campaign.send(campaign_from(FROM_NUMBER))
    join_all(stub_broker)
    # Then Twilio was given ValidityPeriod=600 with each message
    assert [m["validity_period"] for m in fake_twilio.messages] == ["600"] * 3


def test_the_validity_period_ends_when_the_recipients_quiet_hours_start(db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given quiet hours 21:00-08:00 and 20:00 in New York, where the recipients are (212 numbers)
    evening = dt.datetime(2026, 3, 11, 0, 0)
    configure_services(quiet=QuietPolicy(QuietHours.parse("21:00-08:00"), "America/New_York", clock=lambda: evening))
    make_customers(3)
    # When a campaign is sent
    actors.send_campaign.send(campaign_from(FROM_NUMBER))
    join_all(stub_broker)
    # Then each message may wait at Twilio one hour at most (not the default 4 h)
    assert [m["validity_period"] for m in fake_twilio.messages] == ["3600"] * 3


def test_a_hold_in_redis_refuses_slots_until_it_lifts_itself(unique_namespace):
    # Given the limiter's windows in the real Redis
    client = redis.Redis.from_url(REDIS_URL)
    windows = RedisWindows(client, prefix=f"{unique_namespace}:ratelimit")
    try:
        # When a group is held for 300 ms
        assert windows.hold("hold:all:retry-after", 300) is True
        assert windows.hold("hold:all:retry-after", 300) is False  # already held
        # Then its messages get no slot, and the time left is read in one round trip
        assert windows.acquire([("sms", 10, 1000)], 1, ("campaign:1", "hold:all:retry-after"))[0] == -1
        assert 0 < windows.held_ms(["hold:all:retry-after", "hold:all:daily-limit"]) <= 300
        # And once it has lifted itself, they do (after the new Redis's first window)
        wait_for(lambda: windows.held_ms(["hold:all:retry-after"]) == 0)
        wait_for(lambda: windows.acquire([("sms", 10, 100)], 1, ("hold:all:retry-after",))[0] == 0)
    finally:
        client.delete(*client.keys(f"{unique_namespace}:*") or ["-"])
        client.close()


def test_a_signal_in_a_report_that_overtook_its_sid_is_acted_on_once_the_sid_is_recorded(
        db, webhooks, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a toll-free sender's campaign sent, one of whose SIDs is not recorded yet, and another of its campaigns sending
    import message_types
    import sending as sending_path

    make_customers(2)
    signals_at(AFTERNOON)
    toll_free = "+18005550100"
    done, sent = sent_campaign(toll_free, 2, "done")
    late = sent[0]
    Message.update(twilio_sid=None, status=MessageStatus.SENDING).where(Message.id == late.id).execute()
    other = campaign_from(toll_free, "sending")
    Campaign.update(status=CampaignStatus.SENDING).where(Campaign.id == other).execute()

    # When Twilio reports that message undelivered with 30032 before its SID is recorded
    assert webhooks.status(late.twilio_sid, "undelivered", "30032").status_code == 200
    assert Campaign.get_by_id(other).status == CampaignStatus.SENDING  # nothing to act on yet
    # And then the SID is recorded and the campaign's metrics update runs
    sending_path.write_sent([message_types.SentRecord(late.id, late.twilio_sid, 1, done)])
    actors.update_metrics(done)
    assert Message.get_by_id(late.id).delivery_error_code == "30032"  # the kept report was applied

    # Then the signal is acted on as if the report had come in order: the sender's campaign paused
    campaign = Campaign.get_by_id(other)
    assert campaign.status == CampaignStatus.PAUSED and campaign.status_reason.startswith("Twilio 30032")
    assert len(events("campaign_paused")) == 1
