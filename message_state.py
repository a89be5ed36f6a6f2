"""The one owner of a message row's state: every change of ``Message.status`` (and of the
times and counts that go with it) is a function here, with the same meaning on PostgreSQL
and SQLite. The fan-out, the dispatcher, the send path, the sweeper, the lifecycle and the
writer thread call these; nobody else writes ``Message.status``.

A message moves ``pending -> sending -> sent | failed``, or ``pending -> skipped |
cancelled``, and back ``sending -> pending`` when a send was not made after all. Each change
is a conditional UPDATE on the state it expects, so a duplicated or redelivered broker
message can never make it twice.
"""

from __future__ import annotations

import datetime as dt

from peewee import fn

from models import (
    Campaign, CampaignStatus, Customer, HotStatement, Landline, Message, MessageStatus, QRCode, Suppression, database,
    db_datetime, is_postgres, utcnow, write_transaction,
)
from message_types import Claimed, SentRecord

#: The campaign's sender, read with the claim (a messaging service wins, as in ``senders.of``).
_SENDER = ('(SELECT COALESCE(c."messaging_service_sid", c."from_number") FROM "campaign" c '
           'WHERE c."id" = "message"."campaign_id")')


class _Sql:
    """The hot statements, written out once: building them with the query builder on every
    message cost more CPU than the rest of the send."""

    #: Claims a message rendered at the fan-out if it is still pending, its campaign sending,
    #: its customer subscribed and with a QR code, its number not suppressed (whichever row
    #: the STOP reached), and returns what the send needs. The first
    #: attempt's time is kept: reconciliation looks for the message at Twilio since then.
    claim_rendered = HotStatement("send_claim_rendered", (
        'UPDATE "message" SET "status" = {p}, "attempts" = "attempts" + 1, "sending_at" = {p}, '
        '"first_attempt_at" = COALESCE("first_attempt_at", {p}), "deferrals" = {p}, "updated_at" = {p} '
        'WHERE "id" = {p} AND "status" = {p} AND "body" IS NOT NULL '
        'AND EXISTS (SELECT 1 FROM "campaign" c WHERE c."id" = "message"."campaign_id" AND c."status" = {p}) '
        'AND EXISTS (SELECT 1 FROM "customer" u WHERE u."id" = "message"."customer_id" AND u."sms_subscribed") '
        'AND EXISTS (SELECT 1 FROM "qrcode" q WHERE q."customer_id" = "message"."customer_id") '
        'AND NOT EXISTS (SELECT 1 FROM "suppression" s WHERE s."phone_e164" = "message"."to_phone") '
        'RETURNING "id", "to_phone", "body", "segments", "campaign_id", "customer_id", '
        '(SELECT c."time_zone" FROM "campaign" c WHERE c."id" = "message"."campaign_id"), '
        '(SELECT u."time_zone" FROM "customer" u WHERE u."id" = "message"."customer_id"), '
        + _SENDER
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
        'AND NOT EXISTS (SELECT 1 FROM "suppression" s WHERE s."phone_e164" = "message"."to_phone") '
        'RETURNING "id", "to_phone", "body", "segments", "campaign_id", "customer_id", '
        '(SELECT c."time_zone" FROM "campaign" c WHERE c."id" = "message"."campaign_id"), '
        '(SELECT u."time_zone" FROM "customer" u WHERE u."id" = "message"."customer_id"), '
        + _SENDER
    ))
    #: Claims a message rendered at the send (rows of earlier versions), writing its text.
    claim_rendering = HotStatement("send_claim", (
        'UPDATE "message" SET "status" = {p}, "body" = {p}, "encoding" = {p}, "segments" = {p}, "link_code" = {p}, '
        '"attempts" = "attempts" + 1, "sending_at" = {p}, "first_attempt_at" = COALESCE("first_attempt_at", {p}), '
        '"deferrals" = {p}, "updated_at" = {p} WHERE "id" = {p} AND "status" = {p} '
        'AND EXISTS (SELECT 1 FROM "campaign" WHERE "id" = {p} AND "status" = {p}) '
        'AND NOT EXISTS (SELECT 1 FROM "suppression" s WHERE s."phone_e164" = "message"."to_phone")'
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


def _transition(message_id: int, expected: str | tuple[str, ...], **changes) -> bool:
    """Move one message from ``expected`` to new values; False if someone else moved it."""
    expected = (expected,) if isinstance(expected, str) else expected
    changes.setdefault("updated_at", utcnow())
    return bool(Message.update(**changes).where(Message.id == message_id, Message.status.in_(expected)).execute())


# ----------------------------------------------------------------------------- created

#: The columns of a row the fan-out writes, in the order ``insert_outcomes`` takes them.
OUTCOME_COLUMNS = (
    "campaign_id", "customer_id", "status", "to_phone", "body", "encoding", "segments", "error_code", "reason",
    "attempts", "deferrals", "created_at", "updated_at", "link_code", "time_zone",
)


def insert_outcomes(rows: list[tuple]) -> None:
    """Insert the fan-out's rows (``OUTCOME_COLUMNS``); a (campaign, customer) row that exists
    is kept as it is. Raises IntegrityError if a link code is taken (only it can collide).

    Written out by hand: the query builder spent more time wrapping the values of a batch
    than the database spent storing them."""
    p = database.param
    values = ", ".join(["(" + ", ".join([p] * len(OUTCOME_COLUMNS)) + ")"] * len(rows))
    columns = ", ".join(f'"{column}"' for column in OUTCOME_COLUMNS)
    database.execute_sql(
        f'INSERT INTO "message" ({columns}) VALUES {values} ON CONFLICT ("campaign_id", "customer_id") DO NOTHING',
        [value for row in rows for value in row],
    )


# ----------------------------------------------------------------------- pending -> sending

def claim_rendered(items: list[tuple[int, int]], *, claimed_at: dt.datetime) -> list[Claimed | None]:
    """Claim each (message id, deferrals) if it can be sent now (see ``_Sql.claim_rendered``),
    in one statement; None for a message not claimed. An id asked twice is claimed for its
    first request only, on PostgreSQL as on SQLite."""
    seen: set[int] = set()
    firsts = [not (message_id in seen or seen.add(message_id)) for message_id, _ in items]
    unique = [item for item, first in zip(items, firsts) if first]
    now = db_datetime(claimed_at)
    if is_postgres():
        ids = [message_id for message_id, _ in unique]
        rows = _Sql.claim_rendered_many.execute((
            MessageStatus.SENDING, now, now, [deferrals for _, deferrals in unique], ids, now, ids,
            MessageStatus.PENDING, CampaignStatus.SENDING,
        )).fetchall()
    else:
        rows = []
        with write_transaction():
            for message_id, deferrals in unique:
                rows += _Sql.claim_rendered.execute((
                    MessageStatus.SENDING, now, now, deferrals, now, message_id, MessageStatus.PENDING, CampaignStatus.SENDING,
                )).fetchall()  # all rows: SQLite ends the statement only then
    claimed = {row[0]: Claimed(*row) for row in rows}
    return [claimed.get(message_id) if first else None for (message_id, _), first in zip(items, firsts)]


def claim_rendering(message_id: int, *, campaign_id: int, body: str, encoding: str, segments: int, link_code: str,
                    deferrals: int, claimed_at: dt.datetime) -> bool:
    """Claim a message rendered now, writing its text, if it and its campaign still allow."""
    now = db_datetime(claimed_at)
    return bool(_Sql.claim_rendering.execute((
        MessageStatus.SENDING, body, encoding, segments, link_code, now, now, deferrals, now,
        message_id, MessageStatus.PENDING, campaign_id, CampaignStatus.SENDING,
    )).rowcount)


def take_for_reconcile(message_id: int, *, started: dt.datetime | None, first_attempt_at: dt.datetime) -> dt.datetime | None:
    """Take a message left ``sending`` (claimed at ``started``) to look it up at Twilio: its
    ``sending_at`` moves (the in-flight guard of the next take), its first attempt's time
    never does. Returns the take's time, None if another worker took it first."""
    taken_at = utcnow()
    taken = (
        Message.update(sending_at=taken_at, attempts=Message.attempts + 1, updated_at=taken_at, first_attempt_at=first_attempt_at)
        .where(Message.id == message_id, Message.status == MessageStatus.SENDING,
               Message.sending_at.is_null() if started is None else Message.sending_at == started)
        .execute()
    )
    return taken_at if taken else None


def undo_take(message_id: int, taken_at: dt.datetime) -> bool:
    """A take whose lookup at Twilio failed costs no attempt: only requests count."""
    return bool(
        Message.update(attempts=Message.attempts - 1)
        .where(Message.id == message_id, Message.status == MessageStatus.SENDING, Message.sending_at == taken_at)
        .execute()
    )


def sid_recorded_elsewhere(sid: str, message_id: int) -> bool:
    """Another message already holds this SID (so it cannot be this message's)."""
    return Message.select(Message.id).where(Message.twilio_sid == sid, Message.id != message_id).exists()


# ----------------------------------------------------------------------- sending -> pending

def release_claim(message_id: int, claimed_at) -> bool:
    """Undo a claim made at ``claimed_at`` that was never followed by a send (its batch
    failed, or the thread running it was interrupted)."""
    return bool(
        Message.update(status=MessageStatus.PENDING, attempts=Message.attempts - 1, queued_at=utcnow(), updated_at=utcnow())
        .where(Message.id == message_id, Message.status == MessageStatus.SENDING, Message.sending_at == claimed_at)
        .execute()
    )


def put_back(message_id: int, *, queued_at: dt.datetime | None, undo_attempt: bool) -> bool:
    """A claimed message that was not sent (throttled, quiet hours, paused, a sender error)
    goes back to pending; ``queued_at`` says when it is next expected back (None: only a
    dispatcher brings it back)."""
    changes = {"status": MessageStatus.PENDING, "queued_at": queued_at}
    if undo_attempt:
        changes["attempts"] = Message.attempts - 1
    return _transition(message_id, MessageStatus.SENDING, **changes)


def retry_later(message_id: int, *, code: str | None, reason: str) -> bool:
    """A send that surely did not reach Twilio (a 429, a refused connection): pending again."""
    return _transition(message_id, MessageStatus.SENDING, status=MessageStatus.PENDING, error_code=code, reason=reason,
                       queued_at=utcnow())


def note_maybe_sent(message_id: int, *, code: str | None, reason: str) -> bool:
    """A send whose outcome is unknown stays ``sending`` (to be reconciled), with the reason."""
    return _transition(message_id, MessageStatus.SENDING, error_code=code, reason=reason)


# ---------------------------------------------------------------------------- outcomes

def record_sent(records: list[SentRecord]) -> None:
    """Record many accepted sends in one statement; a row no longer ``sending`` (reconciled
    meanwhile) is left as it is."""
    now = db_datetime(utcnow())
    if is_postgres():
        ids = [record.message_id for record in records]
        _Sql.sent_many.execute((
            MessageStatus.SENT, now, now, [record.sid for record in records], ids,
            [record.segments for record in records], ids, ids, MessageStatus.SENDING,
        ))
    else:
        with write_transaction():
            for record in records:
                _Sql.sent.execute((
                    MessageStatus.SENT, record.sid, now, record.segments, None, now, record.message_id, MessageStatus.SENDING,
                ))


def record_found(message_id: int, *, sid: str, segments: int, reason: str) -> None:
    """Record a message that reconciliation found at Twilio."""
    now = db_datetime(utcnow())
    _Sql.sent.execute((MessageStatus.SENT, sid, now, segments, reason, now, message_id, MessageStatus.SENDING))


def fail(message_id: int, expected: str, *, code: str | None, reason: str) -> bool:
    return _transition(message_id, expected, status=MessageStatus.FAILED, error_code=code, reason=reason)


def skip(message_id: int, expected: str, *, code: str, reason: str) -> bool:
    return _transition(message_id, expected, status=MessageStatus.SKIPPED, error_code=code, reason=reason)


# --------------------------------------------------------------------------- cancelled

def cancel_pending(campaign_id: int, reason: str) -> int:
    """Every pending message of the campaign is recorded cancelled; returns how many."""
    return (
        Message.update(status=MessageStatus.CANCELLED, error_code="cancelled", reason=reason, updated_at=utcnow())
        .where(Message.campaign == campaign_id, Message.status == MessageStatus.PENDING)
        .execute()
    )


def cancel_pending_of_cancelled_campaigns() -> int:
    """Pending messages left under cancelled campaigns (put back after the cancel) are cancelled."""
    cancelled = Campaign.select(Campaign.id).where(Campaign.status == CampaignStatus.CANCELLED)
    return (
        Message.update(status=MessageStatus.CANCELLED, error_code="cancelled", reason="campaign cancelled", updated_at=utcnow())
        .where(Message.status == MessageStatus.PENDING, Message.campaign.in_(cancelled))
        .execute()
    )


def settle_cancelled(message_id: int) -> bool:
    """A message put back to pending after its campaign was cancelled (it was in flight
    when the cancel came) is recorded as cancelled too."""
    cancelled = Campaign.select(Campaign.id).where(Campaign.id == Message.campaign, Campaign.status == CampaignStatus.CANCELLED)
    return bool(
        Message.update(status=MessageStatus.CANCELLED, error_code="cancelled", reason="campaign cancelled", updated_at=utcnow())
        .where(Message.id == message_id, Message.status == MessageStatus.PENDING, fn.EXISTS(cancelled))
        .execute()
    )


# ----------------------------------------------------------------------- in the broker

def mark_queued(ids: list[int], still) -> list[int]:
    """Mark the rows of ``ids`` for which ``still`` holds (a condition on the row itself, so
    that PostgreSQL tests it again on a row another dispatcher just changed) as enqueued
    now; returns those marked, so that two dispatchers never enqueue one row twice."""
    if not ids:
        return []
    marked = Message.update(queued_at=utcnow()).where(Message.id.in_(ids), still).returning(Message.id).execute()
    return sorted(row.id for row in marked)


def expect_back(message_id: int, *, at: dt.datetime) -> bool:
    """A pending message deferred in the broker until ``at`` (quiet hours): the dispatcher
    neither counts it in flight nor takes it for lost before then."""
    return _transition(message_id, MessageStatus.PENDING, queued_at=at)


def unqueue_pending(campaign_id: int) -> int:
    """A resumed campaign's pending rows are for its new dispatcher to enqueue."""
    return Message.update(queued_at=None).where(Message.campaign == campaign_id, Message.status == MessageStatus.PENDING).execute()


# ------------------------------------------------------------- an operator's retry

def _eligible_again():
    """The row's customer may still be texted: subscribed, with a QR code, and its number
    neither on the suppression list nor known as a landline (a retry never reaches them)."""
    subscribed = Customer.select(Customer.id).where(Customer.id == Message.customer, Customer.sms_subscribed == True)  # noqa: E712
    has_code = QRCode.select(QRCode.id).where(QRCode.customer == Message.customer)
    suppressed = Suppression.select(Suppression.id).where(Suppression.phone_e164 == Message.to_phone)
    landline = Landline.select(Landline.id).where(Landline.phone_e164 == Message.to_phone)
    return fn.EXISTS(subscribed) & fn.EXISTS(has_code) & ~fn.EXISTS(suppressed) & ~fn.EXISTS(landline)


def retry_not_sent(campaign_id: int, codes: tuple[str, ...]) -> list[int]:
    """``failed -> pending`` for rows failed with one of ``codes`` (no request reached Twilio:
    ``retries_exhausted``) whose customer may still be texted; returns their ids. Attempts
    start again; the first attempt's time is kept (a later lookup searches from it)."""
    return _retry_failed(campaign_id, codes, status=MessageStatus.PENDING, sending_at=None)


def retry_maybe_sent(campaign_id: int, codes: tuple[str, ...]) -> list[int]:
    """``failed -> sending`` for rows failed with one of ``codes`` (``unknown_outcome``: Twilio
    may have it after all) whose customer may still be texted; returns their ids. In
    ``sending`` a row is looked up at Twilio before any send (``sending._reconcile``), from
    its first attempt's time (kept, as ``sending_at``); attempts start again."""
    return _retry_failed(campaign_id, codes, status=MessageStatus.SENDING,
                         sending_at=fn.COALESCE(Message.sending_at, Message.first_attempt_at, utcnow()))


def _retry_failed(campaign_id: int, codes: tuple[str, ...], **changes) -> list[int]:
    """Conditional on the state: two retries at once move a row once."""
    moved: list[int] = []
    for code in codes:
        rows = (
            Message.update(attempts=0, deferrals=0, queued_at=None, error_code=None,
                           reason=f"retried by an operator after {code}", updated_at=utcnow(), **changes)
            .where(Message.campaign == campaign_id, Message.status == MessageStatus.FAILED, Message.error_code == code,
                   _eligible_again())
            .returning(Message.id)
            .execute()
        )
        moved += [row.id for row in rows]
    return sorted(moved)


def retry_undelivered(campaign_id: int, codes: tuple[str, ...], *, sent_before: dt.datetime) -> list[tuple[int, str, str]]:
    """``sent -> pending`` for rows reported undelivered (or failed) with one of the carrier
    ``codes``, sent before ``sent_before``, whose customer may still be texted; returns (id,
    old SID, code) of each. SID, report and first attempt's time are cleared: the new send's
    window at Twilio starts at its claim, after the old message (``sent_before`` keeps the
    minute the lookup looks back), so a lookup cannot take the old message for the new."""
    now = utcnow()
    candidates = (
        Message.select(Message.id, Message.twilio_sid, Message.delivery_error_code)
        .where(Message.campaign == campaign_id, Message.status == MessageStatus.SENT,
               Message.delivery_status.in_(["undelivered", "failed"]), Message.delivery_error_code.in_(list(codes)),
               Message.sent_at < sent_before, _eligible_again())
        .tuples()
    )
    moved = []
    for message_id, sid, code in candidates:
        # On the SID too: a row resent meanwhile is not taken back by a retry that read it before.
        changed = (
            Message.update(status=MessageStatus.PENDING, twilio_sid=None, delivery_status=None, delivery_error_code=None,
                           delivered_at=None, sent_at=None, attempts=0, deferrals=0, queued_at=None, sending_at=None,
                           first_attempt_at=None, error_code=None,
                           reason=f"retried by an operator after undelivered ({code})", updated_at=now)
            .where(Message.id == message_id, Message.status == MessageStatus.SENT, Message.twilio_sid == sid)
            .execute()
        )
        if changed:
            moved.append((message_id, sid, code))
    return moved

