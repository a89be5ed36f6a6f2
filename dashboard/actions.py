"""The dashboard's actions (POST, each behind the CSRF check): create a campaign, test
send, send, schedule, pause, resume, cancel, retry. Each calls the function the CLI's
command calls (``campaign_drafts.create_draft``, ``actors.campaign_ops.send_test_message``,
``campaigns.check_action`` / ``check_send_at`` with ``actors.start``, ``actors.pause``,
``actors.resume``, ``actors.cancel``, ``actors.campaign_ops.retry``), so both give the same
results and the same refusals; what it did is recorded as an event of the campaign with the
operator's name (``events.record_event``, level ``info``), and shown once on the next page.
"""

from __future__ import annotations

import datetime as dt
import logging

import redis
from flask import Blueprint, flash, redirect, request, url_for

import actors
import campaigns
import senders
from actors.campaign_ops import retry, send_test_message
from campaign_drafts import create_draft
from dashboard.auth import operator
from errors import CampaignError
from events import record_event
from sender_check import check_sender
from settings import Settings
from sms import mask_phone

logger = logging.getLogger(__name__)

#: The form's names for a campaign's fields, as refusals name them.
FORM_LABELS = {"name": "name", "template": "template", "rate_limit": "rate limit", "time_zone": "time zone",
               "language": "language"}


def parse_start(text: str) -> dt.datetime:
    """An ISO date and time (naive = UTC) as naive UTC; ``campaigns.Refused`` if it is not one."""
    try:
        parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise campaigns.Refused(f"{text.strip()[:40]!r} is not a date and time such as 2026-12-01T09:00-05:00",
                                code="invalid_time") from None
    return parsed if parsed.tzinfo is None else parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _tags(field: str) -> list[str]:
    return [tag.strip() for tag in (request.form.get(field) or "").split(",") if tag.strip()]


def install(bp: Blueprint, settings: Settings) -> None:

    def done(campaign_id: int, action: str, outcome: str):
        record_event(campaign_id, f"operator_{action}", f"{operator()}: {outcome}", level="info")
        flash(outcome, "ok")
        return redirect(url_for("dashboard.campaign", campaign_id=campaign_id))

    def refused(campaign_id: int | None, problem: str):
        flash(problem, "error")
        if campaign_id is None:
            return redirect(url_for("dashboard.new_campaign"))
        return redirect(url_for("dashboard.campaign", campaign_id=campaign_id))

    def act(campaign_id: int | None, run):
        try:
            return run()
        except CampaignError as exc:  # Refused, PermanentError, TransientError: one line saying why
            return refused(campaign_id, exc.reason)
        except redis.RedisError:
            logger.exception("dashboard action on campaign %s: Redis", campaign_id)
            return refused(campaign_id, "cannot reach REDIS_URL: nothing was changed; try again")

    @bp.post("/campaigns")
    def create():
        def run():
            rate_limit = (request.form.get("rate_limit") or "").strip() or None
            time_zone = (request.form.get("time_zone") or "").strip() or None
            campaign_id = create_draft(
                settings=settings, name=request.form.get("name") or "", template=request.form.get("template") or "",
                rate_limit=rate_limit, time_zone=time_zone, all_tags=_tags("tags"), none_tags=_tags("exclude_tags"),
                on_overflow=(request.form.get("on_overflow") or "fail").strip(),
                smart_encoding=request.form.get("smart_encoding") == "on", language=request.form.get("language") or "en",
                labels=FORM_LABELS)
            return done(campaign_id, "create", f"campaign {campaign_id} created as a draft")
        return act(None, run)

    @bp.post("/campaigns/<int:campaign_id>/test")
    def test_send(campaign_id: int):
        def run():
            campaigns.check_action(campaign_id, "test")
            sent = send_test_message(campaign_id, to=request.form.get("to") or "")
            return done(campaign_id, "test", f"test message sent to {mask_phone(sent.to_phone)} "
                                             f"(SID {sent.twilio_sid}); not counted in the campaign")
        return act(campaign_id, run)

    def start(campaign_id: int, at: dt.datetime | None):
        draft = campaigns.check_action(campaign_id, "send")
        when = None if at is None else campaigns.check_send_at(at)
        checked = check_sender(settings, senders.of(draft)) if settings.sms_backend == "twilio" else None
        if checked is not None and checked.known is False:
            raise campaigns.Refused(f"campaign {campaign_id} not started: {checked.line()}")
        when = actors.start(campaign_id, when)
        if when is None:
            return done(campaign_id, "send", f"campaign {campaign_id} started")
        return done(campaign_id, "schedule", f"campaign {campaign_id} scheduled for {when:%Y-%m-%d %H:%M} UTC")

    @bp.post("/campaigns/<int:campaign_id>/send")
    def send(campaign_id: int):
        return act(campaign_id, lambda: start(campaign_id, None))

    @bp.post("/campaigns/<int:campaign_id>/schedule")
    def schedule(campaign_id: int):
        return act(campaign_id, lambda: start(campaign_id, parse_start(request.form.get("at") or "")))

    @bp.post("/campaigns/<int:campaign_id>/pause")
    def pause(campaign_id: int):
        def run():
            campaigns.check_action(campaign_id, "pause")
            reason = (request.form.get("reason") or "").strip()[:200] or f"paused by {operator()}"
            if not actors.pause(campaign_id, reason):
                campaigns.check_action(campaign_id, "pause")
                raise campaigns.Refused(f"campaign {campaign_id} was not paused: try again")
            return done(campaign_id, "pause", f"campaign {campaign_id} paused")
        return act(campaign_id, run)

    @bp.post("/campaigns/<int:campaign_id>/resume")
    def resume(campaign_id: int):
        def run():
            campaigns.check_action(campaign_id, "resume")
            if not actors.resume(campaign_id):
                campaigns.check_action(campaign_id, "resume")
                raise campaigns.Refused(f"campaign {campaign_id} was not resumed: try again")
            return done(campaign_id, "resume", f"campaign {campaign_id} resumed")
        return act(campaign_id, run)

    @bp.post("/campaigns/<int:campaign_id>/cancel")
    def cancel(campaign_id: int):
        def run():
            campaigns.check_action(campaign_id, "cancel")
            cancelled = actors.cancel(campaign_id, f"cancelled by {operator()}")
            if cancelled is None:
                campaigns.check_action(campaign_id, "cancel")
                raise campaigns.Refused(f"campaign {campaign_id} was not cancelled: try again")
            return done(campaign_id, "cancel", f"campaign {campaign_id} cancelled; {cancelled} unsent customers "
                                               "recorded as cancelled")
        return act(campaign_id, run)

    @bp.post("/campaigns/<int:campaign_id>/retry")
    def retry_failed(campaign_id: int):
        def run():
            campaigns.check_action(campaign_id, "retry")
            result = retry(campaign_id, undelivered=request.form.get("undelivered") == "on")
            if result.token is None:
                return done(campaign_id, "retry", f"campaign {campaign_id}: nothing to retry")
            return done(campaign_id, "retry", f"campaign {campaign_id}: retrying {result.total} customers")
        return act(campaign_id, run)
