"""bulk_rows: new rows written by COPY (PostgreSQL) or one INSERT (SQLite) read back the
same on both, whatever their text holds."""

from __future__ import annotations

import datetime as dt

import pytest
from peewee import IntegrityError

from bulk_rows import new_ids, write_new_rows
from models import Customer, QRCode, database

COLUMNS = ["id", "first_name", "last_name", "sms_subscribed", "created_at"]
NOW = dt.datetime(2026, 12, 1, 12, 0)


def test_values_with_tabs_newlines_backslashes_and_nulls_read_back_as_written(db):
    # Given values that COPY's text format must escape, a NULL, a boolean and a time
    awkward = "tab\there, back\\slash, new\nline, return\r, \\N, \\t"
    when = dt.datetime(2026, 12, 1, 17, 30, 5, 123456)
    # When they are written as new rows with ids taken beforehand
    with database.atomic():
        ids = new_ids("customer", 2)
        write_new_rows("customer", ["id", "first_name", "last_name", "phone", "sms_subscribed", "created_at"],
                       [(ids[0], awkward, "", None, False, when), (ids[1], "Ann", "O'Neil \"Q\"", "+12125550100", True, when)])
    # Then each reads back exactly as it was given
    first, second = Customer.get_by_id(ids[0]), Customer.get_by_id(ids[1])
    assert (first.first_name, first.last_name, first.phone, first.sms_subscribed, first.created_at) == (
        awkward, "", None, False, when)
    assert (second.first_name, second.last_name, second.phone, second.sms_subscribed) == (
        "Ann", "O'Neil \"Q\"", "+12125550100", True)


def test_ids_taken_ahead_are_new_and_a_later_ordinary_insert_does_not_collide(db):
    # Given a customer already there
    existing = Customer.create(first_name="Old", phone="+12125550100")
    # When ids are taken for three new rows and the rows are written
    with database.atomic():
        ids = new_ids("customer", 3)
        write_new_rows("customer", COLUMNS, [(cid, f"New{cid}", "", True, NOW) for cid in ids])
        write_new_rows("qrcode", ["customer_id", "code"], [(cid, f"CODE{cid:04d}") for cid in ids])
    # Then they are consecutive, after the existing row, and point-able at once
    assert ids == list(range(ids[0], ids[0] + 3)) and ids[0] > existing.id
    assert {q.customer_id for q in QRCode.select()} == set(ids)
    # And the next ordinary insert takes an id none of them has
    later = Customer.create(first_name="Later")
    assert later.id not in ids and later.id > existing.id


def test_many_rows_on_sqlite_are_split_under_its_parameter_limit(db):
    # Given more rows than one SQLite statement could carry (30,000 parameters)
    with database.atomic():
        ids = new_ids("customer", 16_000)
        # When they are written in one call
        write_new_rows("customer", COLUMNS, [(cid, "x", "", True, NOW) for cid in ids])
    # Then all of them are there
    assert Customer.select().count() == 16_000


def test_a_conflict_fails_with_the_same_error_on_both_databases(db):
    # Given a customer already there
    existing = Customer.create(first_name="Old", phone="+12125550100")

    # When a new row is written with its id
    # Then the write fails as any statement of the project fails on a conflict: peewee's IntegrityError
    with pytest.raises(IntegrityError):
        with database.atomic():
            write_new_rows("customer", COLUMNS, [(existing.id, "New", "", True, NOW)])
    assert [c.first_name for c in Customer.select()] == ["Old"]
