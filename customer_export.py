"""Customers out: every customer as a CSV row, with its consent state and whether its number
is suppressed, in the import's own columns, so that an export imported again changes
nothing. Streamed by id in batches: memory does not grow with the list."""

from __future__ import annotations

import csv
from typing import TextIO

from customer_rows import EXPORT_ONLY
from models import CustomAttribute, Customer, CustomerTag, QRCode, Suppression

#: Columns the import reads, then the export's own (which the import ignores).
COLUMNS = ("external_ref", "first_name", "last_name", "phone", "region", "time_zone", "sms_opt_in", "opt_in_at",
           "opt_in_source", "tags", "qr_code")


def export_customers(out: TextIO, *, batch_size: int = 1000) -> int:
    """Write every customer to ``out``; returns how many."""
    attributes = [a.name for a in CustomAttribute.select(CustomAttribute.name).order_by(CustomAttribute.name)]
    writer = csv.writer(out)
    writer.writerow([*COLUMNS, *attributes, *EXPORT_ONLY])
    written, last_id = 0, 0
    while True:
        customers = list(Customer.select().where(Customer.id > last_id).order_by(Customer.id).limit(batch_size))
        if not customers:
            return written
        ids = [c.id for c in customers]
        tags: dict[int, list[str]] = {}
        for tag in CustomerTag.select().where(CustomerTag.customer.in_(ids)).order_by(CustomerTag.tag):
            tags.setdefault(tag.customer_id, []).append(tag.tag)
        codes = {q.customer_id: q.code for q in QRCode.select().where(QRCode.customer.in_(ids))}
        numbers = sorted({c.phone_e164 for c in customers if c.phone_e164})
        suppressed = {s.phone_e164: s.source for s in Suppression.select().where(Suppression.phone_e164.in_(numbers))}
        for c in customers:
            values = c.attribute_values()
            writer.writerow([
                c.external_ref or "", c.first_name, c.last_name, c.phone or "", c.region or "", c.time_zone or "",
                "yes" if c.sms_subscribed else "no", c.consent_at.isoformat() if c.consent_at else "",
                c.consent_source or "", ";".join(tags.get(c.id, [])), codes.get(c.id, ""),
                *(values.get(name, "") for name in attributes),
                c.phone_e164 or "", "yes" if c.phone_e164 in suppressed else "no", suppressed.get(c.phone_e164, ""),
            ])
            written += 1
        last_id = ids[-1]
