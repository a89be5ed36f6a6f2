"""Customer import bench: ``importer.import_customers`` against the work no import can skip.

    python -m bench.import_customers [--sizes 10000 100000] [--repeat 3]

For each size, a CSV of that many customers (US numbers in mixed formats, two tags, a store
attribute) is written, then on PostgreSQL, in this process, each ``--repeat`` times:
 (a) baseline: ``phonenumbers.parse`` of every number, plus PostgreSQL ``COPY`` of the same
     rows into a bare table;
 (b) the project's import into empty tables;
 (c) for reference, the floor of an import into this schema: the same parse, plus COPY of
     the same customers (ids from the sequence), their QR codes and their tags into the
     project's own tables, with their indexes and foreign keys, into empty tables. It
     checks nothing and cleans nothing: what (b) adds to it is the import's own work.
 (d) for reference, the import's cleaning alone: ``customer_rows.RowCleaner.clean`` of
     every row as the import reads them (the number parsed and validated, names and
     every text cell through the names policy, tags, consent), writing nothing.
Prints the medians, the ratios, and the import's peak traced memory (a separate run under
tracemalloc, which slows it down); then the ratio of the peaks of the largest and smallest
sizes.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
import tempfile
import time
import tracemalloc

import phonenumbers

from bench.common import print_peak_ratio, reset_database

FORMATS = ("+1212{:07d}", "(212) {:03d}-{:04d}", "212.{:03d}.{:04d}", "212 {:03d} {:04d}")


def write_file(path: str, size: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["external_ref", "first_name", "last_name", "phone", "sms_opt_in", "tags", "store"])
        for i in range(size):
            number = 2_000_000 + i
            fmt = FORMATS[i % len(FORMATS)]
            phone = fmt.format(number) if i % 4 == 0 else fmt.format(number // 10_000, number % 10_000)
            writer.writerow([f"C-{i:07d}", f"Name{i}", "Doe", phone, "yes" if i % 10 else "no",
                             "vip;nyc" if i % 10 == 0 else "nyc", f"Store {i % 4}"])


def baseline(path: str) -> float:
    from models import database

    database.connect(reuse_if_open=True)
    database.execute_sql("DROP TABLE IF EXISTS bench_import")
    database.execute_sql("CREATE TABLE bench_import (external_ref text, first_name text, last_name text, phone text, "
                         "sms_opt_in text, tags text, store text)")
    started = time.perf_counter()
    with open(path, newline="", encoding="utf-8") as source:
        reader = csv.reader(source)
        next(reader)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for row in reader:
            phonenumbers.parse(row[3], "US")
            writer.writerow(row)
    buffer.seek(0)
    cursor = database.connection().cursor()
    cursor.copy_expert("COPY bench_import FROM STDIN WITH (FORMAT csv)", buffer)
    database.commit() if not database.connection().autocommit else None
    elapsed = time.perf_counter() - started
    database.execute_sql("DROP TABLE bench_import")
    return elapsed


def schema_floor(path: str) -> float:
    """(c): parse, then COPY into customer, qrcode and customertag as they are."""
    from models import database

    reset_database()
    database.connect(reuse_if_open=True)
    started = time.perf_counter()
    customers, codes, tags = io.StringIO(), io.StringIO(), io.StringIO()
    with open(path, newline="", encoding="utf-8") as source:
        reader = csv.reader(source)
        next(reader)
        rows = list(reader)
    cursor = database.connection().cursor()
    cursor.execute("SELECT nextval(pg_get_serial_sequence('customer', 'id')) FROM generate_series(1, %s)", (len(rows),))
    ids = [cid for (cid,) in cursor.fetchall()]
    now = "2026-12-01 12:00:00"
    for cid, (ref, first, last, phone, opt_in, tag_list, store) in zip(ids, rows):
        number = phonenumbers.parse(phone, "US")
        e164 = f"+{number.country_code}{number.national_number}"
        customers.write(f"{cid}\t{first}\t{last}\t{phone}\t{e164}\tUS\t{ref}\t{'t' if opt_in == 'yes' else 'f'}\t"
                        f'{{"store": "{store}"}}\t{now}\t{now}\n')
        codes.write(f"{cid}\tQ{cid:08d}\n")
        tags.writelines(f"{cid}\t{tag}\n" for tag in tag_list.split(";"))
    for table, columns, buffer in (
            ("customer", "id, first_name, last_name, phone, phone_e164, region, external_ref, sms_subscribed, "
                         "attributes, created_at, updated_at", customers),
            ("qrcode", "customer_id, code", codes), ("customertag", "customer_id, tag", tags)):
        buffer.seek(0)
        cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN", buffer)
    database.commit() if not database.connection().autocommit else None
    return time.perf_counter() - started


def cleaning_alone(path: str) -> float:
    """(d): the import's own ``RowCleaner`` over every row, nothing written."""
    from customer_rows import RowCleaner, header_map

    started = time.perf_counter()
    with open(path, newline="", encoding="utf-8") as source:
        reader = csv.reader(source)
        header = next(reader)
        cleaner = RowCleaner(header_map(header, {}), default_region="US", assume_opt_in=False)
        for line, values in enumerate(reader, start=2):
            cleaner.clean(values, line)
    return time.perf_counter() - started


def project(path: str, size: int, *, traced: bool) -> tuple[float, int]:
    from importer import import_customers

    reset_database()
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    with open(path, newline="", encoding="utf-8") as source:
        summary = import_customers(source, default_region="US")
    elapsed = time.perf_counter() - started
    peak = 0
    if traced:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert summary.created == size and not summary.rejected, summary
    return elapsed, peak


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = os.path.join(tmp, f"customers-{size}.csv")
            write_file(path, size)
            reset_database()
            bases, runs, floors, cleanings = [], [], [], []
            for _ in range(args.repeat):
                bases.append(baseline(path))
                runs.append(project(path, size, traced=False)[0])
                floors.append(schema_floor(path))
                cleanings.append(cleaning_alone(path))
            _, peaks[size] = project(path, size, traced=True)
            base, run, floor = statistics.median(bases), statistics.median(runs), statistics.median(floors)
            cleaning = statistics.median(cleanings)
            print(f"{size:>8,} rows: baseline (parse + COPY) {base:6.2f} s, import {run:6.2f} s, ratio {run / base:4.2f}x "
                  f"(medians of {args.repeat}), import peak memory {peaks[size] / 1024:7.0f} KiB", flush=True)
            print(f"{size:>8,} rows: floor of this schema (parse + COPY into customer, qrcode, customertag) {floor:6.2f} s, "
                  f"{floor / base:4.2f}x the baseline; the import is {run / floor:4.2f}x the floor", flush=True)
            print(f"{size:>8,} rows: the import's cleaning alone (parse, validation, names policy; nothing written) "
                  f"{cleaning:6.2f} s, {cleaning / base:4.2f}x the baseline", flush=True)
    print_peak_ratio(peaks, "rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
