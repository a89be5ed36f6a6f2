"""The inbox: the texts numbers send us that are neither an opt-out nor an opt-in.

An opt-out or opt-in is consent (``consent.py``, audited as ``OptOutEvent`` rows); every
other inbound text (a question, a HELP, "thanks!") is kept here, once per Twilio
MessageSid (a replayed webhook adds nothing), with the customer it came from when one is
known, so that an operator can read a customer's replies (``inbox_for``) or a number's
(``inbox_for_phone``; ``python -m cli customers inbox PHONE``).

A body is kept as data, not as something to print as is: control and format characters
are removed (a reply cannot move an operator's cursor or forge a line), and it is cut at
1,600 characters, the longest text Twilio delivers.
"""

from __future__ import annotations

from dataclasses import dataclass

from peewee import IntegrityError

import consent
from connections import write_transaction
from models import Customer, InboundMessage, Message, utcnow
from names import clean_text

#: The longest text Twilio delivers (10 segments of 160).
MAX_BODY_CHARS = 1600


@dataclass(frozen=True)
class Reply:
    phone_e164: str
    customer_id: int | None
    body: str
    message_sid: str
    received_at: object


def clean_body(body: str | None) -> str:
    """``body`` as the inbox keeps it: one line of printable text, at most 1,600 characters."""
    return clean_text((body or "")[: MAX_BODY_CHARS * 2], max_length=MAX_BODY_CHARS * 2)[:MAX_BODY_CHARS]


def sender_customer(e164: str) -> int | None:
    """Whose reply a text from ``e164`` is: the customer last texted at that number, else the
    first customer holding it (``consent.customers_for_phone``), else nobody."""
    last = (Message.select(Message.customer).where(Message.to_phone == e164, Message.twilio_sid.is_null(False))
            .order_by(Message.sent_at.desc(), Message.id.desc()).first())
    if last is not None:
        return last.customer_id
    holders = consent.customers_for_phone(e164)
    return holders[0] if holders else None


def record_reply(e164: str, body: str | None, message_sid: str) -> InboundMessage | None:
    """Keep one inbound text; None if this MessageSid was kept already (a replay)."""
    try:
        with write_transaction():
            return InboundMessage.create(phone_e164=e164, customer=sender_customer(e164), body=clean_body(body),
                                         message_sid=message_sid, received_at=utcnow())
    except IntegrityError:
        if InboundMessage.select().where(InboundMessage.message_sid == message_sid).exists():
            return None
        raise


def _replies(condition) -> list[Reply]:
    query = InboundMessage.select().where(condition).order_by(InboundMessage.received_at, InboundMessage.id)
    return [Reply(r.phone_e164, r.customer_id, r.body, r.message_sid, r.received_at) for r in query]


def inbox_for_phone(e164: str) -> list[Reply]:
    """Every text kept from ``e164``, oldest first."""
    return _replies(InboundMessage.phone_e164 == e164)


def inbox_for(customer_id: int) -> list[Reply]:
    """A customer's replies, oldest first: those kept as theirs, and any from their number."""
    customer = Customer.get_or_none(Customer.id == customer_id)
    condition = InboundMessage.customer == customer_id
    if customer is not None and customer.phone_e164:
        condition |= InboundMessage.phone_e164 == customer.phone_e164
    return _replies(condition)
