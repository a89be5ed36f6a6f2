"""Consent belongs to a phone number, not to a customer row: the one module that changes it.

An opt-out (an inbound STOP, Twilio's 21610, an import row saying opted out, an operator)
puts the E.164 number on the suppression list with its source, unsubscribes every customer
row that holds the number, and leaves an audit row per customer. The suppression outlives
customer rows (deleted, imported again); only a START from the number, or an operator with
a reason, lifts it. The fan-out skips suppressed numbers whatever a row says.
"""

from __future__ import annotations

import logging

from peewee import IntegrityError

from errors import InvalidPhone
from bulk_rows import insert_rows
from connections import column_in, in_list
from models import (Customer, Message, MessageStatus, OptOutEvent, Suppression, database, db_datetime, utcnow,
                    write_transaction)
from sms import normalize_phone

logger = logging.getLogger(__name__)


class Source:
    INBOUND = "inbound"
    TWILIO_21610 = "twilio_21610"
    IMPORT = "import"
    OPERATOR = "operator"


def customers_for_phone(e164: str) -> list[int]:
    """Customers with this number: by their stored E.164 number, their raw phone when it was
    stored in E.164 and no E.164 form was written yet (a row written by hand), or a message
    sent (or about to be sent) to it. Every part is read through an index."""
    sent_to = Message.select(Message.customer).where(
        Message.to_phone == e164,
        Message.twilio_sid.is_null(False) | Message.status.in_(MessageStatus.OPEN))  # texted, or about to be
    query = Customer.select(Customer.id).where(
        (Customer.phone_e164 == e164) | (Customer.phone_e164.is_null() & (Customer.phone == e164)) | Customer.id.in_(sent_to)
    )
    return [row.id for row in query.order_by(Customer.id)]


def opt_out(e164: str, *, source: str, keyword: str | None = None, message_sid: str | None = None,
            reason: str | None = None) -> list[int]:
    """Suppress ``e164`` and unsubscribe its customers (in the caller's transaction, if any);
    returns their ids. ``message_sid`` (an inbound message's) is unique: a replay raises
    IntegrityError and changes nothing."""
    return _change(e164, "stop", source=source, keyword=keyword, message_sid=message_sid, reason=reason)


def opt_in(e164: str, *, source: str, keyword: str | None = None, message_sid: str | None = None,
           reason: str | None = None) -> list[int]:
    """Lift the suppression of ``e164`` (a START from the number, or an operator with a
    reason) and resubscribe its customers; returns their ids."""
    if source == Source.OPERATOR and not (reason or "").strip():
        raise ValueError("an operator lifts a suppression only with a reason")
    return _change(e164, "start", source=source, keyword=keyword, message_sid=message_sid, reason=reason)


def _change(e164: str, action: str, *, source: str, keyword: str | None, message_sid: str | None,
            reason: str | None) -> list[int]:
    with write_transaction():
        customer_ids = customers_for_phone(e164)
        audit = [(cid, None) for cid in customer_ids] or [(None, None)]
        audit[0] = (audit[0][0], message_sid)
        for customer_id, sid in audit:
            OptOutEvent.create(customer=customer_id, phone_e164=e164, action=action, keyword=keyword or source,
                               message_sid=sid)
        if action == "stop":
            _suppress(e164, source, reason)
        else:
            Suppression.delete().where(Suppression.phone_e164 == e164).execute()
        if customer_ids:
            Customer.update(sms_subscribed=(action == "start"), updated_at=utcnow()).where(
                Customer.id.in_(customer_ids)).execute()
    return customer_ids


def opt_out_many(numbers: list[str], *, source: str, reason: str | None = None) -> int:
    """``opt_out`` for many numbers in a few statements (an import's opted-out rows): each
    number not yet suppressed is, and each customer row holding one that is still
    subscribed is unsubscribed, with an audit row; a number already in that state changes
    nothing (an import run twice writes nothing twice). Returns the rows unsubscribed."""
    numbers = sorted(set(numbers))
    if not numbers:
        return 0
    with write_transaction():
        already = suppressed(numbers)
        holders: dict[int, str] = {}
        wanted = set(numbers)
        for customer_id, e164, phone in database.execute_sql(
                f'SELECT "id", "phone_e164", "phone" FROM "customer" WHERE "sms_subscribed" = {database.param} '
                f'AND ("phone_e164" {in_list(numbers)} OR ("phone_e164" IS NULL AND "phone" {in_list(numbers)}))',
                [True, *numbers, *numbers]).fetchall():
            holders[customer_id] = e164 if e164 in wanted else phone
        open_statuses = sorted(MessageStatus.OPEN)
        for customer_id, phone in database.execute_sql(
                'SELECT m."customer_id", m."to_phone" FROM "message" m JOIN "customer" c ON c."id" = m."customer_id" '
                f'WHERE m."to_phone" {in_list(numbers)} AND c."sms_subscribed" = {database.param} '
                f'AND (m."twilio_sid" IS NOT NULL OR m."status" {in_list(open_statuses)})',
                [*numbers, True, *open_statuses]).fetchall():
            holders.setdefault(customer_id, phone)
        now = db_datetime(utcnow())
        fresh = [phone for phone in numbers if phone not in already]
        held = set(holders.values())
        audit = [(cid, phone, "stop", source, now) for cid, phone in sorted(holders.items())]
        audit += [(None, phone, "stop", source, now) for phone in fresh if phone not in held]
        insert_rows("optoutevent", ["customer_id", "phone_e164", "action", "keyword", "created_at"], audit)
        insert_rows("suppression", ["phone_e164", "source", "reason", "created_at"],
                    [(phone, source, (reason or "")[:200] or None, now) for phone in fresh], on_conflict_ignore=True)
        if holders:
            ids = sorted(holders)
            return database.execute_sql(
                f'UPDATE "customer" SET "sms_subscribed" = {database.param}, "updated_at" = {database.param} '
                f'WHERE "id" {in_list(ids)}', [False, now, *ids]).rowcount
    return 0


def _suppress(e164: str, source: str, reason: str | None) -> None:
    if Suppression.select().where(Suppression.phone_e164 == e164).exists():
        return
    try:
        with write_transaction():  # a savepoint: a concurrent opt-out of the number may win
            Suppression.create(phone_e164=e164, source=source, reason=(reason or "")[:200] or None)
    except IntegrityError:
        pass


def suppressed(numbers: list[str]) -> set[str]:
    """The numbers of ``numbers`` on the suppression list."""
    return column_in("suppression", "phone_e164", list(numbers))


def backfill_phone_e164(default_region: str, *, batch_size: int = 1000) -> int:
    """Store the E.164 form of every customer's number that has none yet (rows from before
    the import, written by hand), so that a STOP from the number finds them before they were
    ever texted; returns how many were written."""
    written, last_id = 0, 0
    while True:
        rows = list(Customer.select(Customer.id, Customer.phone, Customer.region)
                    .where(Customer.id > last_id, Customer.phone_e164.is_null(), Customer.phone.is_null(False))
                    .order_by(Customer.id).limit(batch_size))
        if not rows:
            return written
        with write_transaction():
            for row in rows:
                try:
                    e164 = normalize_phone(row.phone, row.region or default_region)
                except InvalidPhone:
                    continue
                written += Customer.update(phone_e164=e164).where(Customer.id == row.id).execute()
        last_id = rows[-1].id


def backfill_suppressions() -> int:
    """Put on the suppression list every number whose last recorded consent change (from
    before the list existed) was an opt-out, and every number Twilio refused with 21610;
    returns how many were added."""
    latest: dict[str, str] = {}
    for phone, action in OptOutEvent.select(OptOutEvent.phone_e164, OptOutEvent.action).order_by(OptOutEvent.id).tuples():
        latest[phone] = action
    stopped = {phone for phone, action in latest.items() if action == "stop"}
    missing = sorted(phone for phone in stopped if phone not in suppressed([phone]))
    for phone in missing:
        _suppress(phone, Source.INBOUND, "recorded before the suppression list")
    # Twilio's 21610 (the number replied STOP to the sender) was recorded on one row only.
    answered = {phone for (phone,) in Message.select(Message.to_phone).where(
        Message.error_code == "21610", Message.to_phone.is_null(False)).distinct().tuples()}
    refused = sorted(phone for phone in answered - set(latest) if phone not in suppressed([phone]))  # no later START
    for phone in refused:
        _suppress(phone, Source.TWILIO_21610, "Twilio answered 21610 before the suppression list")
    return len(missing) + len(refused)
