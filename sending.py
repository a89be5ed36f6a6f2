"""The send path of one campaign message: claim, quiet hours, rate-limit slot, send, record,
and the reconciliation of a message whose outcome is unknown (the spec's sequence).

Actors call ``send_message`` with a message id; nothing here knows about Dramatiq. Every
state change of a ``Message`` is a conditional UPDATE (``WHERE status = <expected>``), so a
redelivered or duplicated broker message can never send or count anything twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, NamedTuple, Protocol

from peewee import DataError, IntegrityError

from batching import Combiner
from campaigns import SkipReason, pause_campaign, record_event, settle_cancelled, template_values
from errors import (
    CampaignError,
    MaybeSent,
    MessageTooLong,
    PermanentError,
    RecipientOptedOut,
    SenderError,
    TemplateError,
    TransientError,
)
from models import (
    CampaignStatus,
    Customer,
    HotStatement,
    Message,
    MessageStatus,
    database,
    db_datetime,
    is_postgres,
    utcnow,
    write_transaction,
)
from links import new_link_code
from quiet import QuietHours, recipient_zone
from sms import compose, mask_phone
from smsservice import SendResult, SmsBackend

logger = logging.getLogger(__name__)


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


@dataclass
class SendOutcome:
    message_id: int
    status: str
    detail: str = ""
    campaign_id: int | None = None
    paused: bool = False
    #: The "sent" record went to ``record_sent``, whose writer asks for the metrics update
    #: once it is committed.
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
        '"first_attempt_at" = COALESCE("first_attempt_at", {p}), "deferrals" = {p}, "updated_at" = {p} '
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
        '"first_attempt_at" = COALESCE("first_attempt_at", {p}), '
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
        'SELECT m."status", m."to_phone", m."body", m."segments", m."sending_at", m."first_attempt_at", m."attempts", '
        'c."id", c."status", c."template", c."time_zone", '
        'u."id", u."first_name", u."last_name", u."sms_subscribed", u."time_zone", q."code" '
        'FROM "message" m JOIN "campaign" c ON c."id" = m."campaign_id" '
        'JOIN "customer" u ON u."id" = m."customer_id" '
        'LEFT OUTER JOIN "qrcode" q ON q."customer_id" = u."id" WHERE m."id" = {p}'
    ))
    claim = HotStatement("send_claim", (
        'UPDATE "message" SET "status" = {p}, "body" = {p}, "encoding" = {p}, "segments" = {p}, "link_code" = {p}, '
        '"attempts" = "attempts" + 1, "sending_at" = {p}, "first_attempt_at" = COALESCE("first_attempt_at", {p}), '
        '"deferrals" = {p}, "updated_at" = {p} WHERE "id" = {p} AND "status" = {p} '
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
    #: When the message was first claimed: the reconciliation window starts there, however
    #: often the row was taken again since.
    first_attempt_at: dt.datetime | None = None
    #: Claims and reconciliation takes so far.
    attempts: int = 0


def load_for_send(message_id: int) -> LoadedMessage | None:
    """Message, campaign, customer and QR code in one query."""
    row = _HotSql.load.execute((message_id,)).fetchone()
    if row is None:
        return None
    (status, to_phone, body, segments, sending_at, first_attempt_at, attempts, campaign_id, campaign_status, template,
     campaign_zone, customer_id, first_name, last_name, subscribed, customer_zone, qr_code) = row
    return LoadedMessage(
        id=message_id, status=status, to_phone=to_phone, body=body, segments=segments,
        sending_at=Message.sending_at.python_value(sending_at),
        first_attempt_at=Message.first_attempt_at.python_value(first_attempt_at), attempts=attempts or 0,
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
    #: The claim's time, once its batch has chosen it: a claim whose batch fails (or whose
    #: leader is interrupted) after the statement is undone by that time.
    stamp: list | None = None


def claim_rendered(
    message_id: int, deferrals: int, acquire_slot: Callable[..., None] | None = None, quiet: QuietPolicy | None = None,
) -> tuple[LoadedMessage | None, Any]:
    """Claim a pending message rendered at the fan-out (see ``_HotSql.claim_rendered``);
    concurrent claims of this process's threads share one statement.

    Returns the message (None if not claimed) and, when ``acquire_slot`` is ``BatchSlots``,
    the first try at its slot made for the whole batch right after the claim (or the
    ``QuietNow`` that kept it from trying), to pass on to ``acquire_slot(first=)``; an
    exception is raised by the send, which undoes the claim.
    """
    request = ClaimRequest(message_id, deferrals, acquire_slot, quiet, [])
    try:
        return _claims.submit(request)
    except BaseException:
        # The batch failed, or the thread running it was interrupted, maybe after its
        # statement committed: this message was not sent, so its claim (if made) is undone
        # rather than left for reconciliation.
        if request.stamp:
            release_claim(message_id, request.stamp[0])
        raise


def release_claim(message_id: int, claimed_at) -> bool:
    """Undo a claim made at ``claimed_at`` that was never followed by a send."""
    return bool(
        Message.update(status=MessageStatus.PENDING, attempts=Message.attempts - 1, queued_at=utcnow(), updated_at=utcnow())
        .where(Message.id == message_id, Message.status == MessageStatus.SENDING, Message.sending_at == claimed_at)
        .execute()
    )


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
            except Exception as exc:  # QuietNow, or anything else: this message's, not the batch's
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


def _claim_rendered_rows(requests: list[ClaimRequest]) -> list[LoadedMessage | None]:
    """One claim per message id: a second request for an id in the same batch (two copies
    of one broker message) gets None, on PostgreSQL as on SQLite."""
    seen: set[int] = set()
    firsts = [not (request.message_id in seen or seen.add(request.message_id)) for request in requests]
    items = [request for request, first in zip(requests, firsts) if first]
    now = db_datetime(utcnow())
    for item in items:
        if item.stamp is not None:
            item.stamp.append(now)
    if is_postgres():
        ids = [item.message_id for item in items]
        rows = _HotSql.claim_rendered_many.execute((
            MessageStatus.SENDING, now, now, [item.deferrals for item in items], ids, now, ids,
            MessageStatus.PENDING, CampaignStatus.SENDING,
        )).fetchall()
    else:
        rows = []
        with write_transaction():
            for message_id, deferrals, *_ in items:
                rows += [(message_id, *row) for row in _HotSql.claim_rendered.execute((
                    MessageStatus.SENDING, now, now, deferrals, now, message_id, MessageStatus.PENDING, CampaignStatus.SENDING,
                )).fetchall()]  # all rows: SQLite ends the statement only then
    claimed = {}
    for message_id, to_phone, body, segments, campaign_id, customer_id, campaign_zone, customer_zone in rows:
        claimed[message_id] = LoadedMessage(
            id=message_id, status=MessageStatus.SENDING, to_phone=to_phone, body=body, segments=segments,
            sending_at=None,
            campaign=SimpleNamespace(id=campaign_id, status=CampaignStatus.SENDING, time_zone=campaign_zone),
            customer=SimpleNamespace(id=customer_id, time_zone=customer_zone),
        )
    return [claimed.get(request.message_id) if first else None for request, first in zip(requests, firsts)]


def _record_sent_batch(records: list[SentRecord]) -> list[None]:
    now = db_datetime(utcnow())
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


def refused(exc: Exception) -> bool:
    """The database refused the rows themselves (a constraint), not the connection."""
    return isinstance(exc, (IntegrityError, DataError))


def write_sent(records: list[SentRecord]) -> None:
    """Record many accepted sends in one statement, for a writer thread: a row that is no
    longer ``sending`` (reconciled meanwhile) is left as it is. After a failure the thread's
    connection is dropped, so that the next try connects again."""
    try:
        _record_sent_batch(records)
    except Exception:
        release_connection()
        raise


@dataclass(frozen=True)
class _How:
    """What a ``send_message`` call was given, for the steps after the claim."""

    backend: SmsBackend
    acquire_slot: Callable[..., None] | None
    reconcile_after_s: float
    quiet: QuietPolicy | None
    record_sent: Callable[[SentRecord], None] | None
    max_attempts: int


#: Requests a message may cost before one that Twilio never lists is given up as failed.
DEFAULT_MAX_ATTEMPTS = 10


_claims = Combiner(claim_rendered_many)
_sent_records = Combiner(_record_sent_batch)


def send_message(
    message_id: int,
    *,
    backend: SmsBackend,
    short_url_base: str,
    deferrals: int = 0,
    acquire_slot: Callable[[int, int], None] | BatchSlots | None = None,
    reconcile_after_s: float = 30.0,
    quiet: QuietPolicy | None = None,
    record_sent: Callable[[SentRecord], None] | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> SendOutcome:
    """Check, claim, send and record one message: the spec's sequence.

    The usual message was rendered at the fan-out and is claimed in one statement; one
    that was not (or whose claim finds something changed) takes the long way: load, check,
    render, claim. ``acquire_slot(segments, campaign_id)`` takes the rate-limit slot after
    the claim, just before the HTTP call (a ``BatchSlots`` makes its first try in the
    claim's shared step); if it raises (throttled, or the limiter is unreachable) the claim
    is undone and the error propagates. ``deferrals`` is how often the rate limit put this
    message back.

    A message left in ``sending`` (no answer from Twilio, or a crash) is looked up at
    Twilio once it is ``reconcile_after_s`` old, and only sent again if Twilio has none.
    Raises TransientError when a retry may help (``MaybeSent`` keeps the claim), and
    ``QuietNow`` when the recipient is inside quiet hours (checked before the slot is
    taken and again right before the send).

    ``record_sent`` takes the record of an accepted send instead of this call writing it
    (a worker's ``WriteBehind``): the row stays ``sending`` until it is written.

    A message that has cost ``max_attempts`` claims and lookups and that Twilio still does
    not list is recorded failed (``unknown_outcome``), so that its campaign can complete.
    """
    how = _How(backend, acquire_slot, reconcile_after_s, quiet, record_sent, max_attempts)
    message, first = claim_rendered(message_id, deferrals, acquire_slot, quiet)
    if message is not None:
        outcome = SendOutcome(message_id, MessageStatus.SENDING, campaign_id=message.campaign.id)
        return _send_claimed(message, message.body, message.segments, outcome, how, first)
    message = load_for_send(message_id)
    if message is None:
        record_event(None, "message_not_found", f"message {message_id} does not exist")
        return SendOutcome(message_id, "not_found")
    campaign, customer = message.campaign, message.customer
    outcome = SendOutcome(message_id, message.status, campaign_id=campaign.id)
    if message.status == MessageStatus.SENDING:
        return _reconcile(message, outcome, how)
    if message.status != MessageStatus.PENDING:
        outcome.detail = "already handled"
        return outcome
    if campaign.status != CampaignStatus.SENDING:
        if campaign.status == CampaignStatus.CANCELLED:
            settle_cancelled(message_id)
        outcome.detail = f"campaign is {campaign.status}"
        return outcome
    skipped = _skip_if_ineligible(message, outcome, MessageStatus.PENDING)
    if skipped is not None:
        return skipped
    try:
        link_code = new_link_code()
        body, length = compose(campaign.template, template_values(customer, link_code, short_url_base))
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
    now = db_datetime(utcnow())
    claimed = _HotSql.claim.execute((
        MessageStatus.SENDING, body, length.encoding, length.segments, link_code, now, now, deferrals, now,
        message_id, MessageStatus.PENDING, campaign.id, CampaignStatus.SENDING,
    )).rowcount
    if not claimed:
        outcome.detail = "claimed by another worker, or the campaign stopped"
        return outcome
    return _send_claimed(message, body, length.segments, outcome, how)


def _skip_if_ineligible(message: LoadedMessage, outcome: SendOutcome, expected: str) -> SendOutcome | None:
    """Skip a message whose customer unsubscribed or lost their QR code since the fan-out."""
    if not message.customer.sms_subscribed:
        code, reason = SkipReason.UNSUBSCRIBED, "customer unsubscribed before the send"
    elif message.customer.qr is None or not message.customer.qr.code:
        code, reason = SkipReason.NO_QR_CODE, "customer's QR code was removed before the send"
    else:
        return None
    if _transition(message.id, expected, status=MessageStatus.SKIPPED, error_code=code, reason=reason):
        outcome.status, outcome.detail = MessageStatus.SKIPPED, reason
    else:
        outcome.detail = "handled by another worker"
    return outcome


def _send_claimed(message, body, segments, outcome: SendOutcome, how: _How, first=None) -> SendOutcome:
    """Send a message this worker has claimed (status ``sending``) and record the result.
    ``first`` is what its batch of claims did about quiet hours and the slot, if anything."""
    message_id = message.id
    acquire_slot, quiet = how.acquire_slot, how.quiet
    if acquire_slot is not None or quiet is not None:
        try:
            if isinstance(first, Exception):
                raise first
            if quiet is not None and first is None:
                quiet.check(message)  # else its batch checked, right before trying for the slot
            if acquire_slot is not None:
                if first is not None:
                    acquire_slot(segments, message.campaign.id, first=first)
                else:
                    acquire_slot(segments, message.campaign.id)
                if quiet is not None:
                    quiet.check(message)  # the slot may have been waited for
        except BaseException as exc:
            # queued_at says when the row is next expected back: a quiet-hours deferral at the
            # window's end, a stopped campaign never (resume dispatches it), else now.
            _transition(message_id, MessageStatus.SENDING, status=MessageStatus.PENDING,
                        attempts=Message.attempts - 1, queued_at=getattr(exc, "queued_at", utcnow()))
            raise
    try:
        sent = how.backend.send(to=message.to_phone, body=body)
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
        exc.retry_after_ms = int(how.reconcile_after_s * 1000) + 1000
        raise
    except TransientError as exc:
        _transition(message_id, MessageStatus.SENDING, status=MessageStatus.PENDING, error_code=exc.code,
                    reason=exc.reason, queued_at=utcnow())
        logger.warning("message %s to %s: transient error %s: %s", message_id, mask_phone(message.to_phone), exc.code, exc.reason)
        raise
    record = SentRecord(message_id, sent.sid, sent.segments or segments, message.campaign.id)
    if how.record_sent is None:
        _sent_records.submit(record)
    else:
        how.record_sent(record)
        outcome.written_behind = True
    outcome.status = MessageStatus.SENT
    return outcome


def _record_sent(message_id: int, sent: SendResult, segments: int, reason: str) -> None:
    now = db_datetime(utcnow())
    _HotSql.sent.execute((
        MessageStatus.SENT, sent.sid, now, sent.segments or segments, reason, now, message_id, MessageStatus.SENDING,
    ))


def _reconcile(message, outcome: SendOutcome, how: _How) -> SendOutcome:
    """A message left in ``sending``: if it is old enough that no worker can still be
    waiting for Twilio, look it up there; record it sent if found, else send it again."""
    started = message.sending_at
    if started is not None and started > utcnow() - dt.timedelta(seconds=how.reconcile_after_s):
        # Another worker may still be waiting for Twilio; if it died, come back to look.
        wait_s = (started + dt.timedelta(seconds=how.reconcile_after_s) - utcnow()).total_seconds()
        raise TransientError("being sent by another worker", code="in_flight", retry_after_ms=int(wait_s * 1000) + 1000)
    # The take moves sending_at (the in-flight guard of the next one), never the first
    # attempt's time, where the window at Twilio starts: a take whose lookup fails, or a
    # crash, cannot push a message Twilio accepted out of the window.
    first_attempt_at = message.first_attempt_at or started or utcnow()
    taken = (
        Message.update(sending_at=utcnow(), attempts=Message.attempts + 1, updated_at=utcnow(),
                       first_attempt_at=first_attempt_at)
        .where(Message.id == message.id, Message.status == MessageStatus.SENDING,
               Message.sending_at.is_null() if started is None else Message.sending_at == started)
        .execute()
    )
    if not taken:
        outcome.detail = "reconciled by another worker"
        return outcome
    since = first_attempt_at - dt.timedelta(minutes=1)
    try:
        found = how.backend.find_sent(to=message.to_phone, body=message.body, since=since)
    except TransientError as exc:
        # The next take must wait for the guard this one set.
        exc.retry_after_ms = max(exc.retry_after_ms or 0, int(how.reconcile_after_s * 1000) + 1000)
        raise
    if found is not None:
        _record_sent(message.id, found, message.segments or 1, reason="found at Twilio after an unanswered request")
        outcome.status, outcome.detail = MessageStatus.SENT, "reconciled"
        return outcome
    if message.attempts >= how.max_attempts:
        reason = f"no answer from Twilio after {message.attempts} attempts, and Twilio lists no such message"
        if _transition(message.id, MessageStatus.SENDING, status=MessageStatus.FAILED, error_code="unknown_outcome", reason=reason):
            record_event(message.campaign.id, "unknown_outcome", f"message {message.id}: {reason}", level="warning")
            outcome.status, outcome.detail = MessageStatus.FAILED, reason
        return outcome
    skipped = _skip_if_ineligible(message, outcome, MessageStatus.SENDING)
    if skipped is not None:
        return skipped
    if message.campaign.status != CampaignStatus.SENDING:
        _transition(message.id, MessageStatus.SENDING, status=MessageStatus.PENDING, queued_at=None)
        cancelled = settle_cancelled(message.id)
        outcome.status = MessageStatus.CANCELLED if cancelled else MessageStatus.PENDING
        outcome.detail = f"campaign is {message.campaign.status}"
        return outcome
    return _send_claimed(message, message.body, message.segments or 1, outcome, how)


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
