"""Customers in: a CSV file imported in batches, idempotently (run twice, nothing changes).

Each row is cleaned (``customer_rows.py``) and then created or updated by its upsert key:
``external_ref`` when the file has one, else the E.164 number. One transaction per batch,
a few statements per batch rather than per row, so a large file streams in constant memory
(its duplicate keys are found in a temporary table: ``import_keys.py``) and a failure
leaves whole batches behind. Consent only ever moves towards "not subscribed" on import:
a row saying opted in never re-subscribes a customer whose number opted out (only a START
from the number does: ``consent.py``), and a new customer with such a number is created
unsubscribed.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TextIO

import consent
import landlines
from customer_rows import COLUMNS, CleanRow, FileError, RowCleaner, RowRejected, header_map
from customer_writes import Batch
from import_keys import FirstSeen
from models import CustomAttribute


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
    batch_size: int = 2000,
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

    def reject(line: int, exc: RowRejected, raw: dict) -> None:
        summary.rejected[exc.reason] += 1
        on_reject(Reject(line, exc.column, exc.reason, exc.detail, raw))

    with FirstSeen() as seen:
        for batch in _batches(_rows(reader, header), batch_size):
            clean: list[CleanRow] = []
            for line, values in batch:
                summary.read += 1
                try:
                    row = cleaner.clean(values, line)
                except RowRejected as exc:
                    reject(line, exc, dict(zip(header, values)))
                    continue
                row.raw = dict(zip(header, values))
                clean.append(row)
            clean = _first_occurrences(clean, seen, reject)
            _write(clean, summary, seen, reject, dry_run=dry_run)
            on_progress(len(batch))
    if not dry_run and cleaner.attribute_names:
        known = {a.name for a in CustomAttribute.select(CustomAttribute.name)}
        for name in sorted(cleaner.attribute_names - known):
            CustomAttribute.get_or_create(name=name)
    return summary


def _first_occurrences(rows: list[CleanRow], seen: FirstSeen, reject) -> list[CleanRow]:
    """The rows whose customer no earlier line of the file named."""
    first = seen.claim([(row.key, row.line) for row in rows])
    kept = []
    for row in rows:
        if first[row.key] != row.line:
            column = "external_ref" if row.external_ref else "phone"
            reject(row.line, RowRejected(column, "duplicate_in_file", f"same customer as line {first[row.key]}"), row.raw)
        else:
            kept.append(row)
    return kept


def _write(rows: list[CleanRow], summary: ImportSummary, seen: FirstSeen, reject, *, dry_run: bool) -> None:
    """Create or update one batch in one transaction (rolled back in a dry run)."""
    if not rows:
        return
    # Outside the batch's transaction, which a dry run rolls back: a code given again on a
    # later line is seen in a dry run too.
    codes = seen.claim([(f"qr:{row.qr_code}", row.line) for row in rows if row.qr_code])
    with Batch(rows, dry_run=dry_run) as batch:
        opted_out: list[str] = []
        for row in rows:
            existing = batch.existing(row)
            if row.qr_code and (codes[f"qr:{row.qr_code}"] != row.line or batch.code_taken(row.qr_code, existing)):
                reject(row.line, RowRejected("qr_code", "qr_code_taken", "this code is already in use"), row.raw)
                continue
            if existing is None:
                summary.created += 1
                if row.subscribed and batch.suppressed(row.phone_e164):
                    summary.kept_opted_out += 1
                    row.subscribed = False
                batch.create(row)
            else:
                if "subscribed" in row.present and row.subscribed and not existing.sms_subscribed:
                    summary.kept_opted_out += 1
                if batch.update(existing, row):
                    summary.updated += 1
                else:
                    summary.unchanged += 1
            if "subscribed" in row.present and not row.subscribed:
                opted_out.append(row.phone_e164)  # a number already in that state changes nothing
            if row.landline and not dry_run:
                landlines.mark(row.phone_e164, code="import", source="import")
        batch.flush()
        if opted_out and not dry_run:
            consent.opt_out_many(opted_out, source=consent.Source.IMPORT, reason="an import row said opted out")


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


__all__ = ["COLUMNS", "FileError", "ImportSummary", "Reject", "import_customers"]
