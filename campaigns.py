"""The campaign domain: fan-out, dispatch, sweep, pause/cancel/resume, and analytics, as
plain functions. Sending one message is ``sending.py``.

Actors call these with IDs; nothing here knows about Dramatiq. Every state change of a
``Message`` is a conditional UPDATE (``WHERE status = <expected>``), so a redelivered or
duplicated broker message can never send or count anything twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable

from limits import parse as parse_limit
from peewee import JOIN, IntegrityError, fn

from errors import InvalidPhone, MessageTooLong, PermanentError, TemplateError
from models import (
    Campaign,
    Click,
    CampaignAnalytics,
    CampaignStatus,
    Customer,
    Event,
    Message,
    MessageStatus,
    QRCode,
    database,
    db_datetime,
    utcnow,
)
from links import SAMPLE_LINK_CODE, new_link_code, short_url
from quiet import QuietHours, recipient_zone, zone
from sms import compose, mask_phone, normalize_phone, validate_template

logger = logging.getLogger(__name__)

class SkipReason:
    UNSUBSCRIBED = "unsubscribed"
    MISSING_PHONE = "missing_phone"
    INVALID_PHONE = "invalid_phone"
    NO_QR_CODE = "no_qr_code"


def template_values(customer: Customer, link_code: str | None, short_url_base: str) -> dict[str, str]:
    """The placeholders' values for one customer's message, whose short link has ``link_code``."""
    first, last = customer.first_name or "", customer.last_name or ""
    return {
        "first_name": first,
        "last_name": last,
        "name": f"{first} {last}".strip(),
        "short_url": short_url(short_url_base, link_code) if link_code else "",
    }


def record_event(campaign_id: int | None, code: str, detail: str, level: str = "error") -> None:
    log = logger.error if level == "error" else logger.warning
    log("campaign %s: %s: %s", campaign_id, code, detail)
    Event.create(campaign_id=campaign_id, code=code, detail=detail, level=level)


def check_campaign(campaign: Campaign, short_url_base: str) -> None:
    """Raise TemplateError/MessageTooLong/PermanentError if no customer could ever get
    this campaign."""
    if campaign.rate_limit:
        try:
            item = parse_limit(campaign.rate_limit)
        except ValueError:
            item = None
        if item is None or item.amount < 1:
            raise PermanentError(f"campaign rate limit {campaign.rate_limit!r} is not a limit such as '5/minute'", code="bad_rate_limit")
    validate_template(campaign.template)
    empty = {"first_name": "", "last_name": "", "name": "", "short_url": short_url(short_url_base, SAMPLE_LINK_CODE)}
    try:
        compose(campaign.template, empty)
    except MessageTooLong as exc:
        raise MessageTooLong(f"the template cannot fit in one SMS even with an empty name: {exc.reason}", code=exc.code) from None


def fail_campaign(campaign_id: int, reason: str) -> None:
    (
        Campaign.update(status=CampaignStatus.FAILED, status_reason=reason, completed_at=utcnow())
        .where(Campaign.id == campaign_id, Campaign.status.not_in(CampaignStatus.FINISHED))
        .execute()
    )
    record_event(campaign_id, "campaign_failed", reason)


def pause_campaign(campaign_id: int, reason: str) -> bool:
    changed = (
        Campaign.update(status=CampaignStatus.PAUSED, status_reason=reason)
        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.SENDING)
        .execute()
    )
    if changed:
        record_event(campaign_id, "campaign_paused", reason, level="warning")
    return bool(changed)


@dataclass
class FanOutResult:
    campaign_id: int
    recorded: int = 0  # customers whose row now exists (written now or by an earlier run)
    status: str = ""
    dispatch_token: str | None = None


def eligibility(customer: Customer, qr_code: str | None, default_region: str) -> tuple[str | None, str | None, str | None]:
    """(E.164 phone, skip code, skip reason) for one customer; the code is None if eligible."""
    if not customer.sms_subscribed:
        return None, SkipReason.UNSUBSCRIBED, "customer is not subscribed to SMS"
    try:
        phone = normalize_phone(customer.phone, default_region)
    except InvalidPhone as exc:
        return None, exc.code, exc.reason
    if not qr_code:
        return phone, SkipReason.NO_QR_CODE, "customer has no QR code"
    return phone, None, None


def fan_out(
    campaign_id: int,
    *,
    short_url_base: str,
    default_region: str = "US",
    default_time_zone: str = "America/New_York",
    batch_size: int = 500,
    on_started: Callable[[str], None] = lambda token: None,
) -> FanOutResult:
    """Check the campaign, then record every customer's outcome row.

    ``on_started(token)`` is called once the campaign is sending and before any row is
    written, so that the dispatcher (which enqueues the sends, paced) starts at once.
    Customers stream in keyset-paginated batches, so memory does not grow with the
    campaign, and rows are inserted with ON CONFLICT DO NOTHING, so running this again
    creates nothing twice.
    """
    result = FanOutResult(campaign_id)
    campaign = Campaign.get_or_none(Campaign.id == campaign_id)
    if campaign is None:
        record_event(campaign_id, "campaign_not_found", f"campaign {campaign_id} does not exist")
        result.status = "not_found"
        return result
    if campaign.status in CampaignStatus.FINISHED or campaign.status == CampaignStatus.PAUSED:
        logger.info("campaign %s is %s: nothing to fan out", campaign_id, campaign.status)
        result.status = campaign.status
        return result
    if campaign.status == CampaignStatus.SCHEDULED and campaign.send_at is not None and campaign.send_at > utcnow():
        result.status = CampaignStatus.SCHEDULED
        return result
    try:
        check_campaign(campaign, short_url_base)
    except PermanentError as exc:
        fail_campaign(campaign_id, exc.reason)
        result.status = CampaignStatus.FAILED
        return result

    token = uuid.uuid4().hex
    (
        Campaign.update(
            status=CampaignStatus.SENDING, started_at=fn.COALESCE(Campaign.started_at, utcnow()),
            dispatch_token=token, heartbeat_at=utcnow(),
        )
        .where(Campaign.id == campaign_id, Campaign.status.in_([CampaignStatus.DRAFT, CampaignStatus.SCHEDULED, CampaignStatus.SENDING]))
        .execute()
    )
    result.dispatch_token = token
    on_started(token)
    zones = set(campaign_zones(campaign))
    for batch in _customer_batches(batch_size):
        result.recorded += _record_outcomes(campaign, batch, default_region, short_url_base, default_time_zone, zones)
        Campaign.update(heartbeat_at=utcnow()).where(Campaign.id == campaign_id).execute()
    Campaign.update(fanout_done_at=utcnow()).where(Campaign.id == campaign_id, Campaign.fanout_done_at.is_null()).execute()
    result.status = CampaignStatus.SENDING
    return result


def campaign_zones(campaign: Campaign) -> list[str]:
    """The time zones of the campaign's recipients (as far as the fan-out got)."""
    return json.loads(campaign.zones) if campaign.zones else []


@dataclass
class DispatchResult:
    enqueued: int = 0
    inflight: int = 0
    again: bool = False
    #: Rows were held back because their zone is inside quiet hours until this time (naive
    #: UTC, the earliest such end); None if none was.
    quiet_until: dt.datetime | None = None


def dispatch(
    campaign_id: int,
    token: str,
    *,
    enqueue: Callable[[Campaign, list[int]], None],
    max_inflight: int,
    requeue_after_s: float,
    quiet_hours: QuietHours | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
) -> DispatchResult:
    """Enqueue sends so that at most ``max_inflight`` of the campaign are in the broker.

    Keeping only about a rate-limit window's worth ahead bounds the queues, the delayed
    messages and the workers' memory whatever the campaign's size, and lets a pause take
    effect within that window. A row enqueued longer than ``requeue_after_s`` ago and still
    pending, or left ``sending`` that long, is assumed lost by the broker (a Redis restart,
    a killed worker) and enqueued again: the claim makes a duplicate harmless, and a
    ``sending`` row is looked up at Twilio before any resend. Only the chain holding the
    campaign's current ``token`` runs.

    A row whose recipient's zone is inside ``quiet_hours`` (at ``clock()``) is not enqueued:
    it stays pending, untouched, until its window ends, and is then enqueued at the
    campaign's pace like any other. The chain goes on while any row is open, so a campaign
    waiting for a window is not taken for a stalled one.
    """
    campaign = Campaign.get_or_none(Campaign.id == campaign_id)
    if campaign is None or campaign.dispatch_token != token or campaign.status != CampaignStatus.SENDING:
        return DispatchResult()
    Campaign.update(heartbeat_at=utcnow()).where(Campaign.id == campaign_id).execute()
    stale_before = utcnow() - dt.timedelta(seconds=requeue_after_s)
    queued = Message.select(Message.id).where(
        Message.campaign == campaign_id, Message.status == MessageStatus.PENDING, Message.queued_at.is_null(False)
    )
    stuck_now = (
        (Message.status == MessageStatus.SENDING) & (Message.sending_at < stale_before)
        & (Message.queued_at.is_null() | (Message.queued_at < stale_before))
    )
    stuck = Message.select(Message.id).where(Message.campaign == campaign_id, stuck_now)
    stale_pending = [row.id for row in queued.where(Message.queued_at < stale_before).limit(max_inflight)]
    stale_sending = [row.id for row in stuck.limit(max_inflight)]
    inflight = queued.where(Message.queued_at <= utcnow()).count() - len(stale_pending)
    room = max(0, max_inflight - inflight)
    requeue = stale_pending[:room]
    zones = campaign_zones(campaign)
    fresh, quiet_until = _fresh_rows(campaign_id, room - len(requeue), zones, quiet_hours, clock)
    if quiet_hours is not None and fresh:
        # Rows the fan-out committed after the campaign was read carry zones it had not
        # seen; their zones were committed with them, so they are seen now.
        latest = campaign_zones(Campaign.get_by_id(campaign_id))
        if set(latest) - set(zones):
            fresh, quiet_until = _fresh_rows(campaign_id, room - len(requeue), latest, quiet_hours, clock)
    # Each group is marked only if its rows are still as they were read, so two dispatchers
    # (a restarted chain beside a late one) never enqueue one row twice.
    ids = _mark_queued(stale_sending, stuck_now)
    ids += _mark_queued(requeue, (Message.status == MessageStatus.PENDING) & (Message.queued_at < stale_before))
    ids += _mark_queued(fresh, (Message.status == MessageStatus.PENDING) & Message.queued_at.is_null())
    if ids:
        enqueue(campaign, ids)
    inflight += len(ids)
    open_rows = inflight > 0 or Message.select(Message.id).where(
        Message.campaign == campaign_id, Message.status.in_(MessageStatus.OPEN)).exists()
    return DispatchResult(enqueued=len(ids), inflight=inflight, again=campaign.fanout_done_at is None or open_rows,
                          quiet_until=quiet_until)


def _fresh_rows(campaign_id: int, limit: int, zones: list[str], hours: QuietHours | None,
                clock: Callable[[], dt.datetime]) -> tuple[list[int], dt.datetime | None]:
    """Up to ``limit`` never-enqueued rows whose zone is not inside quiet hours now, and the
    earliest end of the quiet hours that hold the others back (None if none do)."""
    quiet: dict[str, dt.datetime] = {}
    if hours is not None:
        now = clock()
        ends = {name: hours.next_allowed_utc(now, zone(name) or zone("UTC")) for name in zones}
        quiet = {name: end for name, end in ends.items() if end is not None}
    if limit <= 0:
        return [], min(quiet.values(), default=None)
    due = (Message.time_zone.is_null() | Message.time_zone.not_in(sorted(quiet))) if quiet else True
    rows = [
        row.id
        for row in Message.select(Message.id)
        .where(Message.campaign == campaign_id, Message.status == MessageStatus.PENDING, Message.queued_at.is_null(), due)
        .order_by(Message.id)
        .limit(limit)
    ]
    return rows, min(quiet.values(), default=None)


def _mark_queued(ids: list[int], still) -> list[int]:
    """Mark the rows of ``ids`` for which ``still`` holds (a condition on the row itself, so
    that PostgreSQL tests it again on a row another dispatcher just changed) as enqueued
    now; returns those marked."""
    if not ids:
        return []
    marked = (
        Message.update(queued_at=utcnow())
        .where(Message.id.in_(ids), still)
        .returning(Message.id)
        .execute()
    )
    return sorted(row.id for row in marked)


def _customer_batches(batch_size: int) -> Iterable[list[tuple[Customer, str | None]]]:
    last_id = 0
    while True:
        rows = list(
            Customer.select(Customer, QRCode.code)
            .join(QRCode, JOIN.LEFT_OUTER, on=(QRCode.customer == Customer.id))
            .where(Customer.id > last_id)
            .order_by(Customer.id)
            .limit(batch_size)
            .objects()
        )
        if not rows:
            return
        yield [(row, row.code) for row in rows]
        last_id = rows[-1].id


_OUTCOME_COLUMNS = (
    "campaign_id", "customer_id", "status", "to_phone", "body", "encoding", "segments", "error_code", "reason",
    "attempts", "deferrals", "created_at", "updated_at", "link_code", "time_zone",
)
#: A batch whose fresh link codes collide with existing ones is rendered again this often.
_LINK_CODE_TRIES = 5


def _record_outcomes(campaign: Campaign, batch: list[tuple[Customer, str | None]], default_region: str,
                     short_url_base: str, default_time_zone: str, zones: set[str]) -> int:
    """Insert the batch's rows; an eligible customer's message is rendered here, once, with a
    short link of its own, so the send path only claims it, and a message too long for one
    segment fails at once. A row that exists (an earlier run) is kept as it is.

    The INSERT is written out by hand: the query builder spent more time wrapping the
    values of a batch than the database spent storing them."""
    if not batch:
        return 0
    p = database.param
    values = ", ".join(["(" + ", ".join([p] * len(_OUTCOME_COLUMNS)) + ")"] * len(batch))
    columns = ", ".join(f'"{column}"' for column in _OUTCOME_COLUMNS)
    for attempt in range(_LINK_CODE_TRIES):
        rows = _render_outcomes(campaign, batch, default_region, short_url_base, default_time_zone)
        new_zones = {row[-1] for row in rows if row[-1]} - zones
        try:
            with database.atomic():
                if new_zones:
                    # With the rows, so that no row's zone is missing from the campaign's list.
                    zones |= new_zones
                    Campaign.update(zones=json.dumps(sorted(zones))).where(Campaign.id == campaign.id).execute()
                database.execute_sql(
                    f'INSERT INTO "message" ({columns}) VALUES {values} ON CONFLICT ("campaign_id", "customer_id") DO NOTHING',
                    [value for row in rows for value in row],
                )
            return len(rows)
        except IntegrityError:
            # Only a link code can collide (the conflict target covers the rest): new codes.
            zones -= new_zones
            if attempt == _LINK_CODE_TRIES - 1:
                raise
    return 0


def _render_outcomes(campaign: Campaign, batch: list[tuple[Customer, str | None]], default_region: str,
                     short_url_base: str, default_time_zone: str) -> list[tuple]:
    now = db_datetime(utcnow())
    rows = []
    for customer, qr_code in batch:
        phone, skip_code, skip_reason = eligibility(customer, qr_code, default_region)
        status, body, encoding, segments, link_code, zone_name = MessageStatus.PENDING, None, None, None, None, None
        if skip_code:
            status = MessageStatus.SKIPPED
        else:
            zone_name = recipient_zone(phone, customer_zone=customer.time_zone, campaign_zone=campaign.time_zone,
                                       default_zone=default_time_zone).key
            link_code = new_link_code()
            try:
                body, length = compose(campaign.template, template_values(customer, link_code, short_url_base))
                encoding, segments = length.encoding, length.segments
            except (TemplateError, MessageTooLong) as exc:
                status, skip_code, skip_reason, link_code = MessageStatus.FAILED, exc.code, exc.reason, None
        rows.append((campaign.id, customer.id, status, phone, body, encoding, segments, skip_code, skip_reason, 0, 0, now, now,
                     link_code, zone_name))
    return rows


@dataclass
class SweepResult:
    checked: int = 0
    restarted: list[int] = field(default_factory=list)
    #: Rows left ``sending`` under a paused or cancelled campaign, sent to be reconciled.
    reconciling: list[int] = field(default_factory=list)


def sweep(
    *,
    stale_after_s: Callable[[Campaign], float],
    restart_fan_out: Callable[[int], None],
    restart_dispatch: Callable[[int, str], None],
    request_metrics: Callable[[int], None],
    reconcile: Callable[[Campaign, list[int]], None] = lambda campaign, message_ids: None,
    stuck_after_s: float = 1200.0,
) -> SweepResult:
    """Restart the work of every sending campaign whose fan-out or dispatcher has gone
    quiet, as happens when Redis loses its keys or a worker dies mid-chain.

    Rows left ``sending`` for ``stuck_after_s`` under a campaign no dispatcher runs for (paused
    or cancelled: a worker died before their outcome was written) go to ``reconcile``, once
    per ``stuck_after_s``: found at Twilio they are recorded sent, otherwise they go back to
    pending or are cancelled.

    Only the database is consulted, so this works whatever the broker has forgotten; the
    takeover is a conditional UPDATE, so concurrent sweepers restart a campaign once.
    """
    result = SweepResult()
    now = utcnow()
    cancelled = Campaign.select(Campaign.id).where(Campaign.status == CampaignStatus.CANCELLED)
    (
        Message.update(status=MessageStatus.CANCELLED, error_code="cancelled", reason="campaign cancelled", updated_at=now)
        .where(Message.status == MessageStatus.PENDING, Message.campaign.in_(cancelled))
        .execute()
    )
    stopped = Campaign.select(Campaign.id).where(Campaign.status.in_([CampaignStatus.PAUSED, CampaignStatus.CANCELLED]))
    stuck_before = now - dt.timedelta(seconds=stuck_after_s)
    stuck = (
        Message.select(Message.id, Message.campaign)
        .where(Message.campaign.in_(stopped), Message.status == MessageStatus.SENDING, Message.sending_at < stuck_before,
               Message.queued_at.is_null() | (Message.queued_at < stuck_before))
        .limit(1000)
    )
    by_campaign: dict[int, list[int]] = {}
    for row in stuck:
        by_campaign.setdefault(row.campaign_id, []).append(row.id)
    for campaign in Campaign.select().where(Campaign.id.in_(list(by_campaign))) if by_campaign else ():
        ids = by_campaign[campaign.id]
        Message.update(queued_at=now).where(Message.id.in_(ids)).execute()  # not again before stuck_after_s
        reconcile(campaign, ids)
        result.reconciling += ids
    for campaign in Campaign.select().where(Campaign.status == CampaignStatus.SENDING):
        result.checked += 1
        request_metrics(campaign.id)
        cutoff = now - dt.timedelta(seconds=stale_after_s(campaign))
        if campaign.heartbeat_at is not None and campaign.heartbeat_at >= cutoff:
            continue
        token = uuid.uuid4().hex
        beat = Campaign.heartbeat_at.is_null() if campaign.heartbeat_at is None else Campaign.heartbeat_at == campaign.heartbeat_at
        taken = (
            Campaign.update(dispatch_token=token, heartbeat_at=now)
            .where(Campaign.id == campaign.id, Campaign.status == CampaignStatus.SENDING, beat)
            .execute()
        )
        if not taken:
            continue
        record_event(campaign.id, "campaign_restarted", "no progress from the fan-out or the dispatcher; restarted", level="warning")
        result.restarted.append(campaign.id)
        if campaign.fanout_done_at is None:
            restart_fan_out(campaign.id)
        else:
            restart_dispatch(campaign.id, token)
    return result


def resume_campaign(campaign_id: int) -> str | None:
    """Resume a paused campaign where it stopped; returns the new dispatcher token."""
    token = uuid.uuid4().hex
    changed = (
        Campaign.update(status=CampaignStatus.SENDING, status_reason=None, dispatch_token=token, heartbeat_at=utcnow())
        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.PAUSED)
        .execute()
    )
    if not changed:
        return None
    Message.update(queued_at=None).where(Message.campaign == campaign_id, Message.status == MessageStatus.PENDING).execute()
    record_event(campaign_id, "campaign_resumed", "resumed by an operator", level="info")
    return token


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


def cancel_campaign(campaign_id: int, reason: str = "cancelled by an operator") -> int | None:
    """Cancel a campaign: every customer not yet sent is recorded as cancelled. Returns the
    number of rows cancelled, None if the campaign was already finished."""
    changed = (
        Campaign.update(status=CampaignStatus.CANCELLED, status_reason=reason, completed_at=utcnow())
        .where(Campaign.id == campaign_id, Campaign.status.not_in(CampaignStatus.FINISHED))
        .execute()
    )
    if not changed:
        return None
    rows = (
        Message.update(status=MessageStatus.CANCELLED, error_code="cancelled", reason=reason, updated_at=utcnow())
        .where(Message.campaign == campaign_id, Message.status == MessageStatus.PENDING)
        .execute()
    )
    record_event(campaign_id, "campaign_cancelled", f"{reason}; {rows} unsent customers cancelled", level="warning")
    return rows


def campaign_of(message_id: int) -> int | None:
    return Message.select(Message.campaign).where(Message.id == message_id).scalar()


def is_sending(campaign_id: int | None) -> bool:
    return campaign_id is not None and Campaign.select().where(
        Campaign.id == campaign_id, Campaign.status == CampaignStatus.SENDING
    ).exists()


def settle_cancelled(message_id: int) -> bool:
    """A message put back to pending after its campaign was cancelled (it was in flight
    when the cancel came) is recorded as cancelled too."""
    cancelled = Campaign.select(Campaign.id).where(Campaign.id == Message.campaign, Campaign.status == CampaignStatus.CANCELLED)
    return bool(
        Message.update(status=MessageStatus.CANCELLED, error_code="cancelled", reason="campaign cancelled", updated_at=utcnow())
        .where(Message.id == message_id, Message.status == MessageStatus.PENDING, fn.EXISTS(cancelled))
        .execute()
    )


def schedule_campaign(campaign_id: int, send_at_utc: dt.datetime) -> bool:
    """Mark a draft campaign to start at ``send_at_utc`` (naive UTC); the sweeper starts it."""
    return bool(
        Campaign.update(status=CampaignStatus.SCHEDULED, send_at=send_at_utc)
        .where(Campaign.id == campaign_id, Campaign.status.in_([CampaignStatus.DRAFT, CampaignStatus.SCHEDULED]))
        .execute()
    )


def start_due_campaigns(now: dt.datetime | None = None) -> list[int]:
    """Move due scheduled campaigns to ``sending`` (each once, whatever the number of
    sweepers) and return them; the caller enqueues their fan-out. If that message is lost,
    the campaign's heartbeat goes stale and a later sweep restarts the fan-out."""
    now = now or utcnow()
    started = []
    for campaign in Campaign.select(Campaign.id).where(Campaign.status == CampaignStatus.SCHEDULED, Campaign.send_at <= now):
        # The heartbeat says the fan-out was just asked for: the sweep that started it must
        # not take it for a stalled campaign and start a second one.
        if Campaign.update(status=CampaignStatus.SENDING, heartbeat_at=now).where(
            Campaign.id == campaign.id, Campaign.status == CampaignStatus.SCHEDULED
        ).execute():
            started.append(campaign.id)
    return started


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


@dataclass
class Preview:
    campaign_id: int
    samples: list[dict]
    audience: int = 0
    eligible: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    too_long: int = 0
    encodings: dict[str, int] = field(default_factory=dict)
    segments: int = 0
    price_per_segment: float = 0.0
    template_error: str | None = None

    @property
    def estimated_cost(self) -> float:
        return round(self.segments * self.price_per_segment, 4)


def preview(
    campaign_id: int, *, short_url_base: str, default_region: str = "US", samples: int = 3,
    price_per_segment: float = 0.0, batch_size: int = 1000,
) -> Preview:
    """A dry run: render the campaign for its whole audience, sending nothing and writing
    nothing. Sample messages are exactly what would go out, with a link code made for the
    preview (the fan-out gives each message its own)."""
    campaign = Campaign.get_by_id(campaign_id)
    result = Preview(campaign_id, samples=[], price_per_segment=price_per_segment)
    try:
        check_campaign(campaign, short_url_base)
    except PermanentError as exc:
        result.template_error = exc.reason
    for batch in _customer_batches(batch_size):
        for customer, qr_code in batch:
            result.audience += 1
            phone, skip_code, _reason = eligibility(customer, qr_code, default_region)
            if skip_code:
                result.skipped_by_reason[skip_code] = result.skipped_by_reason.get(skip_code, 0) + 1
                continue
            if result.template_error:
                continue
            try:
                body, length = compose(campaign.template, template_values(customer, new_link_code(), short_url_base))
            except MessageTooLong:
                result.too_long += 1
                continue
            result.eligible += 1
            result.encodings[length.encoding] = result.encodings.get(length.encoding, 0) + 1
            result.segments += length.segments
            if len(result.samples) < samples:
                result.samples.append({"to": mask_phone(phone), "body": body, "encoding": length.encoding, "units": length.units})
    return result


def status_report(campaign_id: int, *, now: dt.datetime | None = None, rate_window_s: int = 300) -> dict:
    """Live figures for an operator: counts straight from the rows, the recent sending
    rate, an ETA and a progress bar."""
    now = now or utcnow()
    campaign = Campaign.get_by_id(campaign_id)
    counts = {status: 0 for status in MessageStatus.ALL}
    counts.update(database_counts(campaign_id))
    delivered = Message.select().where(Message.campaign == campaign_id, Message.delivery_status == "delivered").count()
    recent = Message.select().where(
        Message.campaign == campaign_id, Message.status == MessageStatus.SENT,
        Message.sent_at >= now - dt.timedelta(seconds=rate_window_s),
    ).count()
    total = sum(counts.values())
    pending = counts[MessageStatus.PENDING] + counts[MessageStatus.SENDING]
    done = total - pending
    rate_per_min = recent * 60 / rate_window_s
    eta_s = pending / rate_per_min * 60 if rate_per_min and pending else (0 if not pending else None)
    width = 30
    filled = int(width * done / total) if total else 0
    return {
        "campaign_id": campaign_id, "name": campaign.name, "status": campaign.status,
        "status_reason": campaign.status_reason,
        "targeted": total, "sent": counts[MessageStatus.SENT], "failed": counts[MessageStatus.FAILED],
        "skipped": counts[MessageStatus.SKIPPED], "cancelled": counts[MessageStatus.CANCELLED],
        "pending": pending, "delivered": delivered,
        "rate_per_minute": round(rate_per_min, 2), "eta_seconds": None if eta_s is None else int(eta_s),
        "progress": f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
    }
