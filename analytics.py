"""A campaign's analytics, always recomputed from its message rows (never incremented, so
they cannot drift), its completion, and the error-storm pause."""

from __future__ import annotations

import json

from peewee import fn

import sends_series
from campaigns import pause_campaign
from models import Campaign, CampaignAnalytics, CampaignStatus, Click, Message, MessageStatus, utcnow

def recompute_analytics(campaign_id: int) -> CampaignAnalytics | None:
    """Recompute the campaign's analytics from its message rows (one aggregate query) and
    complete the campaign when the fan-out is done and nothing is left to send."""
    counts: dict[str, int] = {status: 0 for status in MessageStatus.ALL}
    skipped_by_reason: dict[str, int] = {}
    failed_by_reason: dict[str, int] = {}
    segments = 0
    query = (
        Message.select(Message.status, Message.error_code, fn.COUNT(Message.id).alias("n"), fn.SUM(Message.segments).alias("segs"))
        .where(Message.campaign == campaign_id)
        .group_by(Message.status, Message.error_code)
        .tuples()
    )
    for status, code, n, segs in query:
        counts[status] = counts.get(status, 0) + n
        if status == MessageStatus.SKIPPED:
            skipped_by_reason[code or "unknown"] = skipped_by_reason.get(code or "unknown", 0) + n
        elif status == MessageStatus.FAILED:
            failed_by_reason[code or "unknown"] = failed_by_reason.get(code or "unknown", 0) + n
        elif status == MessageStatus.SENT:
            segments += int(segs or 0)
    delivery: dict[str, int] = {}
    carrier_errors: dict[str, int] = {}
    delivery_query = (
        Message.select(Message.delivery_status, Message.delivery_error_code, fn.COUNT(Message.id))
        .where(Message.campaign == campaign_id, Message.delivery_status.is_null(False))
        .group_by(Message.delivery_status, Message.delivery_error_code)
        .tuples()
    )
    for status, code, n in delivery_query:
        delivery[status] = delivery.get(status, 0) + n
        if code:
            carrier_errors[code] = carrier_errors.get(code, 0) + n
    unique_clicks = Click.select(fn.COUNT(fn.DISTINCT(Click.customer))).where(Click.campaign == campaign_id).scalar() or 0
    targeted = sum(counts.values())
    values = {
        "targeted": targeted,
        "eligible": targeted - counts[MessageStatus.SKIPPED],
        "pending": counts[MessageStatus.PENDING] + counts[MessageStatus.SENDING],
        "sent": counts[MessageStatus.SENT],
        "failed": counts[MessageStatus.FAILED],
        "skipped": counts[MessageStatus.SKIPPED],
        "cancelled": counts[MessageStatus.CANCELLED],
        "segments": segments,
        "delivered": delivery.get("delivered", 0),
        "undelivered": delivery.get("undelivered", 0) + delivery.get("failed", 0),
        "unique_clicks": unique_clicks,
        "carrier_errors": json.dumps(carrier_errors, sort_keys=True),
        "skipped_by_reason": json.dumps(skipped_by_reason, sort_keys=True),
        "failed_by_reason": json.dumps(failed_by_reason, sort_keys=True),
        "updated_at": utcnow(),
    }
    campaign = Campaign.get_or_none(Campaign.id == campaign_id)
    if campaign is None:
        return None
    (
        CampaignAnalytics.insert(campaign=campaign_id, **values)
        .on_conflict(conflict_target=[CampaignAnalytics.campaign], update=values)
        .execute()
    )
    sends_series.refresh(campaign_id)  # the dashboard's chart: the minutes since the last refresh
    if campaign.status == CampaignStatus.SENDING and campaign.fanout_done_at is not None and values["pending"] == 0:
        open_rows = Message.select(Message.id).where(Message.campaign == campaign_id, Message.status.in_(MessageStatus.OPEN))
        (
            Campaign.update(status=CampaignStatus.COMPLETED, completed_at=utcnow())
            .where(
                Campaign.id == campaign_id, Campaign.status == CampaignStatus.SENDING,
                Campaign.fanout_done_at.is_null(False), ~fn.EXISTS(open_rows),
            )
            .execute()
        )
    return CampaignAnalytics.get(CampaignAnalytics.campaign == campaign_id)


def check_error_storm(campaign_id: int, *, window: int, min_attempts: int, ratio: float) -> bool:
    """Pause the campaign when most of its recent attempts failed (a bad sender, a broken
    template, a dead list), rather than burning through the rest of the list. Only rows
    that were sent to Twilio count: one failed at the fan-out (too long) made no attempt."""
    recent = [
        status
        for (status,) in Message.select(Message.status)
        .where(Message.campaign == campaign_id, Message.status.in_([MessageStatus.SENT, MessageStatus.FAILED]),
               Message.attempts > 0)
        .order_by(Message.updated_at.desc(), Message.id.desc())
        .limit(window)
        .tuples()
    ]
    failed = recent.count(MessageStatus.FAILED)
    if len(recent) < min_attempts or failed < ratio * len(recent):
        return False
    return pause_campaign(campaign_id, f"error storm: {failed} of the last {len(recent)} attempts failed")


#: Twilio's code for a message filtered by the carrier (``twilio_signals``).
FILTERED = "30007"


def check_filtering_storm(campaign_id: int, *, window: int, min_outcomes: int, ratio: float) -> bool:
    """Pause the campaign on a spike of carrier filtering (30007): at least ``ratio`` of its
    last ``window`` outcomes, once ``min_outcomes`` are in. An outcome is a delivery report,
    or a refusal of the create (a row failed after an attempt); a report or refusal saying
    30007 counts as filtered. Carriers filter on content and sender reputation, so the rest
    of the list would be filtered too, and every filtered message costs the sender more."""
    outcome = Message.delivery_status.is_null(False) | ((Message.status == MessageStatus.FAILED) & (Message.attempts > 0))
    recent = list(
        Message.select(Message.delivery_error_code, Message.error_code)
        .where(Message.campaign == campaign_id, outcome)
        .order_by(Message.updated_at.desc(), Message.id.desc())
        .limit(window)
        .tuples()
    )
    filtered = sum(1 for delivery_code, code in recent if FILTERED in (delivery_code, code))
    if len(recent) < min_outcomes or filtered == 0 or filtered < ratio * len(recent):
        return False
    return pause_campaign(
        campaign_id, f"carrier filtering: {filtered} of the last {len(recent)} outcomes were Twilio 30007 "
                     "(message filtered by the carrier); review the text and the sender's registration, then resume")


def analytics_dict(campaign_id: int) -> dict:
    """The campaign's status and analytics as plain data, for the shell, the CLI and tests."""
    campaign = Campaign.get_by_id(campaign_id)
    row = CampaignAnalytics.get_or_none(CampaignAnalytics.campaign == campaign_id)
    data = {"campaign_id": campaign_id, "name": campaign.name, "status": campaign.status, "status_reason": campaign.status_reason}
    if row is None:
        return data
    data.update(
        targeted=row.targeted, eligible=row.eligible, pending=row.pending, sent=row.sent, failed=row.failed,
        skipped=row.skipped, cancelled=row.cancelled, segments=row.segments, delivered=row.delivered, undelivered=row.undelivered,
        unique_clicks=row.unique_clicks, carrier_errors=json.loads(row.carrier_errors),
        skipped_by_reason=json.loads(row.skipped_by_reason), failed_by_reason=json.loads(row.failed_by_reason),
    )
    return data


def database_counts(campaign_id: int) -> dict[str, int]:
    """Message rows by status, straight from the table: what analytics must equal."""
    query = Message.select(Message.status, fn.COUNT(Message.id)).where(Message.campaign == campaign_id).group_by(Message.status).tuples()
    return dict(query)
