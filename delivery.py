"""Twilio's delivery reports (status callbacks) applied to message rows.

A message's delivery status only moves forward (``DELIVERY_RANK``), whatever order the
callbacks arrive in. A report can overtake its own SID: Twilio may call back before the
worker's record of the SID is committed (it is written behind), or while a send whose answer
was lost waits to be reconciled. Such a report is kept (``EarlyStatus``) and applied by the
next metrics update once the SID is known, instead of being dropped.
"""

from __future__ import annotations

import datetime as dt
import logging

from peewee import IntegrityError

import landlines
from events import record_event
from models import EarlyStatus, Message, TrialSend, utcnow

logger = logging.getLogger(__name__)

#: Delivery statuses Twilio reports for a message, by rank: a status only ever moves to a
#: higher rank, so a late ``sent`` after ``delivered`` (or any replay) changes nothing.
DELIVERY_RANK = {"queued": 0, "sending": 1, "sent": 2, "delivered": 3, "undelivered": 3, "failed": 3}

#: How long a report waits for its SID before it is given up (and recorded as an event).
EARLY_STATUS_MAX_AGE_S = 86_400


def record_delivery_status(
    message_sid: str, status: str, error_code: str | None, *, received_at: dt.datetime | None = None,
) -> tuple[bool, int | None]:
    """Move the message with this SID forward to ``status``; (changed, campaign id).

    The forward-only rule is a single conditional UPDATE, so two callbacks racing each
    other cannot move a message backwards. Unknown SIDs give (False, None).
    """
    row = Message.select(Message.id, Message.campaign).where(Message.twilio_sid == message_sid).first()
    if row is None:
        return False, None
    rank = DELIVERY_RANK[status]
    lower = [name for name, r in DELIVERY_RANK.items() if r < rank]
    changes = {
        Message.delivery_status: status,
        Message.delivery_error_code: (error_code or None),
        Message.updated_at: utcnow(),
    }
    if status == "delivered":
        changes[Message.delivered_at] = received_at or utcnow()
    forward = Message.delivery_status.is_null()
    if lower:
        forward = forward | Message.delivery_status.in_(lower)
    changed = Message.update(changes).where(Message.id == row.id, forward).execute()
    return bool(changed), row.campaign_id


def report_delivery(message_sid: str, status: str, error_code: str | None) -> tuple[bool, int | None]:
    """``record_delivery_status``, keeping the report if its SID is not recorded yet.

    Looked up again once kept: a SID recorded (and a metrics update run) in between would
    otherwise leave the report waiting for an update that does not come."""
    changed, campaign_id = record_delivery_status(message_sid, status, error_code)
    if campaign_id is not None:
        landlines.mark_from_report(message_sid, error_code)
        return changed, campaign_id
    if TrialSend.update(delivery_status=status, delivery_error_code=error_code or None).where(
            TrialSend.twilio_sid == message_sid).execute():
        return False, None  # a test send's report: kept on its row, counted nowhere
    try:
        EarlyStatus.create(sid=message_sid, status=status, error_code=error_code or None)
    except IntegrityError:
        pass  # a replay of a report already kept
    changed, campaign_id = record_delivery_status(message_sid, status, error_code)
    if campaign_id is not None:
        landlines.mark_from_report(message_sid, error_code)
        EarlyStatus.delete().where(EarlyStatus.sid == message_sid, EarlyStatus.status == status).execute()
    return changed, campaign_id


def apply_early_statuses(*, now: dt.datetime | None = None, max_age_s: float = EARLY_STATUS_MAX_AGE_S,
                         limit: int = 1000, signals=None) -> set[int]:
    """Apply the kept reports whose SID is now recorded, in rank order, and drop them; drop
    the ones older than ``max_age_s`` with one event. Returns the campaigns that changed.
    A report that changes its message and carries one of Twilio's signals is acted on by
    ``signals`` (``SignalActions.on_delivery_report``), as the webhook acts on one that
    came in order; a failure to act is logged and does not keep the report.

    Only reports whose SID a message has are read (a join on the SID index), so reports for
    SIDs that never come cost nothing until they expire."""
    now = now or utcnow()
    known = list(
        EarlyStatus.select(EarlyStatus)
        .join(Message, on=(Message.twilio_sid == EarlyStatus.sid))
        .order_by(EarlyStatus.received_at)
        .limit(limit)
    )
    known.sort(key=lambda report: DELIVERY_RANK.get(report.status, 0))
    changed_campaigns: set[int] = set()
    for report in known:
        changed, campaign_id = record_delivery_status(report.sid, report.status, report.error_code,
                                                      received_at=report.received_at)
        landlines.mark_from_report(report.sid, report.error_code)
        if changed and campaign_id is not None:
            changed_campaigns.add(campaign_id)
            if signals is not None and report.error_code:
                try:
                    signals.on_delivery_report(campaign_id, report.error_code)
                except Exception:  # the report is applied; the next report of its kind acts
                    logger.exception("campaign %s: could not act on Twilio error %s", campaign_id,
                                     report.error_code[:20])
    if known:
        EarlyStatus.delete().where(EarlyStatus.id.in_([report.id for report in known])).execute()
    cutoff = now - dt.timedelta(seconds=max_age_s)
    expired = [report.sid for report in EarlyStatus.select(EarlyStatus.sid).where(EarlyStatus.received_at < cutoff).limit(limit)]
    if expired:
        EarlyStatus.delete().where(EarlyStatus.sid.in_(expired)).execute()
        record_event(None, "unknown_sid_status",
                     f"{len(expired)} status reports for SIDs no message has, dropped after a day (e.g. {expired[0]})",
                     level="warning")
    return changed_campaigns
