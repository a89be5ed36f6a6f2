"""Consent belongs to a phone number (``consent.py``): a STOP reaches every row with the
number, even one stored in national format and never texted; an import never lifts it; a
START does; the fan-out sends one message per number and none to a suppressed one."""

from __future__ import annotations

import consent
import fanout
from importer import import_customers
from message_types import SkipReason
from models import Customer, Message, MessageStatus, OptOutEvent, Suppression
from schema import create_schema
from tests.factories import make_campaign, make_customers

BASE = "https://x.test/q"


def _statuses(campaign_id: int) -> dict[int, tuple[str, str | None]]:
    return {m.customer_id: (m.status, m.error_code) for m in Message.select().where(Message.campaign == campaign_id)}


def test_a_stop_reaches_rows_in_national_format_never_texted_and_an_import_does_not_lift_it(db):
    # Given two rows of one person written by hand in national formats, never texted, and
    # the release phase that stores every number in E.164
    ids = make_customers(2)
    Customer.update(phone="212-555-0177").where(Customer.id == ids[0]).execute()
    Customer.update(phone="(212) 555 0177").where(Customer.id == ids[1]).execute()
    create_schema(default_region="US")

    # When a STOP comes from +12125550177
    stopped = consent.opt_out("+12125550177", source=consent.Source.INBOUND, keyword="STOP", message_sid="SM" + "1" * 32)

    # Then both rows are unsubscribed, the number is suppressed, and each change is audited
    assert stopped == ids
    assert [c.sms_subscribed for c in Customer.select().order_by(Customer.id)] == [False, False]
    assert Suppression.get(Suppression.phone_e164 == "+12125550177").source == "inbound"
    assert OptOutEvent.select().where(OptOutEvent.action == "stop").count() == 2

    # When a file says the number opted in, as a new customer
    import io
    import_customers(io.StringIO("external_ref,phone,sms_opt_in\nNEW,+1 212 555 0177,yes\n"), default_region="US")

    # Then nobody with the number is subscribed
    assert Customer.select().where(Customer.sms_subscribed == True).count() == 0  # noqa: E712

    # When a START comes from the number
    consent.opt_in("+12125550177", source=consent.Source.INBOUND, keyword="START", message_sid="SM" + "2" * 32)

    # Then every row with it is subscribed again and the suppression is lifted
    assert Customer.select().where(Customer.sms_subscribed == True).count() == 3  # noqa: E712
    assert not Suppression.select().exists()


def test_the_fan_out_sends_one_message_per_number_and_none_to_a_suppressed_one(db):
    # Given four customers: two with one number in different formats, one whose number was
    # suppressed (its row says subscribed: re-created by hand after the STOP), one other
    ids = make_customers(4)
    Customer.update(phone="+12125550188").where(Customer.id == ids[0]).execute()
    Customer.update(phone="212.555.0188").where(Customer.id == ids[1]).execute()
    Suppression.create(phone_e164="+12125550199", source="inbound")
    Customer.update(phone="+12125550199").where(Customer.id == ids[2]).execute()
    campaign_id = make_campaign()

    # When the campaign is fanned out, in batches of one (the duplicate is in the next batch)
    fanout.fan_out(campaign_id, short_url_base=BASE, batch_size=1)

    # Then the first customer with the number gets the message, the second is skipped with
    # its reason, the suppressed number is skipped, the fourth is pending
    assert _statuses(campaign_id) == {
        ids[0]: (MessageStatus.PENDING, None),
        ids[1]: (MessageStatus.SKIPPED, SkipReason.DUPLICATE_PHONE),
        ids[2]: (MessageStatus.SKIPPED, SkipReason.SUPPRESSED),
        ids[3]: (MessageStatus.PENDING, None),
    }
    # and every number is stored in E.164 on its customer
    assert Customer.get_by_id(ids[1]).phone_e164 == "+12125550188"

    # When the fan-out runs again (a restart), nothing changes
    fanout.fan_out(campaign_id, short_url_base=BASE, batch_size=3, token=Message.select().first().campaign.dispatch_token)
    assert len(_statuses(campaign_id)) == 4 and _statuses(campaign_id)[ids[1]][1] == SkipReason.DUPLICATE_PHONE


def test_an_operator_lifts_a_suppression_only_with_a_reason(db):
    import pytest

    consent.opt_out("+12125550177", source=consent.Source.OPERATOR, reason="asked by phone")
    with pytest.raises(ValueError):
        consent.opt_in("+12125550177", source=consent.Source.OPERATOR, reason=" ")
    assert Suppression.select().count() == 1


def test_opt_outs_recorded_before_the_list_are_put_on_it_by_the_release_phase(db):
    OptOutEvent.create(phone_e164="+12125550101", action="stop", keyword="STOP")
    OptOutEvent.create(phone_e164="+12125550102", action="stop", keyword="STOP")
    OptOutEvent.create(phone_e164="+12125550102", action="start", keyword="START")
    create_schema(default_region="US")
    assert [s.phone_e164 for s in Suppression.select()] == ["+12125550101"]


def test_the_release_phase_command_stores_numbers_in_e164(tmp_path):
    # Given a database of the previous version with a customer written by hand
    import os
    import sqlite3
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": root, "DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}", "BROKER": "stub"}
    assert subprocess.run([sys.executable, "-m", "cli", "init-db"], env=env, capture_output=True, timeout=60).returncode == 0
    with sqlite3.connect(tmp_path / "c.db") as conn:
        conn.execute("INSERT INTO customer (first_name, last_name, phone, sms_subscribed, created_at) "
                     "VALUES ('Ada', 'L', '(212) 555-0177', 1, '2026-01-01')")

    # When the release phase runs (the Procfile's release: python -m cli init-db)
    done = subprocess.run([sys.executable, "-m", "cli", "init-db"], env=env, capture_output=True, text=True, timeout=60)

    # Then the number is stored in E.164, where a STOP from it finds it
    assert done.returncode == 0 and done.stdout.strip() == "schema ready"
    with sqlite3.connect(tmp_path / "c.db") as conn:
        assert conn.execute("SELECT phone_e164 FROM customer").fetchone() == ("+12125550177",)


def test_a_number_is_read_in_its_customers_region(db):
    # Given a Paris customer whose number is in French national format, imported with FR
    import io

    import_customers(io.StringIO("external_ref,phone,region,sms_opt_in\nP-1,06 12 34 56 78,FR,oui\n"), default_region="US")
    campaign_id = make_campaign()

    # When a campaign is fanned out with the US as the default region
    fanout.fan_out(campaign_id, short_url_base=BASE, default_region="US")

    # Then the message goes to the French number, not refused as an invalid US one
    row = Message.get(Message.campaign == campaign_id)
    assert (row.status, row.to_phone) == (MessageStatus.PENDING, "+33612345678")


def test_a_landline_is_marked_on_the_number_and_skipped_with_its_reason(db, stub_broker, stub_worker, twilio_backend,
                                                                         fake_twilio):
    # Given a number Twilio refuses as not a mobile (21614), one an import says is a landline,
    # and a delivery report of 30006 for a third
    import io

    import delivery
    from models import Landline
    from tests.conftest import join_all
    from tests.factories import phone_for

    import actors

    ids = make_customers(4)
    fake_twilio.fail_number(phone_for(1), 21614)
    import_customers(io.StringIO(f"phone,sms_opt_in,landline\n{phone_for(2)},yes,yes\n"), default_region="US")
    first = make_campaign()
    actors.send_campaign.send(first)
    join_all(stub_broker)
    sid = Message.get(Message.campaign == first, Message.customer == ids[3]).twilio_sid
    delivery.report_delivery(sid, "undelivered", "30006")

    # Then the numbers are marked, nobody is unsubscribed for it
    assert {(row.phone_e164, row.code) for row in Landline.select()} == {
        (phone_for(1), "21614"), (phone_for(2), "import"), (phone_for(3), "30006")}
    assert Customer.select().where(Customer.sms_subscribed == False).count() == 0  # noqa: E712

    # And the next campaign skips them with their own reason, without asking Twilio
    second = make_campaign(name="second")
    fanout.fan_out(second, short_url_base=BASE)
    skipped = {m.to_phone for m in Message.select().where(Message.campaign == second, Message.error_code == "landline")}
    assert skipped == {phone_for(1), phone_for(2), phone_for(3)}
    sent = Message.get(Message.campaign == second, Message.customer == ids[0])
    assert sent.status == MessageStatus.PENDING


def test_opt_out_many_unsubscribes_each_holder_once_with_an_audit_row_and_counts_them(db):
    # Given a number held by its E.164 form, one held only by a raw phone (no E.164 yet), one a
    # message was sent to, one nobody holds, one already suppressed, and a row already unsubscribed
    from models import Campaign
    n1, n2, n3, n4, n5 = (f"+1212555014{i}" for i in range(1, 6))
    by_e164 = Customer.create(phone=n1, phone_e164=n1)
    Customer.create(phone=n1, phone_e164=n1, sms_subscribed=False)
    by_raw = Customer.create(phone=n2)
    texted = Customer.create(phone="+12125550199", phone_e164="+12125550199")
    campaign = Campaign.create(name="C", template="Hi {short_url}")
    Message.create(campaign=campaign, customer=texted, to_phone=n3, status="sent", twilio_sid="SM" + "1" * 32)
    consent.opt_out(n5, source=consent.Source.INBOUND)
    events_before = OptOutEvent.select().count()

    # When they opt out together, twice
    first = consent.opt_out_many([n1, n2, n3, n4, n5, n1], source=consent.Source.IMPORT, reason="file")
    second = consent.opt_out_many([n1, n2, n3, n4, n5], source=consent.Source.IMPORT, reason="file")

    # Then the three subscribed holders were unsubscribed, counted once, with an audit row each and one for
    # the number nobody holds; every number is suppressed once; the second run changes nothing
    assert (first, second) == (3, 0)
    assert Customer.select().where(Customer.sms_subscribed == True).count() == 0  # noqa: E712
    audit = sorted((e.customer_id or 0, e.phone_e164, e.action, e.keyword) for e in
                   OptOutEvent.select().order_by(OptOutEvent.id).offset(events_before))
    assert audit == sorted([(by_e164.id, n1, "stop", "import"), (by_raw.id, n2, "stop", "import"),
                            (texted.id, n3, "stop", "import"), (0, n4, "stop", "import")])
    assert sorted(s.phone_e164 for s in Suppression.select()) == [n1, n2, n3, n4, n5]
    assert Suppression.get(Suppression.phone_e164 == n4).reason == "file"
    assert Suppression.get(Suppression.phone_e164 == n5).source == consent.Source.INBOUND
