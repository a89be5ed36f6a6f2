"""A campaign's results out (``campaign export ID``): one CSV row per customer of the
campaign (its message row), with the outcome, the reason, Twilio's SID, the delivery report
and the customer's clicks on the campaign.

Streamed: the rows are read by id in batches (keyset pagination, ``WHERE id > last``), each
batch written before the next is read, so memory does not grow with the campaign and no
transaction or cursor is held open between batches (no named cursor on PostgreSQL, which
a pooler in transaction mode would not keep). Phone numbers are masked unless asked for in
full; a text cell that a spreadsheet would run as a formula is written with a leading
apostrophe.
"""

from __future__ import annotations

import csv
from collections import Counter
from typing import TextIO

from peewee import fn

from models import Click, Customer, Message
from sms import mask_phone

COLUMNS = ("customer_id", "external_ref", "phone", "outcome", "reason_code", "reason", "twilio_sid", "delivery_status",
           "delivery_error_code", "sent_at", "delivered_at", "clicks")

#: What a spreadsheet takes for the start of a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value) -> str:
    """A text cell as written: empty for None, an apostrophe before a formula's start
    (a phone number's leading + is left alone: it is a number, not a formula)."""
    if value is None:
        return ""
    text = str(value)
    if text.startswith(_FORMULA_STARTS) and not (text.startswith("+") and text[1:].replace("*", "").isdigit()):
        return "'" + text
    return text


def export_campaign(campaign_id: int, out: TextIO, *, full_phone: bool = False, batch_size: int = 1000) -> Counter:
    """Write the campaign's rows to ``out`` (a header, then one line per customer); returns
    the count of rows per outcome (the message status), which equals the analytics'."""
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    outcomes: Counter = Counter()
    last_id = 0
    while True:
        rows = list(
            Message.select(Message.id, Message.customer, Message.status, Message.to_phone, Message.error_code, Message.reason,
                           Message.twilio_sid, Message.delivery_status, Message.delivery_error_code, Message.sent_at,
                           Message.delivered_at, Customer.external_ref, Customer.phone)
            .join(Customer, on=(Customer.id == Message.customer))
            .where(Message.campaign == campaign_id, Message.id > last_id)
            .order_by(Message.id)
            .limit(batch_size)
            .objects()
        )
        if not rows:
            return outcomes
        customers = [row.customer_id for row in rows]
        clicks = dict(
            Click.select(Click.customer, fn.COUNT(Click.id))
            .where(Click.campaign == campaign_id, Click.customer.in_(customers))
            .group_by(Click.customer)
            .tuples()
        )
        for row in rows:
            phone = row.to_phone or row.phone
            writer.writerow([
                row.customer_id, _cell(row.external_ref), _cell(phone if full_phone else (mask_phone(phone) if phone else "")),
                row.status, _cell(row.error_code), _cell(row.reason), _cell(row.twilio_sid), _cell(row.delivery_status),
                _cell(row.delivery_error_code), row.sent_at.isoformat() if row.sent_at else "",
                row.delivered_at.isoformat() if row.delivered_at else "", clicks.get(row.customer_id, 0),
            ])
            outcomes[row.status] += 1
        last_id = rows[-1].id
