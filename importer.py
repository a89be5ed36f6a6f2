"""Customers in: a CSV file imported in batches, idempotently (run twice, nothing changes).

Each row is cleaned (``customer_rows.py``) and then created or updated by its upsert key:
``external_ref`` when the file has one, else the E.164 number. One transaction per batch,
so a large file streams in constant memory and a failure leaves whole batches behind.
Consent only ever moves towards "not subscribed" on import: a row saying opted in never
re-subscribes a customer who opted out (only a START from the number does), and a new
customer whose number has opted out before is created unsubscribed.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TextIO

from customer_rows import COLUMNS, CleanRow, FileError, RowCleaner, RowRejected, header_map
from links import new_link_code
from models import CustomAttribute, Customer, CustomerTag, Message, OptOutEvent, QRCode, utcnow, write_transaction

#: The fields an import compares and writes.
FIELDS = ("first_name", "last_name", "phone", "phone_e164", "region", "time_zone", "consent_at", "consent_source")


@dataclass
class ImportSummary:
    read: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: Counter = field(default_factory=Counter)
    #: Rows that said opted in for a number that had opted out: kept unsubscribed.
    kept_opted_out: int = 0
    dry_run: bool = False

    def lines(self) -> list[str]:
        verb = "would be " if self.dry_run else ""
        lines = [f"read {self.read}, {verb}created {self.created}, {verb}updated {self.updated}, "
                 f"unchanged {self.unchanged}, rejected {sum(self.rejected.values())}"]
        lines += [f"  rejected: {reason} {count}" for reason, count in sorted(self.rejected.items())]
        if self.kept_opted_out:
            lines.append(f"  kept opted out (the number had opted out): {self.kept_opted_out}")
        return lines


@dataclass
class Reject:
    line: int
    column: str
    reason: str
    detail: str
    raw: dict


def import_customers(
    source: TextIO,
    *,
    default_region: str,
    region: str | None = None,
    column_map: dict[str, str] | None = None,
    assume_opt_in: bool = False,
    dry_run: bool = False,
    batch_size: int = 500,
    on_reject: Callable[[Reject], None] = lambda reject: None,
    on_progress: Callable[[int], None] = lambda rows: None,
) -> ImportSummary:
    """Import the CSV ``source`` (an open text file, ``newline=""``); FileError if the file
    itself cannot be imported (no phone column, a header mapped twice, not UTF-8)."""
    reader = csv.reader(source)
    try:
        header = next(reader)
    except StopIteration:
        raise FileError("the file is empty") from None
    except UnicodeDecodeError:
        raise FileError("the file is not UTF-8 text") from None
    columns = header_map(header, column_map or {})
    if "sms_opt_in" not in columns.values() and not assume_opt_in:
        raise FileError("the file has no sms_opt_in column: add one, or pass --assume-opt-in if every row consented")
    cleaner = RowCleaner(columns, default_region=region or default_region, assume_opt_in=assume_opt_in)
    summary = ImportSummary(dry_run=dry_run)
    seen: dict[str, int] = {}
    codes: set[str] = set()  # QR codes given by earlier rows (a dry run writes none)
    for batch in _batches(_rows(reader, header), batch_size):
        clean: list[CleanRow] = []
        for line, values in batch:
            summary.read += 1
            try:
                row = cleaner.clean(values, line)
                row.raw = dict(zip(header, values))
                if row.key in seen:
                    raise RowRejected("external_ref" if row.external_ref else "phone", "duplicate_in_file",
                                      f"same customer as line {seen[row.key]}")
                seen[row.key] = line
                clean.append(row)
            except RowRejected as exc:
                summary.rejected[exc.reason] += 1
                on_reject(Reject(line, exc.column, exc.reason, exc.detail, dict(zip(header, values))))
        for reject in _write_batch(clean, summary, codes, dry_run=dry_run):
            summary.rejected[reject.reason] += 1
            on_reject(reject)
        on_progress(len(batch))
    if not dry_run and cleaner.attribute_names:
        _declare_attributes(cleaner.attribute_names)
    return summary


def _rows(reader, header: list[str]) -> Iterator[tuple[int, list[str]]]:
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError:
            raise FileError(f"line {reader.line_num + 1} is not UTF-8 text") from None
        except csv.Error as exc:
            raise FileError(f"line {reader.line_num}: {exc}") from None
        if any(v.strip() for v in values):
            yield reader.line_num, values


def _batches(rows: Iterable, size: int) -> Iterator[list]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_batch(rows: list[CleanRow], summary: ImportSummary, codes: set[str], *, dry_run: bool) -> list[Reject]:
    """Create or update one batch in one transaction; the rejects it found (a QR code
    already someone else's)."""
    if not rows:
        return []
    rejects: list[Reject] = []
    with write_transaction() as txn:
        by_ref = {c.external_ref: c for c in Customer.select().where(
            Customer.external_ref.in_([r.external_ref for r in rows if r.external_ref]))}
        by_phone: dict[str, Customer] = {}
        keyed_by_phone = [r.phone_e164 for r in rows if not r.external_ref]
        query = Customer.select().where(Customer.external_ref.is_null(), Customer.phone_e164.in_(keyed_by_phone))
        for c in query.order_by(Customer.id.desc()):
            by_phone[c.phone_e164] = c  # the oldest row wins
        opted_out = _opted_out([r.phone_e164 for r in rows])
        qr_of = {q.customer_id: q.code for q in QRCode.select().where(
            QRCode.customer.in_([c.id for c in [*by_ref.values(), *by_phone.values()]]))}
        for row in rows:
            existing = by_ref.get(row.external_ref) if row.external_ref else by_phone.get(row.phone_e164)
            if row.qr_code and row.qr_code != qr_of.get(existing.id if existing else None) and (
                    row.qr_code in codes or _qr_taken(row.qr_code)):
                rejects.append(Reject(row.line, "qr_code", "qr_code_taken", "this code is already in use", row.raw))
                continue
            if row.qr_code:
                codes.add(row.qr_code)
            if existing is None:
                summary.created += 1
                if row.subscribed and row.phone_e164 in opted_out:
                    summary.kept_opted_out += 1
                    row.subscribed = False
                if not dry_run:
                    _create(row)
            elif _update(existing, row, qr_of.get(existing.id), summary, dry_run=dry_run):
                summary.updated += 1
            else:
                summary.unchanged += 1
        if dry_run:
            txn.rollback()
    return rejects


def _opted_out(numbers: list[str]) -> set[str]:
    """Numbers whose last consent change was an opt-out."""
    latest: dict[str, str] = {}
    for event in OptOutEvent.select(OptOutEvent.phone_e164, OptOutEvent.action).where(
            OptOutEvent.phone_e164.in_(numbers)).order_by(OptOutEvent.id):
        latest[event.phone_e164] = event.action
    return {number for number, action in latest.items() if action == "stop"}


def _qr_taken(code: str) -> bool:
    return QRCode.select().where(QRCode.code == code).exists() or \
        Message.select().where(Message.link_code == code).exists()


def _new_qr_code() -> str:
    while True:
        code = new_link_code()
        if not _qr_taken(code):
            return code


def _create(row: CleanRow) -> None:
    now = utcnow()
    customer = Customer.create(
        **{name: getattr(row, name) for name in FIELDS}, external_ref=row.external_ref, sms_subscribed=row.subscribed,
        attributes=json.dumps(row.attributes, sort_keys=True) if row.attributes else None, created_at=now, updated_at=now,
    )
    QRCode.create(customer=customer, code=row.qr_code or _new_qr_code())
    if row.tags:
        CustomerTag.insert_many([(customer.id, tag) for tag in sorted(row.tags)],
                                fields=[CustomerTag.customer, CustomerTag.tag]).execute()
    if not row.subscribed:
        OptOutEvent.create(customer=customer, phone_e164=row.phone_e164, action="stop", keyword="import")


def _update(customer: Customer, row: CleanRow, qr_code: str | None, summary: ImportSummary, *, dry_run: bool) -> bool:
    """Bring ``customer`` to what the row says (consent only towards opted out); True if
    anything changed."""
    changes = {name: getattr(row, name) for name in FIELDS
               if name in row.present and getattr(row, name) != getattr(customer, name)}
    if row.attributes_present:
        merged = {**customer.attribute_values(), **row.attributes}
        if merged != customer.attribute_values():
            changes["attributes"] = json.dumps(merged, sort_keys=True)
    unsubscribe = "subscribed" in row.present and customer.sms_subscribed and not row.subscribed
    if "subscribed" in row.present and row.subscribed and not customer.sms_subscribed:
        summary.kept_opted_out += 1
    tags_now = None
    if row.tags_present:
        tags_now = {t.tag for t in CustomerTag.select(CustomerTag.tag).where(CustomerTag.customer == customer.id)}
    tags_change = tags_now is not None and tags_now != row.tags
    qr_change = bool(row.qr_code) and row.qr_code != qr_code
    if not (changes or unsubscribe or tags_change or qr_change):
        return False
    if dry_run:
        return True
    if unsubscribe:
        changes["sms_subscribed"] = False
        OptOutEvent.create(customer=customer, phone_e164=row.phone_e164, action="stop", keyword="import")
    changes["updated_at"] = utcnow()
    Customer.update(**changes).where(Customer.id == customer.id).execute()
    if tags_change:
        CustomerTag.delete().where(CustomerTag.customer == customer.id, CustomerTag.tag.not_in(sorted(row.tags))).execute()
        missing = sorted(row.tags - tags_now)
        if missing:
            CustomerTag.insert_many([(customer.id, tag) for tag in missing],
                                    fields=[CustomerTag.customer, CustomerTag.tag]).execute()
    if qr_change:
        if qr_code is None:
            QRCode.create(customer=customer, code=row.qr_code)
        else:
            QRCode.update(code=row.qr_code).where(QRCode.customer == customer.id).execute()
    return True


def _declare_attributes(names: set[str]) -> None:
    known = {a.name for a in CustomAttribute.select(CustomAttribute.name)}
    for name in sorted(names - known):
        CustomAttribute.get_or_create(name=name)


__all__ = ["COLUMNS", "FileError", "ImportSummary", "Reject", "import_customers"]
