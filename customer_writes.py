"""One batch of an import, written in one transaction with a few statements: what the
batch's rows name is read at once (customers by key, their QR codes and tags, suppressed
numbers, codes in use), new customers are inserted together, changed ones updated."""

from __future__ import annotations

import json
import sys

import consent
from bulk_rows import insert_rows, new_ids, write_new_rows
from connections import in_list
from customer_rows import CleanRow
from link_codes import message_codes_in_use, unused_codes
from models import Customer, CustomerTag, QRCode, database, db_datetime, utcnow, write_transaction

#: The customer fields an import compares and writes.
FIELDS = ("first_name", "last_name", "phone", "phone_e164", "region", "time_zone", "consent_at", "consent_source")


class Batch:
    """Use as a context manager; a dry run rolls everything back at the end.

    Parameters:
      rows: the batch's cleaned rows (one per customer).
      dry_run: write nothing.
    """

    def __init__(self, rows: list[CleanRow], *, dry_run: bool) -> None:
        self.rows, self.dry_run = rows, dry_run
        self._new: list[CleanRow] = []

    def __enter__(self) -> "Batch":
        self._txn = write_transaction()
        self._transaction = self._txn.__enter__()
        try:
            self._read()
        except BaseException:
            self._txn.__exit__(*sys.exc_info())  # no transaction left open on a failed read
            raise
        return self

    def _read(self) -> None:
        refs = [r.external_ref for r in self.rows if r.external_ref]
        phones = [r.phone_e164 for r in self.rows if not r.external_ref]
        self._by_ref = {c.external_ref: c for c in Customer.raw(
            f'SELECT * FROM "customer" WHERE "external_ref" {in_list(refs)}', *refs)} if refs else {}
        self._by_phone: dict[str, Customer] = {}
        if phones:
            for customer in Customer.raw(f'SELECT * FROM "customer" WHERE "external_ref" IS NULL AND "phone_e164" '
                                         f'{in_list(phones)} ORDER BY "id" DESC', *phones):
                self._by_phone[customer.phone_e164] = customer  # the oldest row wins
        ids = [c.id for c in [*self._by_ref.values(), *self._by_phone.values()]]
        self._qr_of = dict(_select(f'SELECT "customer_id", "code" FROM "qrcode" WHERE "customer_id" {in_list(ids)}', ids))
        self._tags_of: dict[int, set[str]] = {}
        for customer_id, tag in _select(f'SELECT "customer_id", "tag" FROM "customertag" WHERE "customer_id" {in_list(ids)}', ids):
            self._tags_of.setdefault(customer_id, set()).add(tag)
        self._suppressed = consent.suppressed(sorted({r.phone_e164 for r in self.rows}))
        given = sorted({r.qr_code for r in self.rows if r.qr_code})
        self._code_owner = dict(_select(f'SELECT "code", "customer_id" FROM "qrcode" WHERE "code" {in_list(given)}', given))
        self._link_codes = message_codes_in_use(given)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.dry_run and exc_type is None:
            self._transaction.rollback()
        self._txn.__exit__(exc_type, exc, tb)

    def existing(self, row: CleanRow) -> Customer | None:
        return self._by_ref.get(row.external_ref) if row.external_ref else self._by_phone.get(row.phone_e164)

    def suppressed(self, e164: str) -> bool:
        return e164 in self._suppressed

    def code_taken(self, code: str, customer: Customer | None) -> bool:
        """A QR code some other customer has, or some message's link has."""
        owner = self._code_owner.get(code)
        return (owner is not None and (customer is None or owner != customer.id)) or code in self._link_codes

    def create(self, row: CleanRow) -> None:
        self._new.append(row)

    def update(self, customer: Customer, row: CleanRow) -> bool:
        """Bring ``customer`` to what the row says (consent is the caller's: only towards
        opted out); True if anything changes."""
        changes = {name: getattr(row, name) for name in FIELDS
                   if name in row.present and getattr(row, name) != getattr(customer, name)}
        if row.attributes_present:
            merged = {**customer.attribute_values(), **row.attributes}
            if merged != customer.attribute_values():
                changes["attributes"] = json.dumps(merged, sort_keys=True)
        unsubscribes = "subscribed" in row.present and customer.sms_subscribed and not row.subscribed
        tags_now = self._tags_of.get(customer.id, set())
        tags_change = row.tags_present and tags_now != row.tags
        qr_now = self._qr_of.get(customer.id)
        qr_change = bool(row.qr_code) and row.qr_code != qr_now
        if not (changes or unsubscribes or tags_change or qr_change):
            return False
        if changes:
            Customer.update(**changes, updated_at=utcnow()).where(Customer.id == customer.id).execute()
        if tags_change:
            CustomerTag.delete().where(CustomerTag.customer == customer.id, CustomerTag.tag.not_in(sorted(row.tags))).execute()
            _insert_tags([(customer.id, tag) for tag in sorted(row.tags - tags_now)])
        if qr_change and qr_now is None:
            QRCode.create(customer=customer, code=row.qr_code)
        elif qr_change:
            QRCode.update(code=row.qr_code).where(QRCode.customer == customer.id).execute()
        return True

    def flush(self) -> None:
        """Insert the batch's new customers with their QR codes and tags."""
        if not self._new:
            return
        now = db_datetime(utcnow())
        columns = [*FIELDS, "external_ref", "sms_subscribed", "attributes", "created_at", "updated_at"]
        values = [tuple(db_datetime(v) if name == "consent_at" and v else v for name, v in
                        ((name, getattr(row, name)) for name in FIELDS)) + (
            row.external_ref, row.subscribed, json.dumps(row.attributes, sort_keys=True) if row.attributes else None, now, now)
            for row in self._new]
        ids = new_ids("customer", len(values))
        write_new_rows("customer", ["id", *columns], [(cid, *row) for cid, row in zip(ids, values)])
        fresh = iter(unused_codes(sum(1 for row in self._new if not row.qr_code)))
        write_new_rows("qrcode", ["customer_id", "code"], [(cid, row.qr_code or next(fresh)) for cid, row in zip(ids, self._new)])
        write_new_rows("customertag", ["customer_id", "tag"],
                       [(cid, tag) for cid, row in zip(ids, self._new) for tag in sorted(row.tags)])
        self._new = []


def _select(sql: str, values: list) -> list[tuple]:
    return database.execute_sql(sql, values).fetchall() if values else []


def _insert_tags(pairs: list[tuple[int, str]]) -> None:
    insert_rows("customertag", ["customer_id", "tag"], pairs)


__all__ = ["Batch", "FIELDS"]
