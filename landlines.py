"""Numbers that do not take SMS: a landline, or a carrier that cannot deliver to it.

Twilio says so with 21614 (at the send: "not a valid mobile number") or 30006 (in a
delivery report: "landline or unreachable carrier"), and an import may say so in a
``landline`` column. The number is marked, once, with the code that said it; nobody is
unsubscribed (the person may still want texts on another number), and the fan-out skips
the number with its own reason (``landline``) from then on.
"""

from __future__ import annotations

from peewee import IntegrityError

from connections import column_in
from models import Landline, Message, write_transaction

#: The Twilio error codes that mean "this number does not take SMS".
CODES = frozenset({"21614", "30006"})


def mark(e164: str | None, *, code: str, source: str) -> bool:
    """Mark ``e164`` as not taking SMS; True if it was not marked yet."""
    if not e164 or Landline.select().where(Landline.phone_e164 == e164).exists():
        return False
    try:
        with write_transaction():  # a savepoint inside a caller's transaction
            Landline.create(phone_e164=e164, code=str(code)[:16], source=source)
    except IntegrityError:
        return False
    return True


def mark_from_report(message_sid: str, error_code: str | None) -> bool:
    """A delivery report's 30006 marks the number its message went to."""
    if (error_code or "") not in CODES:
        return False
    row = Message.select(Message.to_phone).where(Message.twilio_sid == message_sid).first()
    return row is not None and mark(row.to_phone, code=error_code, source="delivery_report")


def known(numbers: list[str]) -> set[str]:
    """The numbers of ``numbers`` marked as not taking SMS."""
    return column_in("landline", "phone_e164", list(numbers))
