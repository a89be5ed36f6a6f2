"""What the campaign page shows, as plain data: the status report built from the kept
aggregates (``campaign_status.status_report`` with ``kept_counts``: the figures of
``campaign status``, as of the analytics' last recompute, without reading the campaign's
message rows), the funnel, every failure, skip and carrier code with its description, the
sends per minute (``sends_series``), Twilio's holds on its sends, and the campaign's recent
events (the audit trail)."""

from __future__ import annotations

from typing import Callable

from campaign_status import kept_counts
from campaigns import status_report
from dashboard import charts
from dashboard.reasons import described
from models import Campaign, CampaignStatus, Event
import sends_series
import senders
from settings import Settings

#: The events the page lists, newest first.
EVENTS_SHOWN = 20

#: The actions each state allows (``campaigns.check_action`` decides; this only hides buttons).
ACTIONS = {
    CampaignStatus.DRAFT: ("test", "send", "schedule", "cancel"),
    CampaignStatus.SCHEDULED: ("test", "send", "cancel"),
    CampaignStatus.SENDING: ("test", "pause", "cancel", "retry"),
    CampaignStatus.PAUSED: ("test", "resume", "cancel"),
    CampaignStatus.COMPLETED: ("test", "retry"),
}


def campaign_page(campaign_id: int, *, settings: Settings, held_ms: Callable[[list[str]], int] | None = None) -> dict:
    """Everything the campaign page renders (Twilio's holds read through ``held_ms``, as
    ``campaign status`` reads them)."""
    campaign = Campaign.get_by_id(campaign_id)
    report = status_report(campaign_id, settings=settings, counts=kept_counts, held_ms=held_ms)
    eligible = report["targeted"] - report["skipped"]
    steps = [("targeted", report["targeted"]), ("eligible", eligible), ("sent", report["sent"]),
             ("delivered", report["delivered"]), ("clicked", report["unique_clicks"])]
    done = report["targeted"] - report["pending"]
    events = list(Event.select().where(Event.campaign_id == campaign_id).order_by(Event.id.desc()).limit(EVENTS_SHOWN))
    return {
        "campaign": campaign, "report": report, "eligible": eligible, "done": done,
        "funnel": charts.funnel(steps), "steps": steps,
        "failed": described(report["failed_by_reason"]), "skipped": described(report["skipped_by_reason"]),
        "carrier": described(report["carrier_errors"]),
        "chart": charts.sends_per_minute(sends_series.series(campaign_id)),
        "events": events, "actions": ACTIONS.get(campaign.status, ()),
        "sender": senders.of(campaign) or settings.sender,
        "live": campaign.status in (CampaignStatus.SENDING, CampaignStatus.SCHEDULED),
    }
