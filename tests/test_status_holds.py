"""A hold of Twilio's (``twilio_signals``: a 429's ``Retry-After``, 30027, 63038) in the
status: what is held, why and until when, and an ETA that starts when the hold ends; read
from the rate limiter's stop keys in the real Redis (one PTTL per hold rule, per report,
never per send), in ``campaign status`` and on the dashboard's campaign page, on both
databases."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import pytest
import redis
from click.testing import CliRunner
from dramatiq import Worker

import actors
import campaigns
import cli
import fanout
import models
import twilio_signals
from actors import stops
from actors.services import configure_services, get_services
from models import Campaign, CampaignStatus, utcnow
from ratelimit import RateLimit, RedisWindows
from settings import Settings
from signal_actions import SignalActions
from status_screen import format_status
from tests.conftest import FROM_NUMBER, wait_for
from tests.endpoints import POSTGRES_URL, REDIS_URL
from tests.factories import TEMPLATE, make_customers, phone_for
from tests.test_dashboard import OPERATOR, PASSWORD, app_for, https_client, token_of

OTHER_NUMBER = "+12125550111"
#: 15:00 in New York, 12:00 in Los Angeles: outside quiet hours.
AFTERNOON = dt.datetime(2026, 3, 10, 19, 0)
BASE = "https://x.test/q"
ACCOUNT_LIMIT = twilio_signals.SIGNALS["63038"]
DAILY_CAP = twilio_signals.SIGNALS["30027"]
TOO_MANY = twilio_signals.SIGNALS["20429"]


@pytest.fixture
def redis_windows(stub_broker):
    """The broker's rate limiter on the real Redis, in a namespace of its own."""
    prefix = f"test-{uuid.uuid4().hex[:12]}:ratelimit"
    client = redis.Redis.from_url(REDIS_URL)
    limiter = next(m for m in actors.broker.middleware if isinstance(m, RateLimit))
    limiter.windows = RedisWindows(client, prefix=prefix)
    yield limiter.windows
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)


def signals_at(now: dt.datetime) -> SignalActions:
    """The workers' signal actions, their clock at ``now``, holding in the broker's limiter."""
    return configure_services(signals=SignalActions(
        hold=stops.hold, held_ms=stops.held_ms, stop_campaign=stops.stop_campaign,
        global_rate_limit=get_services().sms_rate_limit, clock=lambda: now)).signals


def settings(**overrides) -> Settings:
    return Settings(**{"sms_rate_limit": "50/second", "quiet_hours": "off", **overrides})


def campaign_from(sender: str, name: str = "Test campaign", **fields) -> int:
    return Campaign.create(name=name, template=TEMPLATE, from_number=sender, **fields).id


def sending_campaign(customers: int, sender: str = FROM_NUMBER, **fields) -> int:
    make_customers(customers)
    campaign_id = campaign_from(sender, **fields)
    fanout.fan_out(campaign_id, short_url_base=BASE)
    Campaign.update(status=CampaignStatus.SENDING, started_at=AFTERNOON).where(Campaign.id == campaign_id).execute()
    return campaign_id


def test_an_account_hold_says_what_why_and_until_when_in_the_campaigns_zone_and_the_eta_waits_for_it(
        db, redis_windows, stub_broker):
    # Given 12 pending messages at 50/s, and Twilio's 63038 seen at 15:00 in New York
    campaign_id = sending_campaign(12)
    signals_at(AFTERNOON).act(ACCOUNT_LIMIT, campaign_id=campaign_id, sender=FROM_NUMBER)

    # When the operator asks for the status at that moment
    report = campaigns.status_report(campaign_id, now=AFTERNOON, settings=settings(), held_ms=stops.held_ms)

    # Then every send is held 24 h, for that reason, until 15:00 the next day in New York
    assert report["twilio_holds"] == [{
        "held": "every send", "signal": "63038", "reason": ACCOUNT_LIMIT.reason,
        "until_utc": "2026-03-11T19:00:00Z", "until_local": "2026-03-11 15:00", "zone": "America/New_York",
        "seconds_left": 86_400.0}]
    # And the ETA starts when the hold ends: 24 h, then 12 messages at 50/s
    assert report["eta_seconds"] == 86_400 + round(12 / 50)
    shown = format_status(report)
    assert ("every send held until 2026-03-11 15:00 America/New_York "
            "(Twilio 63038: the account's daily message limit is reached)") in shown
    assert "ETA 1 day, 0:00:00 (about 2026-03-11 19:00 UTC)" in shown


def test_a_senders_daily_cap_holds_only_its_campaigns_and_a_brief_429_shows_its_seconds(db, redis_windows, stub_broker):
    # Given a campaign of each of two senders, in Paris and without a zone, and 30027 seen for the first sender
    capped = sending_campaign(2, time_zone="Europe/Paris")
    other = campaign_from(OTHER_NUMBER, "other")
    signals = signals_at(AFTERNOON)
    signals.act(DAILY_CAP, campaign_id=capped, sender=FROM_NUMBER)

    # When the status of each is read
    held = campaigns.status_report(capped, now=AFTERNOON, settings=settings(), held_ms=stops.held_ms)
    free = campaigns.status_report(other, now=AFTERNOON, settings=settings(), held_ms=stops.held_ms)

    # Then the first sender's sends are held until midnight in Los Angeles (08:00 in Paris), not the other's
    assert [(h["held"], h["signal"], h["until_utc"], h["until_local"], h["zone"]) for h in held["twilio_holds"]] == [
        (f"the sends from number {FROM_NUMBER}", "30027", "2026-03-11T07:00:00Z", "2026-03-11 08:00", "Europe/Paris")]
    assert free["twilio_holds"] == []
    assert (f"the sends from number {FROM_NUMBER} held until 2026-03-11 08:00 Europe/Paris "
            f"({DAILY_CAP.reason})") in format_status(held)

    # And when a 429 with Retry-After 30 holds everyone too, both show it, to the second, soonest first
    signals.act(TOO_MANY, campaign_id=other, sender=OTHER_NUMBER, retry_after_s=30)
    held = campaigns.status_report(capped, now=AFTERNOON, settings=settings(), held_ms=stops.held_ms)
    free = campaigns.status_report(other, now=AFTERNOON, settings=settings(), held_ms=stops.held_ms)
    assert [h["signal"] for h in held["twilio_holds"]] == ["20429", "30027"]
    assert [(h["held"], h["until_local"], h["zone"]) for h in free["twilio_holds"]] == [
        ("every send", "15:00:30", "America/New_York")]
    assert "every send held until 15:00:30 America/New_York (Twilio answered 429 Too Many Requests)" in format_status(free)
    # and the held campaign's ETA still waits for the longer hold
    assert held["eta_seconds"] == 12 * 3600 + round(2 / 50)


def test_a_redis_that_does_not_answer_leaves_the_holds_unknown_not_the_status(db, stub_broker):
    # Given the limiter's windows on a Redis where nothing listens
    campaign_id = sending_campaign(3)
    away = RedisWindows(redis.Redis.from_url("redis://127.0.0.1:1/0"), prefix="away:ratelimit")

    # When the status is read
    report = campaigns.status_report(campaign_id, now=AFTERNOON, settings=settings(), held_ms=away.held_ms)

    # Then the rest is there, and the holds say they could not be read
    assert report["pending"] == 3 and report["twilio_holds"] is None
    assert "Twilio holds: unknown (cannot reach REDIS_URL)" in format_status(report)


def test_a_63038_from_twilio_is_shown_by_campaign_status_and_the_dashboard(
        db, redis_windows, stub_broker, twilio_backend, fake_twilio):
    # Given a campaign whose first create is refused with 63038, one worker thread
    make_customers(3)
    campaign_id = campaign_from(FROM_NUMBER)
    fake_twilio.fail_number(phone_for(0), 63038)
    signals_at(AFTERNOON)
    worker = Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        actors.send_campaign.send(campaign_id)
        wait_for(lambda: redis_windows.held_ms([twilio_signals.HOLD_ALL_DAY_GROUP]) > 0)
        stub_broker.join("sms", timeout=10_000)
    finally:
        worker.stop()
    expected_end = utcnow() + dt.timedelta(hours=24)

    # When the operator runs `campaign status` (text and JSON)
    text = CliRunner().invoke(cli.main, ["campaign", "status", str(campaign_id)], prog_name="python -m cli")
    as_json = CliRunner().invoke(cli.main, ["campaign", "status", str(campaign_id), "--json"], prog_name="python -m cli")

    # Then it says every send is held, why, and until about 24 h from now, in New York time
    assert text.exit_code == 0, text.output
    [until] = re.findall(r"every send held until (\d{4}-\d\d-\d\d \d\d:\d\d) America/New_York \(Twilio 63038: "
                         r"the account's daily message limit is reached\)", text.output)
    local_end = expected_end.replace(tzinfo=dt.timezone.utc).astimezone(twilio_signals.ZoneInfo("America/New_York"))
    assert abs(dt.datetime.fromisoformat(until) - local_end.replace(tzinfo=None, second=0, microsecond=0)) <= dt.timedelta(minutes=1)
    [hold] = json.loads(as_json.output)["twilio_holds"]
    assert (hold["held"], hold["signal"]) == ("every send", "63038") and 86_000 < hold["seconds_left"] <= 86_400
    assert json.loads(as_json.output)["eta_seconds"] >= 86_000

    # And the dashboard's campaign page shows the same hold
    url = POSTGRES_URL if models.is_postgres() else f"sqlite:///{models.database.obj.database}"
    client = https_client(app_for(database_url=url))
    token = token_of(client.get("/dashboard/sign-in").text)
    assert client.post("/dashboard/sign-in", data={"csrf_token": token, "name": OPERATOR, "password": PASSWORD}).status_code == 302
    page = client.get(f"/dashboard/campaigns/{campaign_id}").text
    [shown] = re.findall(r'<li data-figure="twilio_hold">(.*?)</li>', page, re.S)
    assert shown.startswith(f"Every send held until {until} America/New_York")
    assert "Twilio 63038: the account&#39;s daily message limit is reached" in shown
