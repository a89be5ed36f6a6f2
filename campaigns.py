"""The campaign domain: fan-out, sending one message, and analytics, as plain functions.

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
from types import SimpleNamespace
from typing import Any, Callable, Iterable, NamedTuple, Protocol

from limits import parse as parse_limit
from peewee import JOIN, fn

from batching import Combiner
from errors import (
    CampaignError,
    InvalidPhone,
    MaybeSent,
    MessageTooLong,
    PermanentError,
    RecipientOptedOut,
    SenderError,
    TemplateError,
    TransientError,
)
from models import (
    Campaign,
    Click,
    CampaignAnalytics,
    CampaignStatus,
    Customer,
    Event,
    HotStatement,
    Message,
    MessageStatus,
    QRCode,
    database,
    is_postgres,
    utcnow,
    write_transaction,
)
from quiet import QuietHours, recipient_zone
from sms import compose, mask_phone, normalize_phone, validate_template
from smsservice import SendResult, SmsBackend

logger = logging.getLogger(__name__)

#: The longest QR code the template check assumes when it proves the template can fit.
SAMPLE_QR_CODE = "X" * 8


class SkipReason:
    UNSUBSCRIBED = "unsubscribed"
    MISSING_PHONE = "missing_phone"
    INVALID_PHONE = "invalid_phone"
    NO_QR_CODE = "no_qr_code"


def short_url(short_url_base: str, code: str) -> str:
    return f"{short_url_base.rstrip('/')}/{code}"


def template_values(customer: Customer, qr_code: str | None, short_url_base: str) -> dict[str, str]:
    first, last = customer.first_name or "", customer.last_name or ""
    return {
        "first_name": first,
        "last_name": last,
        "name": f"{first} {last}".strip(),
        "short_url": short_url(short_url_base, qr_code) if qr_code else "",
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
    empty = {"first_name": "", "last_name": "", "name": "", "short_url": short_url(short_url_base, SAMPLE_QR_CODE)}
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
    for batch in _customer_batches(batch_size):
        result.recorded += _record_outcomes(campaign, batch, default_region, short_url_base)
        Campaign.update(heartbeat_at=utcnow()).where(Campaign.id == campaign_id).execute()
    Campaign.update(fanout_done_at=utcnow()).where(Campaign.id == campaign_id, Campaign.fanout_done_at.is_null()).execute()
    result.status = CampaignStatus.SENDING
    return result


@dataclass
class DispatchResult:
    enqueued: int = 0
    inflight: int = 0
    again: bool = False


def dispatch(
    campaign_id: int,
    token: str,
    *,
    enqueue: Callable[[Campaign, list[int]], None],
    max_inflight: int,
    requeue_after_s: float,
) -> DispatchResult:
    """Enqueue sends so that at most ``max_inflight`` of the campaign are in the broker.

    Keeping only about a rate-limit window's worth ahead bounds the queues, the delayed
    messages and the workers' memory whatever the campaign's size, and lets a pause take
    effect within that window. A row enqueued longer than ``requeue_after_s`` ago and still
    pending, or left ``sending`` that long, is assumed lost by the broker (a Redis restart,
    a killed worker) and enqueued again: the claim makes a duplicate harmless, and a
    ``sending`` row is looked up at Twilio before any resend. Only the chain holding the
    campaign's current ``token`` runs.
    """
    campaign = Campaign.get_or_none(Campaign.id == campaign_id)
    if campaign is None or campaign.dispatch_token != token or campaign.status != CampaignStatus.SENDING:
        return DispatchResult()
    Campaign.update(heartbeat_at=utcnow()).where(Campaign.id == campaign_id).execute()
    stale_before = utcnow() - dt.timedelta(seconds=requeue_after_s)
    queued = Message.select(Message.id).where(
        Message.campaign == campaign_id, Message.status == MessageStatus.PENDING, Message.queued_at.is_null(False)
    )
    stuck = Message.select(Message.id).where(
        Message.campaign == campaign_id, Message.status == MessageStatus.SENDING, Message.sending_at < stale_before,
        Message.queued_at.is_null() | (Message.queued_at < stale_before),
    )
    stale_pending = [row.id for row in queued.where(Message.queued_at < stale_before).limit(max_inflight)]
    stale_sending = [row.id for row in stuck.limit(max_inflight)]
    inflight = queued.where(Message.queued_at <= utcnow()).count() - len(stale_pending)
    room = max(0, max_inflight - inflight)
    requeue = stale_pending[:room]
    fresh = [
        row.id
        for row in Message.select(Message.id)
        .where(Message.campaign == campaign_id, Message.status == MessageStatus.PENDING, Message.queued_at.is_null())
        .order_by(Message.id)
        .limit(room - len(requeue))
    ] if room > len(requeue) else []
    ids = stale_sending + requeue + fresh
    if ids:
        Message.update(queued_at=utcnow()).where(Message.id.in_(ids)).execute()
        enqueue(campaign, ids)
    inflight += len(ids)
    return DispatchResult(enqueued=len(ids), inflight=inflight, again=campaign.fanout_done_at is None or inflight > 0)


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
    "attempts", "deferrals", "created_at", "updated_at",
)


def _record_outcomes(campaign: Campaign, batch: list[tuple[Customer, str | None]], default_region: str, short_url_base: str) -> int:
    """Insert the batch's rows; an eligible customer's message is rendered here, once, so
    the send path only claims it, and a message too long for one segment fails at once.

    The INSERT is written out by hand: the query builder spent more time wrapping the
    values of a batch than the database spent storing them."""
    now = _when(utcnow())
    rows = []
    for customer, qr_code in batch:
        phone, skip_code, skip_reason = eligibility(customer, qr_code, default_region)
        status, body, encoding, segments = MessageStatus.PENDING, None, None, None
        if skip_code:
            status = MessageStatus.SKIPPED
        else:
            try:
                body, length = compose(campaign.template, template_values(customer, qr_code, short_url_base))
                encoding, segments = length.encoding, length.segments
            except (TemplateError, MessageTooLong) as exc:
                status, skip_code, skip_reason = MessageStatus.FAILED, exc.code, exc.reason
        rows.append((campaign.id, customer.id, status, phone, body, encoding, segments, skip_code, skip_reason, 0, 0, now, now))
    if rows:
        p = database.param
        values = ", ".join(["(" + ", ".join([p] * len(_OUTCOME_COLUMNS)) + ")"] * len(rows))
        columns = ", ".join(f'"{column}"' for column in _OUTCOME_COLUMNS)
        with database.atomic():
            database.execute_sql(
                f'INSERT INTO "message" ({columns}) VALUES {values} ON CONFLICT DO NOTHING',
                [value for row in rows for value in row],
            )
    return len(rows)


@dataclass
class SweepResult:
    checked: int = 0
    restarted: list[int] = field(default_factory=list)


def sweep(
    *,
    stale_after_s: Callable[[Campaign], float],
    restart_fan_out: Callable[[int], None],
    restart_dispatch: Callable[[int, str], None],
    request_metrics: Callable[[int], None],
) -> SweepResult:
    """Restart the work of every sending campaign whose fan-out or dispatcher has gone
    quiet, as happens when Redis loses its keys or a worker dies mid-chain.

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
    template, a dead list), rather than burning through the rest of the list."""
    recent = [
        status
        for (status,) in Message.select(Message.status)
        .where(Message.campaign == campaign_id, Message.status.in_([MessageStatus.SENT, MessageStatus.FAILED]))
        .order_by(Message.updated_at.desc(), Message.id.desc())
        .limit(window)
        .tuples()
    ]
    failed = recent.count(MessageStatus.FAILED)
    if len(recent) < min_attempts or failed < ratio * len(recent):
        return False
    return pause_campaign(campaign_id, f"error storm: {failed} of the last {len(recent)} attempts failed")


class QuietNow(Exception):
    """The recipient is inside quiet hours until ``until_utc`` (naive UTC)."""

    def __init__(self, until_utc: dt.datetime) -> None:
        super().__init__(f"quiet hours until {until_utc:%Y-%m-%d %H:%M} UTC")
        self.until_utc = self.queued_at = until_utc


@dataclass(frozen=True)
class QuietPolicy:
    """Quiet hours in the recipient's local time, with an injectable clock (naive UTC)."""

    hours: QuietHours
    default_zone: str
    clock: Callable[[], dt.datetime] = utcnow

    def check(self, message: "LoadedMessage") -> None:
        zone = recipient_zone(
            message.to_phone, customer_zone=message.customer.time_zone,
            campaign_zone=message.campaign.time_zone, default_zone=self.default_zone,
        )
        until = self.hours.next_allowed_utc(self.clock(), zone)
        if until is not None:
            raise QuietNow(until)


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
    the campaign's silent heartbeat makes the sweep restart the fan-out."""
    now = now or utcnow()
    started = []
    for campaign in Campaign.select(Campaign.id).where(Campaign.status == CampaignStatus.SCHEDULED, Campaign.send_at <= now):
        if Campaign.update(status=CampaignStatus.SENDING, heartbeat_at=None).where(
            Campaign.id == campaign.id, Campaign.status == CampaignStatus.SCHEDULED
        ).execute():
            started.append(campaign.id)
    return started


@dataclass
class SendOutcome:
    message_id: int
    status: str
    detail: str = ""
    campaign_id: int | None = None
    paused: bool = False
    #: The "sent" record went to ``record_sent``, which asks for the metrics update itself.
    written_behind: bool = False


class SentRecord(NamedTuple):
    """A send the SMS service accepted, to be recorded (``write_sent`` takes many)."""

    message_id: int
    sid: str
    segments: int
    campaign_id: int | None


def _transition(message_id: int, expected: str | tuple[str, ...], **changes) -> bool:
    """Move one message from ``expected`` to new values; False if someone else moved it."""
    expected = (expected,) if isinstance(expected, str) else expected
    changes.setdefault("updated_at", utcnow())
    return bool(Message.update(**changes).where(Message.id == message_id, Message.status.in_(expected)).execute())


class _HotSql:
    """The statements of the send path, written out once: building them with the query
    builder on every message cost more CPU than the rest of the send."""

    #: The usual send's first statement: claims a message rendered at the fan-out if it
    #: is still pending, its campaign sending, its customer subscribed and with a QR
    #: code, and returns what the send needs. No row back: ``load`` tells why.
    claim_rendered = HotStatement("send_claim_rendered", (
        'UPDATE "message" SET "status" = {p}, "attempts" = "attempts" + 1, "sending_at" = {p}, '
        '"deferrals" = {p}, "updated_at" = {p} '
        'WHERE "id" = {p} AND "status" = {p} AND "body" IS NOT NULL '
        'AND EXISTS (SELECT 1 FROM "campaign" c WHERE c."id" = "message"."campaign_id" AND c."status" = {p}) '
        'AND EXISTS (SELECT 1 FROM "customer" u WHERE u."id" = "message"."customer_id" AND u."sms_subscribed") '
        'AND EXISTS (SELECT 1 FROM "qrcode" q WHERE q."customer_id" = "message"."customer_id") '
        'RETURNING "to_phone", "body", "segments", "campaign_id", "customer_id", '
        '(SELECT c."time_zone" FROM "campaign" c WHERE c."id" = "message"."campaign_id"), '
        '(SELECT u."time_zone" FROM "customer" u WHERE u."id" = "message"."customer_id")'
    ))
    #: ``claim_rendered`` for many messages at once (PostgreSQL), ids and deferrals as
    #: arrays. Only the id may lead to the rows, whatever the statistics say (a new
    #: campaign's rows are not analysed yet): the other tests are written so that no index
    #: can serve them, and the related rows are read by scalar subqueries, not joins.
    claim_rendered_many = HotStatement("send_claim_rendered_many", (
        'UPDATE "message" SET "status" = {p}, "attempts" = "attempts" + 1, "sending_at" = {p}, '
        '"deferrals" = ({p}::integer[])[array_position({p}::integer[], "id")], "updated_at" = {p} '
        'WHERE "id" = ANY({p}::integer[]) AND COALESCE("status", \'\') = {p} AND "body" IS NOT NULL '
        'AND (SELECT c."status" FROM "campaign" c WHERE c."id" = "message"."campaign_id") = {p} '
        'AND (SELECT u."sms_subscribed" FROM "customer" u WHERE u."id" = "message"."customer_id") '
        'AND (SELECT q."id" FROM "qrcode" q WHERE q."customer_id" = "message"."customer_id") IS NOT NULL '
        'RETURNING "id", "to_phone", "body", "segments", "campaign_id", "customer_id", '
        '(SELECT c."time_zone" FROM "campaign" c WHERE c."id" = "message"."campaign_id"), '
        '(SELECT u."time_zone" FROM "customer" u WHERE u."id" = "message"."customer_id")'
    ))
    load = HotStatement("send_load", (
        'SELECT m."status", m."to_phone", m."body", m."segments", m."sending_at", '
        'c."id", c."status", c."template", c."time_zone", '
        'u."id", u."first_name", u."last_name", u."sms_subscribed", u."time_zone", q."code" '
        'FROM "message" m JOIN "campaign" c ON c."id" = m."campaign_id" '
        'JOIN "customer" u ON u."id" = m."customer_id" '
        'LEFT OUTER JOIN "qrcode" q ON q."customer_id" = u."id" WHERE m."id" = {p}'
    ))
    claim = HotStatement("send_claim", (
        'UPDATE "message" SET "status" = {p}, "body" = {p}, "encoding" = {p}, "segments" = {p}, '
        '"attempts" = "attempts" + 1, "sending_at" = {p}, "deferrals" = {p}, "updated_at" = {p} '
        'WHERE "id" = {p} AND "status" = {p} '
        'AND EXISTS (SELECT 1 FROM "campaign" WHERE "id" = {p} AND "status" = {p})'
    ))
    sent = HotStatement("send_sent", (
        'UPDATE "message" SET "status" = {p}, "twilio_sid" = {p}, "sent_at" = {p}, "segments" = {p}, '
        '"error_code" = NULL, "reason" = {p}, "updated_at" = {p} WHERE "id" = {p} AND "status" = {p}'
    ))
    #: ``sent`` for many messages at once (PostgreSQL): ids, SIDs and segments as arrays,
    #: found by id only (as ``claim_rendered_many``).
    sent_many = HotStatement("send_sent_many", (
        'UPDATE "message" SET "status" = {p}, "sent_at" = {p}, "updated_at" = {p}, '
        '"twilio_sid" = ({p}::text[])[array_position({p}::integer[], "id")], '
        '"segments" = ({p}::integer[])[array_position({p}::integer[], "id")], "error_code" = NULL, "reason" = NULL '
        'WHERE "id" = ANY({p}::integer[]) AND COALESCE("status", \'\') = {p}'
    ))


def _when(value: dt.datetime):
    return Message.sent_at.db_value(value)


@dataclass
class LoadedMessage:
    """A message row with its campaign, customer and QR code, as the send path needs them."""

    id: int
    status: str
    to_phone: str | None
    body: str | None
    segments: int | None
    sending_at: dt.datetime | None
    campaign: SimpleNamespace
    customer: SimpleNamespace


def load_for_send(message_id: int) -> LoadedMessage | None:
    """Message, campaign, customer and QR code in one query."""
    row = _HotSql.load.execute((message_id,)).fetchone()
    if row is None:
        return None
    (status, to_phone, body, segments, sending_at, campaign_id, campaign_status, template, campaign_zone,
     customer_id, first_name, last_name, subscribed, customer_zone, qr_code) = row
    return LoadedMessage(
        id=message_id, status=status, to_phone=to_phone, body=body, segments=segments,
        sending_at=Message.sending_at.python_value(sending_at),
        campaign=SimpleNamespace(id=campaign_id, status=campaign_status, template=template, time_zone=campaign_zone),
        customer=SimpleNamespace(
            id=customer_id, first_name=first_name, last_name=last_name, sms_subscribed=bool(subscribed),
            time_zone=customer_zone, qr=SimpleNamespace(code=qr_code) if qr_code else None,
        ),
    )


class BatchSlots(Protocol):
    """An ``acquire_slot`` that can also take the slots of a batch of claims at once."""

    def __call__(self, cost: int, campaign_id: int, first: Any = None) -> None: ...

    def group(self, campaign_id: int) -> Any:
        """Requests with equal groups can share a ``take_many``."""

    def take_many(self, costs: list[int], campaign_id: int) -> list[Any]:
        """One try for each cost, in one round trip; each result goes to ``__call__(first=)``."""


class ClaimRequest(NamedTuple):
    message_id: int
    deferrals: int
    acquire_slot: Callable[..., None] | None = None
    quiet: QuietPolicy | None = None


def claim_rendered(
    message_id: int, deferrals: int, acquire_slot: Callable[..., None] | None = None, quiet: QuietPolicy | None = None,
) -> tuple[LoadedMessage | None, Any]:
    """Claim a pending message rendered at the fan-out (see ``_HotSql.claim_rendered``);
    concurrent claims of this process's threads share one statement.

    Returns the message (None if not claimed) and, when ``acquire_slot`` is ``BatchSlots``,
    the first try at its slot made for the whole batch right after the claim (or the
    ``QuietNow`` that kept it from trying), to pass on to ``acquire_slot(first=)``.
    """
    return _claims.submit(ClaimRequest(message_id, deferrals, acquire_slot, quiet))


def claim_rendered_many(requests: list[ClaimRequest]) -> list[tuple[LoadedMessage | None, Any]]:
    """``claim_rendered`` for a batch: one statement, then quiet hours, then one round trip
    per group of slots."""
    messages = _claim_rendered_rows(requests)
    results: list[tuple[LoadedMessage | None, Any]] = [(message, None) for message in messages]
    groups: dict[Any, list[int]] = {}
    for i, (request, message) in enumerate(zip(requests, messages)):
        if message is None or not hasattr(request.acquire_slot, "take_many"):
            continue
        if request.quiet is not None:
            try:
                request.quiet.check(message)
            except QuietNow as exc:
                results[i] = (message, exc)
                continue
        groups.setdefault(request.acquire_slot.group(message.campaign.id), []).append(i)
    for indexes in groups.values():
        lead = indexes[0]
        try:
            tries = requests[lead].acquire_slot.take_many([messages[i].segments for i in indexes], messages[lead].campaign.id)
        except Exception:  # noqa: BLE001 - the limiter is unreachable: each send finds out on its own try
            continue
        for i, first in zip(indexes, tries):
            results[i] = (messages[i], first)
    return results


def _claim_rendered_rows(items: list[ClaimRequest]) -> list[LoadedMessage | None]:
    now = _when(utcnow())
    if is_postgres():
        ids = [item.message_id for item in items]
        rows = _HotSql.claim_rendered_many.execute((
            MessageStatus.SENDING, now, [item.deferrals for item in items], ids, now, ids,
            MessageStatus.PENDING, CampaignStatus.SENDING,
        )).fetchall()
    else:
        rows = []
        with write_transaction():
            for message_id, deferrals, _, _ in items:
                rows += [(message_id, *row) for row in _HotSql.claim_rendered.execute((
                    MessageStatus.SENDING, now, deferrals, now, message_id, MessageStatus.PENDING, CampaignStatus.SENDING,
                )).fetchall()]  # all rows: SQLite ends the statement only then
    claimed = {}
    for message_id, to_phone, body, segments, campaign_id, customer_id, campaign_zone, customer_zone in rows:
        claimed[message_id] = LoadedMessage(
            id=message_id, status=MessageStatus.SENDING, to_phone=to_phone, body=body, segments=segments,
            sending_at=None,
            campaign=SimpleNamespace(id=campaign_id, status=CampaignStatus.SENDING, time_zone=campaign_zone),
            customer=SimpleNamespace(id=customer_id, time_zone=customer_zone),
        )
    return [claimed.get(item.message_id) for item in items]


def _record_sent_batch(records: list[SentRecord]) -> list[None]:
    now = _when(utcnow())
    if is_postgres():
        ids = [record.message_id for record in records]
        _HotSql.sent_many.execute((
            MessageStatus.SENT, now, now, [record.sid for record in records], ids,
            [record.segments for record in records], ids, ids, MessageStatus.SENDING,
        ))
    else:
        with write_transaction():
            for record in records:
                _HotSql.sent.execute((
                    MessageStatus.SENT, record.sid, now, record.segments, None, now, record.message_id, MessageStatus.SENDING,
                ))
    return [None] * len(records)


def release_connection() -> None:
    """Close the calling thread's database connection (a writer thread that stops)."""
    if not database.is_closed():
        database.close()


def write_sent(records: list[SentRecord]) -> None:
    """Record many accepted sends in one statement, for a writer thread: a row that is no
    longer ``sending`` (reconciled meanwhile) is left as it is. After a failure the thread's
    connection is dropped, so that the next try connects again."""
    try:
        _record_sent_batch(records)
    except Exception:
        release_connection()
        raise


_claims = Combiner(claim_rendered_many)
_sent_records = Combiner(_record_sent_batch)


def send_message(
    message_id: int,
    *,
    backend: SmsBackend,
    short_url_base: str,
    deferrals: int = 0,
    acquire_slot: Callable[[int, int], None] | None = None,
    reconcile_after_s: float = 30.0,
    quiet: QuietPolicy | None = None,
    record_sent: Callable[[SentRecord], None] | None = None,
) -> SendOutcome:
    """Check, claim, send and record one message: the spec's sequence.

    The usual message was rendered at the fan-out and is claimed in one statement; one
    that was not (or whose claim finds something changed) takes the long way: load, check,
    render, claim. ``acquire_slot(segments, campaign_id)`` takes the rate-limit slot right
    before the HTTP call; if it raises (throttled, or the limiter is unreachable) the claim
    is undone and the error propagates. ``deferrals`` is how often the rate limit put this
    message back.

    A message left in ``sending`` (no answer from Twilio, or a crash) is looked up at
    Twilio once it is ``reconcile_after_s`` old, and only sent again if Twilio has none.
    Raises TransientError when a retry may help (``MaybeSent`` keeps the claim), and
    ``QuietNow`` when the recipient is inside quiet hours (checked before the slot is
    taken and again right before the send).

    ``record_sent`` takes the record of an accepted send instead of this call writing it
    (a worker's ``WriteBehind``): the row stays ``sending`` until it is written.
    """
    message, first = claim_rendered(message_id, deferrals, acquire_slot, quiet)
    if message is not None:
        outcome = SendOutcome(message_id, MessageStatus.SENDING, campaign_id=message.campaign.id)
        return _send_claimed(message, message.body, message.segments, outcome, backend, acquire_slot, reconcile_after_s, quiet,
                             record_sent, first)
    message = load_for_send(message_id)
    if message is None:
        record_event(None, "message_not_found", f"message {message_id} does not exist")
        return SendOutcome(message_id, "not_found")
    campaign, customer = message.campaign, message.customer
    outcome = SendOutcome(message_id, message.status, campaign_id=campaign.id)
    if message.status == MessageStatus.SENDING:
        return _reconcile(message, outcome, backend, acquire_slot, reconcile_after_s, quiet, record_sent)
    if message.status != MessageStatus.PENDING:
        outcome.detail = "already handled"
        return outcome
    if campaign.status != CampaignStatus.SENDING:
        if campaign.status == CampaignStatus.CANCELLED:
            settle_cancelled(message_id)
        outcome.detail = f"campaign is {campaign.status}"
        return outcome
    if not customer.sms_subscribed:
        return _skip(message_id, outcome, SkipReason.UNSUBSCRIBED, "customer unsubscribed before the send")
    qr = getattr(customer, "qr", None)
    if qr is None or not qr.code:
        return _skip(message_id, outcome, SkipReason.NO_QR_CODE, "customer's QR code was removed before the send")
    try:
        body, length = compose(campaign.template, template_values(customer, qr.code, short_url_base))
    except (TemplateError, MessageTooLong) as exc:
        _transition(message_id, MessageStatus.PENDING, status=MessageStatus.FAILED, error_code=exc.code, reason=exc.reason)
        outcome.status, outcome.detail = MessageStatus.FAILED, exc.reason
        return outcome
    if quiet is not None:
        try:
            quiet.check(message)
        except QuietNow as exc:
            _transition(message_id, MessageStatus.PENDING, queued_at=exc.queued_at)
            raise

    # The claim also re-checks the campaign, so a pause stops every message not yet claimed.
    now = _when(utcnow())
    claimed = _HotSql.claim.execute((
        MessageStatus.SENDING, body, length.encoding, length.segments, now, deferrals, now,
        message_id, MessageStatus.PENDING, campaign.id, CampaignStatus.SENDING,
    )).rowcount
    if not claimed:
        outcome.detail = "claimed by another worker, or the campaign stopped"
        return outcome
    return _send_claimed(message, body, length.segments, outcome, backend, acquire_slot, reconcile_after_s, quiet, record_sent)


def _skip(message_id: int, outcome: SendOutcome, code: str, reason: str) -> SendOutcome:
    _transition(message_id, MessageStatus.PENDING, status=MessageStatus.SKIPPED, error_code=code, reason=reason)
    outcome.status, outcome.detail = MessageStatus.SKIPPED, reason
    return outcome


def _send_claimed(message, body, segments, outcome, backend, acquire_slot, reconcile_after_s, quiet=None,
                  record_sent=None, first=None) -> SendOutcome:
    """Send a message this worker has claimed (status ``sending``) and record the result.
    ``first`` is what its batch of claims did about quiet hours and the slot, if anything."""
    message_id = message.id
    if acquire_slot is not None or quiet is not None:
        try:
            if isinstance(first, QuietNow):
                raise first
            if quiet is not None and first is None:
                quiet.check(message)
            if acquire_slot is not None and first is not None:
                acquire_slot(segments, message.campaign.id, first=first)
            elif acquire_slot is not None:
                acquire_slot(segments, message.campaign.id)
                if quiet is not None:
                    quiet.check(message)
        except BaseException as exc:
            # queued_at says when the row is next expected back: a quiet-hours deferral at the
            # window's end, a stopped campaign never (resume dispatches it), else now.
            _transition(message_id, MessageStatus.SENDING, status=MessageStatus.PENDING,
                        attempts=Message.attempts - 1, queued_at=getattr(exc, "queued_at", utcnow()))
            raise
    try:
        sent = backend.send(to=message.to_phone, body=body)
    except RecipientOptedOut as exc:
        _fail(message_id, exc)
        Customer.update(sms_subscribed=False).where(Customer.id == message.customer.id).execute()
        outcome.status, outcome.detail = MessageStatus.FAILED, exc.reason
        return outcome
    except PermanentError as exc:
        _fail(message_id, exc)
        outcome.status, outcome.detail = MessageStatus.FAILED, exc.reason
        return outcome
    except SenderError as exc:
        _transition(message_id, MessageStatus.SENDING, status=MessageStatus.PENDING, queued_at=None)
        outcome.paused = pause_campaign(message.campaign.id, f"sender error {exc.code}: {exc.reason}")
        settle_cancelled(message_id)
        outcome.status, outcome.detail = MessageStatus.PENDING, exc.reason
        return outcome
    except MaybeSent as exc:
        _transition(message_id, MessageStatus.SENDING, error_code=exc.code, reason=exc.reason)
        logger.warning("message %s to %s: maybe sent (%s); will look it up at Twilio", message_id, mask_phone(message.to_phone), exc.reason)
        exc.retry_after_ms = int(reconcile_after_s * 1000) + 1000
        raise
    except TransientError as exc:
        _transition(message_id, MessageStatus.SENDING, status=MessageStatus.PENDING, error_code=exc.code,
                    reason=exc.reason, queued_at=utcnow())
        logger.warning("message %s to %s: transient error %s: %s", message_id, mask_phone(message.to_phone), exc.code, exc.reason)
        raise
    record = SentRecord(message_id, sent.sid, sent.segments or segments, message.campaign.id)
    if record_sent is None:
        _sent_records.submit(record)
    else:
        record_sent(record)
        outcome.written_behind = True
    outcome.status = MessageStatus.SENT
    return outcome


def _record_sent(message_id: int, sent: SendResult, segments: int, reason: str) -> None:
    now = _when(utcnow())
    _HotSql.sent.execute((
        MessageStatus.SENT, sent.sid, now, sent.segments or segments, reason, now, message_id, MessageStatus.SENDING,
    ))


def _reconcile(message, outcome, backend, acquire_slot, reconcile_after_s, quiet=None, record_sent=None) -> SendOutcome:
    """A message left in ``sending``: if it is old enough that no worker can still be
    waiting for Twilio, look it up there; record it sent if found, else send it again."""
    started = message.sending_at
    if started is not None and started > utcnow() - dt.timedelta(seconds=reconcile_after_s):
        # Another worker may still be waiting for Twilio; if it died, come back to look.
        wait_s = (started + dt.timedelta(seconds=reconcile_after_s) - utcnow()).total_seconds()
        raise TransientError("being sent by another worker", code="in_flight", retry_after_ms=int(wait_s * 1000) + 1000)
    taken = (
        Message.update(sending_at=utcnow(), attempts=Message.attempts + 1, updated_at=utcnow())
        .where(Message.id == message.id, Message.status == MessageStatus.SENDING, Message.sending_at == started)
        .execute()
    )
    if not taken:
        outcome.detail = "reconciled by another worker"
        return outcome
    since = (started or utcnow()) - dt.timedelta(minutes=1)
    found = backend.find_sent(to=message.to_phone, body=message.body, since=since)
    if found is not None:
        _record_sent(message.id, found, message.segments or 1, reason="found at Twilio after an unanswered request")
        outcome.status, outcome.detail = MessageStatus.SENT, "reconciled"
        return outcome
    if message.campaign.status != CampaignStatus.SENDING:
        _transition(message.id, MessageStatus.SENDING, status=MessageStatus.PENDING, queued_at=None)
        settle_cancelled(message.id)
        outcome.status, outcome.detail = MessageStatus.PENDING, f"campaign is {message.campaign.status}"
        return outcome
    return _send_claimed(message, message.body, message.segments or 1, outcome, backend, acquire_slot, reconcile_after_s, quiet,
                         record_sent)


def give_up(message_id: int, *, retries: int) -> int | None:
    """Fail a message whose transient errors outlasted its retries; returns its campaign.

    A message that may have been sent (``sending``) is not failed blind: it stays for the
    dispatcher to enqueue again once it is stale, and is then looked up at Twilio.
    """
    message = Message.get_or_none(Message.id == message_id)
    if message is None:
        return None
    reason = f"gave up after {retries} retries; last error: {message.reason or 'unknown'}"
    if message.status == MessageStatus.SENDING:
        record_event(message.campaign_id, "retries_exhausted", f"message {message_id}: {reason}; left for reconciliation", level="warning")
    elif _transition(message_id, MessageStatus.PENDING, status=MessageStatus.FAILED, error_code="retries_exhausted", reason=reason):
        record_event(message.campaign_id, "retries_exhausted", f"message {message_id}: {reason}")
    return message.campaign_id


def _fail(message_id: int, exc: CampaignError) -> None:
    _transition(message_id, MessageStatus.SENDING, status=MessageStatus.FAILED, error_code=exc.code, reason=exc.reason)


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
    nothing. Sample messages are exactly what would go out."""
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
                body, length = compose(campaign.template, template_values(customer, qr_code, short_url_base))
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
