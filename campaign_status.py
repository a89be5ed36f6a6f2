"""The live status of a campaign, for an operator (``campaigns.status_report``, ``python -m
cli campaign status``): counts straight from the rows, the send rate over a window that fits
the campaign (``progress.py``), the quiet-hours holds by zone and when each ends, an ETA
from those and the campaign's effective limit, when a scheduled campaign starts, why a
paused one is paused, the holds of Twilio's signals on its sends (what, why, until when),
and the delivery figures and clicks of its analytics.

Reads only; every figure is one of a few indexed queries (the rate reads at most
``progress.ENOUGH_SENDS`` entries of ``message_sent_by_campaign``), and the holds one PTTL
of the rate limiter's stop keys per hold rule (``twilio_signals.holds_of``), per report.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import dataclass
from typing import Callable

import redis
from limits import parse as parse_limit
from peewee import fn

import progress
import senders
import twilio_signals
from audience import Audience
from errors import PermanentError
from models import Campaign, CampaignAnalytics, CampaignStatus, Message, MessageStatus, utcnow
from quiet import QuietHours, zone
from rendering import campaign_rate_limit
from settings import Settings, get_settings

#: Zones listed one by one in the report; the others are summed up in one more entry.
MAX_ZONES_SHOWN = 8
PROGRESS_WIDTH = 30
#: A hold ending sooner than this is shown to the second (a 429's), a longer one with its date.
HOLD_SECONDS_SHOWN_S = 3600

logger = logging.getLogger(__name__)


def status_report(
    campaign_id: int, *, now: dt.datetime | None = None, settings: Settings | None = None,
    rate_window_s: float = progress.MAX_WINDOW_S, counts: Callable[[int], "Counts"] | None = None,
    held_ms: Callable[[list[str]], int] | None = None,
) -> dict:
    """The campaign's status as plain data (JSON-ready; times as ISO strings in UTC).

    Parameters:
        campaign_id: the campaign.
        now: naive UTC (default: the database's clock, ``models.utcnow``).
        settings: the global limit (``SMS_RATE_LIMIT``), ``QUIET_HOURS`` and
            ``DEFAULT_TIME_ZONE`` are read from it (default: the environment's).
        rate_window_s: the longest window the rate is measured over.
        counts: where the counts come from: ``row_counts`` (the default: the rows, exact
            now) or ``kept_counts`` (the analytics' kept aggregates, as of their last
            recompute: what the dashboard reads, whatever the campaign's size).
        held_ms: ``(groups) -> ms`` left of the rate limiter's holds (``actors.stops.held_ms``);
            None: Twilio's holds are not read (none shown).
    """
    now = now or utcnow()
    settings = settings or get_settings()
    campaign = Campaign.get_by_id(campaign_id)
    kept = counts(campaign_id) if counts is not None else row_counts(campaign_id)
    counts, by_reason, open_segments = kept.by_status, kept.by_reason, kept.open_segments
    total = sum(counts.values())
    open_rows = counts[MessageStatus.PENDING] + counts[MessageStatus.SENDING]
    done = total - open_rows

    rate = progress.measured_rate(_recent_sent_at(campaign_id, now, rate_window_s), now=now,
                                  started_at=campaign.started_at, max_window_s=rate_window_s)
    limit_per_s = progress.limit_rate_per_s(_limits(campaign, settings),
                                            segments_per_message=open_segments / open_rows if open_rows else 1.0)
    holds = held_by_quiet_hours(campaign, now=now, quiet_hours=_quiet_hours(settings))
    held = sum(hold["rows"] for hold in holds)
    twilio_holds = held_by_twilio(campaign, now=now, zone_name=_zone_name(campaign, settings), held_ms=held_ms)
    eta_rate = progress.rate_for_eta(rate, limit_per_s)
    if campaign.status == CampaignStatus.SENDING:
        eta = progress.eta_s(open_rows - held, rate_per_s=eta_rate,
                             holds=[(hold["seconds_left"], hold["rows"]) for hold in holds],
                             not_before_s=max((hold["seconds_left"] for hold in twilio_holds or ()), default=0.0))
    else:
        eta = 0.0 if open_rows == 0 else None  # paused, scheduled, draft: nothing moves
    filled = int(PROGRESS_WIDTH * done / total) if total else 0
    analytics = CampaignAnalytics.get_or_none(CampaignAnalytics.campaign == campaign_id)
    return {
        "campaign_id": campaign_id, "name": campaign.name, "status": campaign.status,
        "status_reason": campaign.status_reason,
        "starts": _start(campaign, settings) if campaign.status == CampaignStatus.SCHEDULED else None,
        "started_at": _iso(campaign.started_at), "completed_at": _iso(campaign.completed_at),
        "targeted": total, "sent": counts[MessageStatus.SENT], "failed": counts[MessageStatus.FAILED],
        "skipped": counts[MessageStatus.SKIPPED], "cancelled": counts[MessageStatus.CANCELLED],
        "pending": open_rows, "held": held, "held_by_zone": holds, "twilio_holds": twilio_holds,
        "skipped_by_reason": dict(sorted(by_reason[MessageStatus.SKIPPED].items())),
        "failed_by_reason": dict(sorted(by_reason[MessageStatus.FAILED].items())),
        "audience": Audience.of(campaign).describe(),
        "delivered": analytics.delivered if analytics else 0,
        "undelivered": analytics.undelivered if analytics else 0,
        "carrier_errors": json.loads(analytics.carrier_errors) if analytics else {},
        "unique_clicks": analytics.unique_clicks if analytics else 0,
        "analytics_at": _iso(analytics.updated_at) if analytics else None,
        "rate_per_minute": round(rate.per_minute, 2) if rate else 0.0,
        "rate_window_s": round(rate.window_s, 1) if rate else 0.0,
        "limit_per_minute": None if limit_per_s is None else round(limit_per_s * 60, 2),
        "eta_seconds": None if eta is None else int(round(eta)),
        "progress": f"[{'#' * filled}{'.' * (PROGRESS_WIDTH - filled)}] {done}/{total}",
        "now": _iso(now),
    }


@dataclass
class Counts:
    """A campaign's messages by status, the skipped and failed ones by reason, and the
    segments of its open rows (for the ETA's segments per message)."""

    by_status: dict[str, int]
    by_reason: dict[str, dict[str, int]]
    open_segments: int


def row_counts(campaign_id: int) -> Counts:
    """The counts from the message rows (one grouped query over the campaign's rows)."""
    counts = {status: 0 for status in MessageStatus.ALL}
    by_reason: dict[str, dict[str, int]] = {MessageStatus.SKIPPED: {}, MessageStatus.FAILED: {}}
    open_segments = 0
    grouped = (
        Message.select(Message.status, Message.error_code, fn.COUNT(Message.id), fn.SUM(Message.segments))
        .where(Message.campaign == campaign_id).group_by(Message.status, Message.error_code).tuples()
    )
    for status, code, n, segments in grouped:
        counts[status] = counts.get(status, 0) + n
        if status in by_reason:
            reasons = by_reason[status]
            reasons[code or "unknown"] = reasons.get(code or "unknown", 0) + n
        elif status in MessageStatus.OPEN:
            open_segments += int(segments or n)
    return Counts(counts, by_reason, open_segments)


#: Open rows whose segments ``kept_counts`` averages (read from the open rows' index).
SEGMENT_SAMPLE = 500


def kept_counts(campaign_id: int) -> Counts:
    """The counts as the campaign's analytics last recorded them (``CampaignAnalytics``,
    recomputed by the workers about once per ``METRICS_DELAY_MS``): one row, whatever the
    campaign's size. Open rows are all counted ``pending`` (the analytics do not tell
    ``sending`` apart); their segments are estimated from up to ``SEGMENT_SAMPLE`` of them."""
    row = CampaignAnalytics.get_or_none(CampaignAnalytics.campaign == campaign_id)
    counts = {status: 0 for status in MessageStatus.ALL}
    if row is None:
        return Counts(counts, {MessageStatus.SKIPPED: {}, MessageStatus.FAILED: {}}, 0)
    counts.update({MessageStatus.PENDING: row.pending, MessageStatus.SENT: row.sent, MessageStatus.FAILED: row.failed,
                   MessageStatus.SKIPPED: row.skipped, MessageStatus.CANCELLED: row.cancelled})
    open_segments = 0
    if row.pending:
        sample = [segments or 1 for (segments,) in Message.select(Message.segments).where(
            Message.campaign == campaign_id, Message.status.in_(list(MessageStatus.OPEN))).limit(SEGMENT_SAMPLE).tuples()]
        open_segments = round(row.pending * sum(sample) / len(sample)) if sample else row.pending
    return Counts(counts, {MessageStatus.SKIPPED: json.loads(row.skipped_by_reason),
                           MessageStatus.FAILED: json.loads(row.failed_by_reason)}, open_segments)


def held_by_quiet_hours(campaign: Campaign, *, now: dt.datetime, quiet_hours: QuietHours | None) -> list[dict]:
    """The campaign's pending rows whose zone is inside quiet hours at ``now``, by zone,
    soonest end first: ``{"zone", "rows", "until_utc", "until_local", "seconds_left"}``
    (rows without a zone are never held, as the dispatcher sees them). Zones past
    ``MAX_ZONES_SHOWN`` are summed up in one entry whose zone is ``"N other zones"`` and
    whose end is the latest of theirs."""
    if quiet_hours is None or campaign.status in CampaignStatus.FINISHED:
        return []
    ends = {}
    for name in campaign.recipient_zones():
        until = quiet_hours.next_allowed_utc(now, zone(name) or zone("UTC"))
        if until is not None:
            ends[name] = until
    if not ends:
        return []
    rows = (
        Message.select(Message.time_zone, fn.COUNT(Message.id))
        .where(Message.campaign == campaign.id, Message.status == MessageStatus.PENDING, Message.time_zone.in_(sorted(ends)))
        .group_by(Message.time_zone).tuples()
    )
    holds = sorted(((ends[name], name, n) for name, n in rows if n), key=lambda hold: (hold[0], hold[1]))
    shown = [_hold(name, n, until, now) for until, name, n in holds[:MAX_ZONES_SHOWN]]
    rest = holds[MAX_ZONES_SHOWN:]
    if rest:
        latest = max(until for until, _, _ in rest)
        shown.append(_hold(f"{len(rest)} other zones", sum(n for _, _, n in rest), latest, now, local=False))
    return shown


def held_by_twilio(campaign: Campaign, *, now: dt.datetime, zone_name: str,
                   held_ms: Callable[[list[str]], int] | None) -> list[dict] | None:
    """The holds of Twilio's signals on the campaign's sends at ``now``, soonest end first:
    ``{"held", "signal", "reason", "until_utc", "until_local", "zone", "seconds_left"}``,
    the end in ``zone_name`` (to the second when under ``HOLD_SECONDS_SHOWN_S``, else with
    its date). [] when none (or ``held_ms`` is None, or the campaign is finished); None when
    Redis does not answer."""
    if held_ms is None or campaign.status in CampaignStatus.FINISHED:
        return []
    sender = senders.of(campaign)
    found = []
    try:
        for group, signal, everyone in twilio_signals.holds_of(sender):
            left_ms = held_ms([group])
            if left_ms > 0:
                found.append((math.ceil(left_ms / 1000), signal, everyone))
    except redis.RedisError as exc:
        logger.warning("campaign %s: Twilio's holds not read: cannot reach REDIS_URL (%s)", campaign.id, type(exc).__name__)
        return None
    local_zone = zone(zone_name) or dt.timezone.utc
    shown = []
    for left_s, signal, everyone in sorted(found, key=lambda hold: (hold[0], hold[1].code)):
        until = now.replace(microsecond=0) + dt.timedelta(seconds=left_s)
        local = until.replace(tzinfo=dt.timezone.utc).astimezone(local_zone)
        whose = "every send" if everyone else f"the sends from {senders.describe(sender) if sender else 'the default sender'}"
        shown.append({"held": whose, "signal": signal.code, "reason": signal.reason, "until_utc": _iso(until),
                      "until_local": local.strftime("%H:%M:%S" if left_s < HOLD_SECONDS_SHOWN_S else "%Y-%m-%d %H:%M"),
                      "zone": zone_name if zone(zone_name) else "UTC", "seconds_left": float(left_s)})
    return shown


def _hold(name: str, rows: int, until: dt.datetime, now: dt.datetime, *, local: bool = True) -> dict:
    until_local = until.replace(tzinfo=dt.timezone.utc).astimezone(zone(name)) if local and zone(name) else None
    return {"zone": name, "rows": rows, "until_utc": _iso(until),
            "until_local": until_local.strftime("%H:%M") if until_local else None,
            "seconds_left": round(max(0.0, (until - now).total_seconds()), 1)}


def _recent_sent_at(campaign_id: int, now: dt.datetime, window_s: float) -> list[dt.datetime]:
    """The ``sent_at`` of the campaign's most recent sends within ``window_s``, newest
    first, at most ``progress.ENOUGH_SENDS`` (read from the index on (campaign, sent_at))."""
    since = now - dt.timedelta(seconds=window_s)
    query = (
        Message.select(Message.sent_at)
        .where(Message.campaign == campaign_id, Message.sent_at.is_null(False), Message.sent_at >= since,
               Message.sent_at <= now)
        .order_by(Message.sent_at.desc()).limit(progress.ENOUGH_SENDS).tuples()
    )
    return [sent_at for (sent_at,) in query]


def _limits(campaign: Campaign, settings: Settings) -> list[tuple[int, float]]:
    """(amount, period_s) of the global limit and the campaign's own, as the worker applies
    them (a campaign limit the fan-out would refuse is left out)."""
    items = [parse_limit(settings.sms_rate_limit)]
    if campaign.rate_limit:
        try:
            items.append(campaign_rate_limit(campaign.rate_limit))
        except PermanentError:
            pass
    return [(item.amount, float(item.get_expiry())) for item in items]


def _quiet_hours(settings: Settings) -> QuietHours | None:
    text = (settings.quiet_hours or "").strip()
    return None if not text or text.lower() == "off" else QuietHours.parse(text)


def _start(campaign: Campaign, settings: Settings) -> dict | None:
    """When a scheduled campaign starts, in UTC and in the campaign's zone (its own, else
    ``DEFAULT_TIME_ZONE``)."""
    if campaign.send_at is None:
        return None
    name = _zone_name(campaign, settings)
    local = campaign.send_at.replace(tzinfo=dt.timezone.utc).astimezone(zone(name) or dt.timezone.utc)
    return {"utc": _iso(campaign.send_at), "local": local.strftime("%Y-%m-%d %H:%M"), "zone": name}


def _zone_name(campaign: Campaign, settings: Settings) -> str:
    """The campaign's own zone, else ``DEFAULT_TIME_ZONE``."""
    return campaign.time_zone if zone(campaign.time_zone) else settings.default_time_zone


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.replace(microsecond=0).isoformat() + "Z"
