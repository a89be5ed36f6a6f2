"""Customers in: ``importer.import_customers`` on a messy file, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import os

import pytest

import consent
from importer import FileError, import_customers
from models import CustomAttribute, Customer, CustomerTag, OptOutEvent, QRCode

MESSY = os.path.join(os.path.dirname(__file__), "data", "messy_customers.csv")


def _import(text: str | None = None, **options):
    rejects = []
    options.setdefault("default_region", "US")
    if text is None:
        with open(MESSY, newline="", encoding="utf-8") as source:
            summary = import_customers(source, on_reject=rejects.append, **options)
    else:
        summary = import_customers(io.StringIO(text, newline=""), on_reject=rejects.append, **options)
    return summary, rejects


def _world() -> list[tuple]:
    customers = [(c.external_ref, c.first_name, c.last_name, c.phone_e164, c.region, c.time_zone, c.sms_subscribed,
                  c.attributes) for c in Customer.select().order_by(Customer.id)]
    tags = sorted((t.customer_id, t.tag) for t in CustomerTag.select())
    codes = sorted((q.customer_id, q.code) for q in QRCode.select())
    return customers + tags + codes + [OptOutEvent.select().count()]


def test_a_messy_file_imports_with_a_summary_and_its_rejects_and_again_changes_nothing(db):
    # When the messy file is imported
    summary, rejects = _import()

    # Then the good rows are in, in E.164, each with a QR code, and every bad row is reported
    # with its line, column and reason
    assert (summary.read, summary.created, summary.updated, summary.unchanged) == (16, 7, 0, 0)
    assert {(r.line, r.column, r.reason) for r in rejects} == {
        (6, "phone", "invalid_phone"), (7, "phone", "missing_phone"), (8, "first_name", "looks_like_link"),
        (10, "time_zone", "invalid_time_zone"), (11, "external_ref", "duplicate_in_file"),
        (13, "phone", "duplicate_in_file"), (14, "qr_code", "qr_code_taken"), (15, "region", "invalid_region"),
        (18, "sms_opt_in", "invalid_consent"),
    }
    assert sum(summary.rejected.values()) == 9
    ada = Customer.get(Customer.external_ref == "C-001")
    assert (ada.first_name, ada.phone_e164, ada.time_zone) == ("Ada", "+12125550101", "America/New_York")
    assert ada.attribute_values() == {"store": "Fifth Avenue"}
    assert sorted(t.tag for t in ada.tags) == ["nyc", "vip"]
    jean = Customer.get(Customer.external_ref == "C-004")
    assert (jean.phone_e164, jean.region) == ("+33612345679", "FR")
    mallory = Customer.get(Customer.external_ref == "C-008")
    assert mallory.last_name == "Bidignp.exe"  # the bidi override is gone: it reads as written
    multi_line = Customer.get(Customer.external_ref == "C-014")
    assert multi_line.first_name == "Line Break"
    walk_in = Customer.get(Customer.phone_e164 == "+13125550110")
    assert walk_in.external_ref is None and walk_in.sms_subscribed is False
    assert OptOutEvent.get(OptOutEvent.phone_e164 == "+13125550110").keyword == "import"
    assert QRCode.get(QRCode.customer == Customer.get(Customer.external_ref == "C-002")).code == "GRACE001"
    assert QRCode.select().count() == 7 and len({q.code for q in QRCode.select()}) == 7
    assert [a.name for a in CustomAttribute.select()] == ["store"]

    # When it is imported again
    before = _world()
    again, rejects_again = _import()

    # Then nothing changes
    assert (again.created, again.updated, again.unchanged) == (0, 0, 7)
    assert len(rejects_again) == 9 and _world() == before


def test_an_import_never_resubscribes_a_number_that_opted_out(db):
    # Given a customer imported as opted in, who then replied STOP
    _import("external_ref,phone,sms_opt_in\nC-1,+12125550101,yes\n")
    consent.opt_out("+12125550101", source=consent.Source.INBOUND, keyword="STOP")

    # When the same number comes again as opted in, as the same customer and as a new one
    summary, _ = _import("external_ref,phone,sms_opt_in\nC-1,+12125550101,yes\nC-2,(212) 555-0101,yes\n")

    # Then neither is subscribed, and the summary says why
    assert [c.sms_subscribed for c in Customer.select().order_by(Customer.id)] == [False, False]
    assert summary.kept_opted_out == 2 and summary.created == 1


def test_an_opt_out_in_the_file_unsubscribes_once_and_is_recorded(db):
    # Given a subscribed customer
    _import("external_ref,phone,sms_opt_in\nC-1,+12125550101,yes\n")

    # When a file says they opted out, twice
    first, _ = _import("external_ref,phone,sms_opt_in\nC-1,+12125550101,no\n")
    second, _ = _import("external_ref,phone,sms_opt_in\nC-1,+12125550101,no\n")

    # Then they are unsubscribed with one consent event
    assert Customer.get().sms_subscribed is False
    assert (first.updated, second.unchanged) == (1, 1)
    assert [(e.action, e.keyword) for e in OptOutEvent.select()] == [("stop", "import")]


def test_a_dry_run_reports_without_writing(db):
    summary, rejects = _import(dry_run=True)
    assert summary.created == 7 and len(rejects) == 9
    assert Customer.select().count() == 0 and QRCode.select().count() == 0 and CustomAttribute.select().count() == 0


def test_tags_are_replaced_by_the_files_and_a_map_renames_a_column(db):
    _import("external_ref,phone,sms_opt_in,tags\nC-1,+12125550101,yes,vip;nyc\n")
    summary, _ = _import("id,mobile,sms_opt_in,tags\nC-1,+12125550101,yes,NYC\n",
                         column_map={"id": "external_ref", "mobile": "phone"})
    assert summary.updated == 1
    assert [t.tag for t in CustomerTag.select()] == ["nyc"]


@pytest.mark.parametrize("text, message", [
    ("", "the file is empty"),
    ("name,mobile\nAda,+12125550101\n", "the file has no phone column (use --map HEADER=phone)"),
    ("phone\n+12125550101\n", "the file has no sms_opt_in column: add one, or pass --assume-opt-in if every row consented"),
    ("phone,Phone,sms_opt_in\n", "column 'phone' appears twice in the header"),
    ("phone,sms_opt_in,€uro\n", "column 3 ('€uro') cannot be an attribute name: rename it with --map or give it a name "
                                "made of letters, digits and _"),
])
def test_a_file_that_cannot_be_imported_says_why_in_one_line(db, text, message):
    with pytest.raises(FileError) as error:
        _import(text)
    assert str(error.value) == message
    assert Customer.select().count() == 0


def test_the_command_writes_the_rejects_file_and_prints_the_summary(tmp_path):
    # Given the messy file, and a database of the command's own
    import shutil
    import subprocess
    import sys

    shutil.copy(MESSY, tmp_path / "customers.csv")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": root, "DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}", "BROKER": "stub"}

    # When it is imported from the command line
    result = subprocess.run([sys.executable, "-m", "cli", "customers", "import", "customers.csv"], cwd=tmp_path,
                            capture_output=True, text=True, env=env, timeout=120)

    # Then the summary is printed and every rejected row is in the rejects file, as it was
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "read 16, created 7, updated 0, unchanged 0, rejected 9"
    with open(tmp_path / "customers.rejects.csv", newline="", encoding="utf-8") as rejects:
        rows = list(csv.DictReader(rejects))
    assert [(r["line"], r["column"], r["reason"]) for r in rows][:2] == [("6", "phone", "invalid_phone"),
                                                                          ("7", "phone", "missing_phone")]
    assert rows[0]["External Ref"] == "C-005" and rows[0]["Phone"] == "12345" and len(rows) == 9

    # And a file that cannot be imported is one line and exit code 1
    (tmp_path / "bad.csv").write_text("name\nAda\n")
    bad = subprocess.run([sys.executable, "-m", "cli", "customers", "import", "bad.csv"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == "Error: bad.csv: the file has no phone column (use --map HEADER=phone)"

    # And the customers come out by the export command, to a file and to standard output alike
    out = subprocess.run([sys.executable, "-m", "cli", "customers", "export", "--output", "export.csv"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "7 customers written to export.csv"
    piped = subprocess.run([sys.executable, "-m", "cli", "customers", "export"], cwd=tmp_path,
                           capture_output=True, env=env, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == (tmp_path / "export.csv").read_bytes()
    assert len(list(csv.DictReader(io.StringIO(piped.stdout.decode("utf-8"), newline="")))) == 7


def test_an_export_imported_again_changes_nothing_and_shows_suppression(db):
    # Given the messy file imported, and a STOP from one number
    from customer_export import export_customers

    _import()
    consent.opt_out("+12125550102", source=consent.Source.INBOUND, keyword="STOP")
    before = _world()

    # When the customers are exported and the export is imported again
    out = io.StringIO()
    assert export_customers(out) == 7
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    summary, rejects = _import(out.getvalue())

    # Then the export says who is suppressed, and importing it changes nothing
    grace = next(r for r in rows if r["external_ref"] == "C-002")
    assert (grace["sms_opt_in"], grace["suppressed"], grace["suppression_source"]) == ("no", "yes", "inbound")
    assert (summary.created, summary.updated, summary.unchanged, rejects) == (0, 0, 7, [])
    assert _world() == before


def test_on_a_terminal_the_command_shows_a_progress_bar(tmp_path):
    # Given the messy file and a terminal (a pseudo-terminal)
    import pty
    import shutil
    import subprocess
    import sys

    shutil.copy(MESSY, tmp_path / "customers.csv")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": root, "DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
           "BROKER": "stub", "TERM": "xterm"}
    leader, follower = pty.openpty()

    # When the import runs with its output on the terminal
    proc = subprocess.run([sys.executable, "-m", "cli", "customers", "import", "customers.csv"], cwd=tmp_path,
                          stdout=follower, stderr=subprocess.PIPE, env=env, timeout=120)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)

    # Then a progress bar was drawn before the summary
    assert proc.returncode == 0, proc.stderr
    text = shown.decode()
    assert "importing" in text and "100%" in text
    assert text.index("importing") < text.index("read 16, created 7")
