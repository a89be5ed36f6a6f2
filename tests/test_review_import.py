"""Second reader's findings: the import."""

from __future__ import annotations

import io

import pytest

import consent
from importer import import_customers
from peewee import DatabaseError

from connections import is_postgres
from models import Customer, database, write_transaction


def _import(text: str, **options):
    options.setdefault("default_region", "US")
    return import_customers(io.StringIO(text, newline=""), **options)


def test_review_an_opt_out_row_for_an_already_suppressed_number_never_unsubscribes_and_is_updated_every_run(db):
    # Given a customer imported subscribed, and a STOP from a number nobody had yet
    _import("external_ref,phone,sms_opt_in\nA1,+1 212 555 0161,yes\n")
    consent.opt_out("+12125550162", source=consent.Source.INBOUND, keyword="STOP", message_sid="SM" + "6" * 32)

    # When a file gives the customer that number and says they opted out, twice
    first = _import("external_ref,phone,sms_opt_in\nA1,+1 212 555 0162,no\n")
    second = _import("external_ref,phone,sms_opt_in\nA1,+1 212 555 0162,no\n")

    # Then the second run changes nothing, and the row says what the file says
    assert (first.updated, second.updated, second.unchanged) == (1, 0, 1), (
        f"run twice, the import keeps 'updating': first {first.lines()}, second {second.lines()}")
    assert Customer.get(Customer.external_ref == "A1").sms_subscribed is False


def test_review_a_dry_run_does_not_see_a_qr_code_repeated_in_a_later_batch(db):
    # Given a file whose two customers have the same QR code, in two batches
    text = "external_ref,phone,sms_opt_in,qr_code\nA1,+1 212 555 0171,yes,CODE1234\nA2,+1 212 555 0172,yes,CODE1234\n"

    # When it is imported in a dry run, then for real
    dry = _import(text, dry_run=True, batch_size=1)
    real = _import(text, batch_size=1)

    # Then the dry run reported what the import did
    assert (dry.created, dict(dry.rejected)) == (real.created, dict(real.rejected)), (
        f"dry run: {dry.lines()} / real: {real.lines()}")


@pytest.mark.parametrize("batch_size", [1, 2, 2000])
def test_a_customer_repeated_in_the_file_is_refused_on_every_later_line_in_any_batch(db, batch_size):
    # Given a file naming one customer on lines 2, 4 and 5 (by reference) and one number twice
    text = ("external_ref,phone,sms_opt_in\nA1,+1 212 555 0181,yes\n,+1 212 555 0182,yes\nA1,+1 212 555 0183,yes\n"
            "A1,+1 212 555 0184,yes\n,212-555-0182,yes\n")
    rejects = []

    # When it is imported in batches of any size
    summary = _import(text, batch_size=batch_size, on_reject=rejects.append)

    # Then the first line of each customer is imported and every later line is refused, naming it
    assert (summary.created, dict(summary.rejected)) == (2, {"duplicate_in_file": 3})
    assert [(r.line, r.detail) for r in rejects] == [
        (4, "same customer as line 2"), (5, "same customer as line 2"), (6, "same customer as line 3")]


def test_an_import_inside_the_callers_transaction_sees_its_rows_and_is_part_of_it(db):
    # Given a caller inside a transaction of its own, with a customer it has written but not committed
    with write_transaction():
        Customer.create(first_name="Ann", phone="+12125550191", phone_e164="+12125550191")

        # When it imports a file naming that customer's number
        summary = _import("phone,first_name,sms_opt_in\n+1 212 555 0191,Anna,yes\n")

        # Then the import updated that customer (it neither waited for the caller's lock nor missed its row)
        assert (summary.created, summary.updated) == (0, 1), summary.lines()
    assert [c.first_name for c in Customer.select()] == ["Anna"]


def _refuse_a_name(name: str) -> None:
    """A database that refuses new customers called ``name`` (a real failure, in the server)."""
    if is_postgres():
        database.execute_sql("CREATE OR REPLACE FUNCTION review_refuse() RETURNS trigger AS $$ BEGIN "
                             f"IF NEW.first_name = '{name}' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$ "
                             "LANGUAGE plpgsql")
        database.execute_sql("CREATE TRIGGER review_refuse BEFORE INSERT ON customer FOR EACH ROW EXECUTE FUNCTION review_refuse()")
    else:
        database.execute_sql(f"CREATE TRIGGER review_refuse BEFORE INSERT ON customer WHEN NEW.first_name = '{name}' "
                             "BEGIN SELECT RAISE(ABORT, 'refused'); END")


def test_a_batch_the_database_refuses_stops_the_import_with_the_batches_before_it_written(db):
    # Given a database that refuses the second of three customers, each in a batch of its own
    _refuse_a_name("Boom")
    text = "external_ref,first_name,phone,sms_opt_in\nA1,Ann,+1 212 555 0195,yes\nA2,Boom,+1 212 555 0196,yes\n" \
           "A3,Cy,+1 212 555 0197,yes\n"
    progress = []

    # When it is imported
    with pytest.raises(DatabaseError, match="refused"):
        _import(text, batch_size=1, on_progress=progress.append)

    # Then the error reached the caller, the first batch is written, the later ones are not
    assert [c.external_ref for c in Customer.select()] == ["A1"]
    assert progress == [1]
    # And the import left no temporary table behind, and the connection still works
    with pytest.raises(DatabaseError):
        database.execute_sql('SELECT 1 FROM "import_first_seen"')


def test_a_file_that_breaks_off_mid_way_still_reports_the_batch_written_before_it(db):
    # Given a file whose first batch has a row refused, and whose second batch cannot be read
    # (a field over the csv module's limit)
    from importer import FileError

    text = ("external_ref,phone,sms_opt_in\nA1,+1 212 555 0191,yes\nA2,not a phone,yes\n"
            f"A3,+1 212 555 0193,yes\nA4,+1 212 555 0194,{'y' * 200_000}\n")
    rejects, progress = [], []

    # When it is imported in batches of two
    with pytest.raises(FileError, match="line"):
        _import(text, batch_size=2, on_reject=rejects.append, on_progress=progress.append)

    # Then the first batch was written and everything it found was reported before the error
    assert Customer.select().where(Customer.external_ref == "A1").count() == 1
    assert [(r.line, r.reason) for r in rejects] == [(3, "invalid_phone")]
    assert progress == [2]
