"""Status that tells the truth (issue 15): the send rate over a window that fits the
campaign, the ETA from the open rows, the effective limit and the quiet-hours holds, the
start of a scheduled campaign, the reason of a paused one, delivery and clicks; the watch
screen redrawn in place with nothing printed into it.

The rate window and the ETA are pure (``progress.py``, times passed in); the report runs on
both databases with ``now=`` injected."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging

import pytest

import campaigns
import cli_logging
import fanout
import progress
from analytics import recompute_analytics
from models import Campaign, CampaignStatus, Click, Message, MessageStatus
from settings import Settings
from status_screen import CLEAR_BELOW, CLEAR_LINE, HOME, SHOW_CURSOR, Screen, format_status
from tests.factories import make_campaign, make_customers
from tests.recording import Recording

T0 = dt.datetime(2026, 1, 15, 17, 0, 0)  # noon in New York: outside quiet hours
BASE = "https://x.test/q"


def sends(at: dt.datetime, count: int, per_s: float) -> list[dt.datetime]:
    """``count`` send times, the newest at ``at``, ``per_s`` apart (newest first)."""
    return [at - dt.timedelta(seconds=i / per_s) for i in range(count)]


# ----------------------------------------------------------------------- the rate window
def test_a_fast_campaign_is_measured_over_its_last_sends_not_five_minutes():
    # Given a campaign sending 50 a second for the last 60 s (3,000 sends)
    now = T0
    recent = sends(now, 3000, 50.0)

    # When the rate is measured
    rate = progress.measured_rate(recent, now=now, started_at=now - dt.timedelta(seconds=60))

    # Then the window holds the last 200 sends (about 4 s) and the rate is 50/s, where the
    # old "last 5 minutes / 5" said 3,000 / 300 s = 10/s
    assert rate.sends == progress.ENOUGH_SENDS - 1
    assert 3.9 <= rate.window_s <= 4.1
    assert rate.per_s == pytest.approx(50.0, rel=0.02)


def test_a_young_campaign_is_measured_from_its_first_send():
    # Given a campaign started 10 s ago whose first send came 2 s later, 40 sends at 5 a second
    now = T0
    recent = sends(now, 40, 5.0)

    # When the rate is measured
    rate = progress.measured_rate(recent, now=now, started_at=now - dt.timedelta(seconds=10))

    # Then the window starts at its first send (7.8 s ago), not 5 minutes ago (which would
    # say 0.13/s) nor at its start (4/s): 39 sends after the first, 5/s
    assert rate.window_s == pytest.approx(7.8) and rate.sends == 39 and rate.per_s == pytest.approx(5.0)


def test_a_send_stamped_after_now_counts_as_now():
    # Given 200 sends at 50/s, the newest 10 stamped just after "now" (written meanwhile)
    now = T0
    recent = sends(now + dt.timedelta(seconds=0.2), 200, 50.0)

    # When the rate is measured
    rate = progress.measured_rate(recent, now=now, started_at=now - dt.timedelta(seconds=60))

    # Then they still count: the rate stays about 50/s instead of falling to the age's
    assert rate.sends == 199 and rate.per_s == pytest.approx(50 * 199 / 188, rel=0.01)


def test_a_slow_campaign_is_measured_over_at_most_five_minutes():
    # Given a campaign of 10 a minute that has sent for an hour
    now = T0
    recent = sends(now, 600, 10 / 60)[:progress.ENOUGH_SENDS]

    # When the rate is measured
    rate = progress.measured_rate(recent, now=now, started_at=now - dt.timedelta(hours=1))

    # Then the window is 5 minutes and the rate 10/min
    assert rate.window_s == progress.MAX_WINDOW_S
    assert rate.per_minute == pytest.approx(10.0, rel=0.05)


def test_a_campaign_that_stopped_sending_sees_its_rate_fall():
    # Given 300 sends at 50/s that ended 60 s ago
    now = T0
    recent = sends(now - dt.timedelta(seconds=60), 300, 50.0)

    # When the rate is measured
    rate = progress.measured_rate(recent, now=now, started_at=now - dt.timedelta(seconds=70))

    # Then the window ends now, and the rate is no longer the burst's 50/s
    assert rate.per_s < 4.0


def test_no_rate_in_the_first_second():
    assert progress.measured_rate([T0], now=T0, started_at=T0 - dt.timedelta(milliseconds=500)) is None


# ----------------------------------------------------------------------------- the ETA
def test_the_eta_counts_the_open_rows_at_the_rate_and_the_holds_from_their_end():
    # Given 100 rows that may go now at 10/s, and 50 held for another 60 s
    # When the ETA is computed
    eta = progress.eta_s(100, rate_per_s=10.0, holds=[(60.0, 50)])

    # Then the first 100 take 10 s, the held 50 start at 60 s and take 5 s
    assert eta == 65.0
    # and a hold that ends before the line is through joins its end
    assert progress.eta_s(100, rate_per_s=10.0, holds=[(5.0, 50)]) == 15.0
    assert progress.eta_s(0, rate_per_s=None) == 0.0
    assert progress.eta_s(10, rate_per_s=None) is None


def test_the_eta_rate_is_never_above_the_limit_and_is_the_limits_before_any_measure():
    # Given a measured burst of 80/s under a limit of 50/s, and no measure at all
    burst = progress.Rate(per_s=80.0, window_s=4.0, sends=320)
    limit = progress.limit_rate_per_s([(50, 1.0), (3000, 60.0)])

    # Then the ETA's rate is the limit in both cases
    assert limit == 50.0
    assert progress.rate_for_eta(burst, limit) == 50.0
    assert progress.rate_for_eta(None, limit) == 50.0
    # and the slower of the campaign's and the global limit wins, in messages of 2 segments
    assert progress.limit_rate_per_s([(10, 60.0), (50, 1.0)], segments_per_message=2.0) == pytest.approx(10 / 60 / 2)


# ----------------------------------------------------------------------------- the report
def settings(**overrides) -> Settings:
    return Settings(**{"sms_rate_limit": "50/second", "quiet_hours": "21:00-08:00", **overrides})


def test_a_campaign_held_by_quiet_hours_says_how_many_until_when_and_when_it_ends(db):
    # Given a campaign of 12 New York numbers fanned out at 03:00 in New York
    make_customers(12)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base=BASE)
    night = dt.datetime(2026, 1, 15, 8, 0, 0)  # 03:00 EST

    # When the operator asks for its status
    report = campaigns.status_report(campaign_id, now=night, settings=settings())

    # Then all 12 are held until 08:00 New York time (13:00 UTC), and the ETA counts the wait
    assert report["held"] == 12 and report["pending"] == 12
    assert report["held_by_zone"] == [{"zone": "America/New_York", "rows": 12, "until_utc": "2026-01-15T13:00:00Z",
                                       "until_local": "08:00", "seconds_left": 5 * 3600.0}]
    assert report["eta_seconds"] == 5 * 3600 + round(12 / 50)
    shown = format_status(report)
    assert "12 held by quiet hours until 08:00 America/New_York" in shown
    assert "ETA 5:00:00 (about 2026-01-15 13:00 UTC)" in shown
    # and by day nothing is held
    assert campaigns.status_report(campaign_id, now=T0, settings=settings())["held"] == 0


def test_the_rate_and_eta_of_a_running_campaign_come_from_its_rows(db):
    # Given 400 customers, 250 of them sent at 50 a second until now, at a limit of 50/s
    make_customers(400)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base=BASE)
    Campaign.update(started_at=T0 - dt.timedelta(seconds=6)).where(Campaign.id == campaign_id).execute()
    ids = [m.id for m in Message.select(Message.id).where(Message.campaign == campaign_id).order_by(Message.id).limit(250)]
    for i, message_id in enumerate(ids):
        Message.update(status=MessageStatus.SENT, sent_at=T0 - dt.timedelta(seconds=(249 - i) / 50)).where(
            Message.id == message_id).execute()

    # When the status is read
    report = campaigns.status_report(campaign_id, now=T0, settings=settings(quiet_hours="off"))

    # Then the rate is about 50/s (3,000/min) over the last 200 sends, and the ETA of the 150
    # left about 3 s
    assert report["rate_per_minute"] == pytest.approx(3000, rel=0.03)
    assert report["rate_window_s"] == pytest.approx(4.0, abs=0.1)
    assert (report["pending"], report["limit_per_minute"], report["eta_seconds"]) == (150, 3000.0, 3)
    assert "rate 50.0/s (last 4 s)  limit 50.0/s  ETA 0:00:03" in format_status(report)


def test_a_scheduled_campaign_shows_when_it_starts_in_utc_and_its_zone(db):
    # Given a campaign scheduled for 14:00 UTC, in Paris
    campaign_id = make_campaign()
    Campaign.update(status=CampaignStatus.SCHEDULED, send_at=dt.datetime(2026, 12, 1, 14, 0), time_zone="Europe/Paris").where(
        Campaign.id == campaign_id).execute()

    # When its status is read
    report = campaigns.status_report(campaign_id, now=T0, settings=settings())

    # Then it says when it starts, in UTC and in Paris
    assert report["starts"] == {"utc": "2026-12-01T14:00:00Z", "local": "2026-12-01 15:00", "zone": "Europe/Paris"}
    assert "starts 2026-12-01 14:00 UTC (2026-12-01 15:00 Europe/Paris)" in format_status(report)


def test_a_paused_campaign_says_why_and_gives_no_eta(db):
    # Given a sending campaign paused by an error storm
    make_customers(3)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base=BASE)
    assert campaigns.pause_campaign(campaign_id, "error storm: 40 of the last 50 attempts failed")

    # When its status is read
    report = campaigns.status_report(campaign_id, now=T0, settings=settings())

    # Then the reason is there and no ETA is promised
    shown = format_status(report)
    assert report["eta_seconds"] is None
    assert "paused (error storm: 40 of the last 50 attempts failed)" in shown
    assert "ETA - (paused: resume to continue)" in shown


def test_delivered_undelivered_failed_by_reason_and_unique_clicks(db):
    # Given a campaign whose rows were sent, delivered, undelivered, failed and clicked
    customers = make_customers(6)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base=BASE)
    rows = list(Message.select().where(Message.campaign == campaign_id).order_by(Message.id))
    for row, (status, code, delivery, carrier) in zip(rows, [
        (MessageStatus.SENT, None, "delivered", None), (MessageStatus.SENT, None, "delivered", None),
        (MessageStatus.SENT, None, "undelivered", "30003"), (MessageStatus.FAILED, "21211", None, None),
        (MessageStatus.FAILED, "retries_exhausted", None, None), (MessageStatus.FAILED, "21211", None, None),
    ]):
        Message.update(status=status, error_code=code, delivery_status=delivery, delivery_error_code=carrier,
                       sent_at=T0 if status == MessageStatus.SENT else None).where(Message.id == row.id).execute()
    for customer_id in (customers[0], customers[0], customers[1]):
        Click.create(customer=customer_id, campaign=campaign_id, code="X")
    recompute_analytics(campaign_id)

    # When its status is read
    report = campaigns.status_report(campaign_id, now=T0, settings=settings())

    # Then every figure is there
    assert (report["delivered"], report["undelivered"], report["unique_clicks"]) == (2, 1, 2)
    assert report["failed_by_reason"] == {"21211": 2, "retries_exhausted": 1}
    assert report["carrier_errors"] == {"30003": 1}
    shown = format_status(report)
    assert "failed: 21211 2, retries_exhausted 1" in shown and "unique clicks 2" in shown
    assert "delivered 2  undelivered 1  failed 3" in shown
    json.dumps(report)  # --json prints it as it is


def test_many_zones_are_summed_up_after_the_first_ones():
    # Given the entry the report sums the zones past MAX_ZONES_SHOWN up in
    report = {"campaign_id": 1, "name": "n", "status": "sending", "status_reason": None, "progress": "[] 0/0",
              "sent": 0, "delivered": 0, "failed": 0, "skipped": 0, "cancelled": 0, "pending": 5, "rate_per_minute": 0.0,
              "eta_seconds": None, "held_by_zone": [{"zone": "3 other zones", "rows": 5, "until_utc": "2026-01-15T14:00:00Z",
                                                     "until_local": None, "seconds_left": 1.0}]}
    # Then the summed-up entry reads with its UTC end
    assert "5 held by quiet hours until 14:00 UTC (3 other zones)" in format_status(report)


# ------------------------------------------------------------------------ the watch screen
def test_on_a_terminal_each_report_is_redrawn_in_place_in_one_write():
    # Given a terminal
    stream = Recording()
    screen = Screen(stream, terminal=True)

    # When two reports are shown, then the watch ends
    screen.show("line one\nline two")
    screen.show("line one\nline 2")
    screen.close()

    # Then each frame is one write that starts at the cursor's home, clears each line's end
    # and the rest of the screen, and the cursor comes back at the end
    frame1, frame2, end = stream.writes
    assert frame2 == HOME + "line one" + CLEAR_LINE + "\n" + "line 2" + CLEAR_LINE + "\n" + CLEAR_BELOW
    assert frame1.endswith(CLEAR_BELOW) and HOME in frame1
    assert end == SHOW_CURSOR


def test_elsewhere_each_report_is_printed_after_the_last_without_escape_codes():
    stream = Recording()
    screen = Screen(stream, terminal=False)
    screen.show("a")
    screen.show("b")
    screen.close()
    assert stream.getvalue() == "a\n\nb\n" and "\x1b" not in stream.getvalue()


def test_log_records_during_a_watch_are_held_and_printed_after_it():
    # Given a watch holding the logs
    after = io.StringIO()
    logger = logging.getLogger("dbclock")
    saved = logging.getLogger().handlers[:]
    with cli_logging.held(stream=after) as handler:
        # When something logs a warning while the screen is drawn
        logger.warning("could not read the database's clock")
        # Then nothing is printed yet: the record is held
        assert after.getvalue() == "" and handler.count == 1
    # and it is printed once the watch is over; the handlers are as they were
    assert "1 log record(s) held during the watch" in after.getvalue()
    assert "could not read the database's clock" in after.getvalue()
    assert logging.getLogger().handlers == saved
