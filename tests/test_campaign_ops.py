"""Operating a campaign (issue 15): a test send to the operator's own number, the export of
a campaign's results, and the housekeeping commands (list, clone, delete), in-process on
both databases and through the command line."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re

import pytest
from click.testing import CliRunner

import actors
import analytics
import campaign_admin
import cli
import consent
import delivery
import fanout
from actors.campaign_ops import send_test_message, slot_taker
from campaign_export import export_campaign
from campaigns import Refused
from errors import TransientError
from models import (Campaign, CampaignAnalytics, CampaignStatus, Click, Customer, EarlyStatus, Event, Message, MessageStatus,
                    QRCode, TrialSend, utcnow)
from tests.conftest import join_all, wait_for
from tests.test_web import QR_PAGE, web  # noqa: F401  (the web fixture)
from tests.factories import make_campaign, make_customers, phone_for

OPERATOR = "+12125550199"
SHORT_URL_BASE = "http://localhost:8000/q"


def invoke(*args):
    return CliRunner().invoke(cli.main, list(args), prog_name="python -m cli")


def without_code(body: str) -> str:
    return re.sub(r"/q/[0-9A-Z]{8}", "/q/<code>", body)


# ------------------------------------------------------------------------- test send
def test_a_test_send_is_the_customers_message_to_the_operator_and_counts_nowhere(db, stub_broker, twilio_backend, fake_twilio):
    # Given a draft campaign and its customers
    ids = make_customers(3)
    campaign_id = make_campaign()

    # When the operator sends a test of customer 2's message to their own number
    trial = send_test_message(campaign_id, to=OPERATOR, customer_id=ids[2])

    # Then Twilio got one message, to the operator, with the SID on record
    [sent] = fake_twilio.messages
    assert sent["to"] == OPERATOR and trial.twilio_sid == sent["sid"] and trial.status == "sent"
    assert TrialSend.get().to_phone == OPERATOR and TrialSend.get().customer_id == ids[2]
    # And no message row, no analytics: the campaign is still a draft with nothing counted
    assert Message.select().count() == 0
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.DRAFT
    assert analytics.recompute_analytics(campaign_id).targeted == 0

    # And its text is the customer's message as the fan-out renders it, but for its own link
    fanout.fan_out(campaign_id, short_url_base=SHORT_URL_BASE)
    theirs = Message.get(Message.customer == ids[2]).body
    assert without_code(sent["body"]) == without_code(theirs) and sent["body"] != theirs
    assert trial.link_code not in {m.link_code for m in Message.select()}


def test_without_a_customer_the_test_shows_the_first_who_would_get_it_or_a_sample(db, stub_broker, twilio_backend, fake_twilio):
    # Given a campaign whose first customer is unsubscribed
    ids = make_customers(3, unsubscribed=(0,))
    campaign_id = make_campaign()

    # When a test is sent without --customer, it is customer 1's message
    assert send_test_message(campaign_id, to=OPERATOR).customer_id == ids[1]
    assert fake_twilio.messages[0]["body"].startswith("Hi Sam1, your pass is ready: ")

    # And once nobody would get it, it is a sample customer's
    Customer.update(sms_subscribed=False).execute()
    sample = send_test_message(campaign_id, to=OPERATOR)
    assert sample.customer_id is None and sample.body.startswith("Hi Sample, your pass is ready: ")


@pytest.mark.parametrize("to", ["2125550199", "+1212555", "+1 212 555 0199", "", "+12125550199x"])
def test_a_test_to_a_number_not_in_e164_is_refused_and_sends_nothing(db, stub_broker, twilio_backend, fake_twilio, to):
    campaign_id = make_campaign()
    with pytest.raises(Refused, match=r"is not a phone number in E\.164 form, such as \+12125550100"):
        send_test_message(campaign_id, to=to)
    assert fake_twilio.requests == [] and TrialSend.select().count() == 0


def test_a_test_to_a_number_that_opted_out_is_refused(db, stub_broker, twilio_backend, fake_twilio):
    campaign_id = make_campaign()
    consent.opt_out(OPERATOR, source=consent.Source.INBOUND, keyword="STOP")
    with pytest.raises(Refused, match=r"opted out \(suppression list\)"):
        send_test_message(campaign_id, to=OPERATOR)
    assert fake_twilio.requests == []


def test_a_test_send_takes_a_slot_of_the_campaigns_own_rate_limit(db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a campaign limited to one message a minute
    make_customers(1)
    campaign_id = Campaign.create(name="slow", template="Hi {first_name}: {short_url}", rate_limit="1/minute").id

    # When a test is sent, the minute's slot is taken: a second test finds none
    send_test_message(campaign_id, to=OPERATOR)
    with pytest.raises(TransientError, match="no rate-limit slot came within"):
        slot_taker(Campaign.get_by_id(campaign_id), max_wait_s=0.2)(1)

    # And the campaign's own first send, once claimed, finds no slot: it is put back for
    # the next minute (pending again, its attempt undone), not sent
    actors.send_campaign.send(campaign_id)
    # (a dispatcher that ran before the fan-out's rows were written runs again half a window later)
    wait_for(lambda: Message.select().where(Message.sending_at.is_null(False), Message.status == MessageStatus.PENDING).exists(),
             timeout_s=45)
    assert [m["to"] for m in fake_twilio.messages] == [OPERATOR]
    assert Message.get().attempts == 0


# --------------------------------------------------------------------------- export
def run_mixed_campaign(stub_broker, fake_twilio) -> int:
    """A completed campaign with every outcome: sent (delivered, undelivered, clicked),
    failed (21211), skipped (unsubscribed, invalid phone)."""
    ids = make_customers(7, unsubscribed=(5,), bad_phones={6: "12"})
    Customer.update(external_ref="=HYPERLINK(\"http://x\")").where(Customer.id == ids[0]).execute()
    Customer.update(external_ref="crm-2").where(Customer.id == ids[1]).execute()
    fake_twilio.fail_number(phone_for(4), 21211)
    campaign_id = make_campaign()
    actors.send_campaign.send(campaign_id)
    join_all(stub_broker)
    Message.update(delivery_status="delivered", delivered_at=utcnow()).where(Message.to_phone == phone_for(0)).execute()
    Message.update(delivery_status="undelivered", delivery_error_code="30003").where(Message.to_phone == phone_for(1)).execute()
    for _ in range(2):
        Click.create(customer=ids[0], campaign=campaign_id, code="X")
    analytics.recompute_analytics(campaign_id)
    return campaign_id


def test_the_exports_counts_per_outcome_equal_the_analytics(db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a completed campaign with every outcome
    campaign_id = run_mixed_campaign(stub_broker, fake_twilio)

    # When it is exported, in batches of two rows
    out = io.StringIO()
    counted = export_campaign(campaign_id, out, batch_size=2)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))

    # Then there is one row per customer, and its counts per outcome are the analytics'
    data = analytics.analytics_dict(campaign_id)
    assert len(rows) == data["targeted"] == 7
    by_outcome = {status: sum(1 for r in rows if r["outcome"] == status) for status in MessageStatus.ALL}
    assert by_outcome == dict(counted, **{s: counted.get(s, 0) for s in MessageStatus.ALL})
    assert {s: by_outcome[s] for s in ("sent", "failed", "skipped", "cancelled")} == {
        s: data[s] for s in ("sent", "failed", "skipped", "cancelled")}
    assert (by_outcome["sent"], by_outcome["failed"], by_outcome["skipped"]) == (4, 1, 2)
    # And each row says what happened, the phone masked, a formula neutralised
    first = rows[0]
    assert first["external_ref"] == "'=HYPERLINK(\"http://x\")" and first["phone"] == "+1******0000"
    assert (first["outcome"], first["delivery_status"], first["clicks"]) == ("sent", "delivered", "2")
    assert first["twilio_sid"] == Message.get(Message.to_phone == phone_for(0)).twilio_sid
    assert (rows[1]["external_ref"], rows[1]["delivery_status"], rows[1]["delivery_error_code"]) == ("crm-2", "undelivered", "30003")
    assert (rows[4]["outcome"], rows[4]["reason_code"]) == ("failed", "21211")
    assert {r["reason_code"] for r in rows if r["outcome"] == "skipped"} == {"unsubscribed", "invalid_phone"}
    assert sum(int(r["clicks"]) for r in rows) == 2

    # And with full phones asked for, numbers are whole
    full = io.StringIO()
    export_campaign(campaign_id, full, full_phone=True)
    assert list(csv.DictReader(io.StringIO(full.getvalue())))[0]["phone"] == phone_for(0)


def test_export_through_the_cli_to_a_file_and_to_stdout(db, stub_broker, stub_worker, twilio_backend, fake_twilio, tmp_path):
    campaign_id = run_mixed_campaign(stub_broker, fake_twilio)
    target = tmp_path / "results.csv"

    to_file = invoke("campaign", "export", str(campaign_id), "--out", str(target))
    assert to_file.exit_code == 0, to_file.output
    assert to_file.output.splitlines() == [
        f"7 customers of campaign {campaign_id} written to {target} (failed 1, sent 4, skipped 2)"]
    to_stdout = invoke("campaign", "export", str(campaign_id))
    assert to_stdout.exit_code == 0 and to_stdout.output.replace("\r\n", "\n") == target.read_text().replace("\r\n", "\n")


# ----------------------------------------------------------------------- housekeeping
def test_clone_copies_every_setting_into_a_new_draft(db, stub_broker):
    # Given a campaign that ran, with every setting given
    now = utcnow()
    source = Campaign.create(name="Winter", template="Hi {first_name}: {short_url}", rate_limit="5/minute",
                             time_zone="America/Chicago", audience='{"all": ["vip"], "any": [], "none": []}',
                             frequency_cap_h=24, status=CampaignStatus.COMPLETED, started_at=now, fanout_done_at=now,
                             completed_at=now, dispatch_token="t" * 32, zones='["America/Chicago"]')

    # When it is cloned
    result = invoke("campaign", "clone", str(source.id))

    # Then a new draft holds every setting, none of the run
    assert result.exit_code == 0, result.output
    copy = Campaign.get_by_id(int(result.output.strip()))
    source = Campaign.get_by_id(source.id)
    settings = [f.name for f in Campaign._meta.sorted_fields if f.name not in campaign_admin.RUN_COLUMNS]
    assert {"template", "rate_limit", "time_zone", "audience", "frequency_cap_h"} <= set(settings)
    assert {name: getattr(copy, name) for name in settings} == {name: getattr(source, name) for name in settings}
    assert (copy.name, copy.status, copy.started_at, copy.fanout_done_at) == ("Winter (copy)", "draft", None, None)
    assert Message.select().where(Message.campaign == copy.id).count() == 0


def test_delete_removes_a_draft_and_refuses_anything_else_in_one_line(db, stub_broker):
    draft, sending = make_campaign(), make_campaign()
    Campaign.update(status=CampaignStatus.SENDING).where(Campaign.id == sending).execute()

    deleted = invoke("campaign", "delete", str(draft))
    refused = invoke("campaign", "delete", str(sending))

    assert (deleted.exit_code, deleted.output) == (0, f"campaign {draft} deleted\n")
    assert Campaign.get_or_none(Campaign.id == draft) is None
    assert refused.exit_code == 1
    assert refused.output.splitlines() == [f"Error: campaign {sending} is sending: only a draft can be deleted"]
    assert Campaign.get_by_id(sending).status == CampaignStatus.SENDING


def test_list_shows_each_campaign_with_its_status_and_counts(db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a completed campaign and a draft
    done = run_mixed_campaign(stub_broker, fake_twilio)
    draft = make_campaign(name="Next")

    # When they are listed, as lines and as JSON
    lines = invoke("campaign", "list").output.splitlines()
    listed = json.loads(invoke("campaign", "list", "--json").output)

    # Then newest first, one line each, with the analytics' counts
    assert [c["id"] for c in listed] == [draft, done]
    assert {k: listed[1][k] for k in ("status", "targeted", "sent", "failed", "skipped")} == {
        "status": "completed", "targeted": 7, "sent": 4, "failed": 1, "skipped": 2}
    assert (listed[0]["status"], listed[0]["targeted"]) == ("draft", 0)
    assert len(lines) == 2 and lines[1].split()[:2] == [str(done), "completed"]
    assert "targeted 7" in lines[1] and "sent 4" in lines[1] and lines[0].endswith("'Next'")
    assert CampaignAnalytics.select().count() == 1


# ------------------------------------------------------------------ through the CLI
def test_the_test_and_preview_commands_show_one_customers_message(db, stub_broker, twilio_backend, fake_twilio):
    ids = make_customers(2)
    campaign_id = make_campaign()

    sent = invoke("campaign", "test", str(campaign_id), "--to", OPERATOR, "--customer", str(ids[1]))
    preview = invoke("campaign", "preview", str(campaign_id), "--customer", str(ids[1]))
    bad = invoke("campaign", "test", str(campaign_id), "--to", "555-0199")
    stranger = invoke("campaign", "preview", str(campaign_id), "--customer", "999999")

    assert sent.exit_code == 0, sent.output
    head, *body = sent.output.splitlines()
    assert head == (f"test message of campaign {campaign_id} sent to +1******0199 as customer {ids[1]}'s message "
                    f"(SID {fake_twilio.messages[0]['sid']}, 1 segment); not counted in the campaign")
    assert [line.strip() for line in body] == fake_twilio.messages[0]["body"].splitlines()
    assert preview.exit_code == 0 and "--- to +1******0001" in preview.output and "Hi Sam1," in preview.output
    assert "audience                         1" in preview.output
    assert (bad.exit_code, bad.output) == (1, "Error: --to ****199 is not a phone number in E.164 form, such as +12125550100\n")
    assert stranger.exit_code == 1
    assert stranger.output == f"Error: customer 999999 is not in campaign {campaign_id}'s audience (or does not exist)\n"


def test_retry_through_the_cli_says_what_it_did(db, stub_broker, stub_worker):
    # Given a completed campaign where nothing failed
    make_customers(2)
    campaign_id = make_campaign()
    actors.send_campaign.send(campaign_id)
    join_all(stub_broker)
    draft = make_campaign()

    nothing = invoke("campaign", "retry", str(campaign_id))
    refused = invoke("campaign", "retry", str(draft))

    assert (nothing.exit_code, nothing.output) == (
        0, f"campaign {campaign_id}: nothing to retry (no send failed for a reason a retry can cure)\n")
    assert (refused.exit_code, refused.output) == (1, f"Error: campaign {draft} is a draft: nothing to retry\n")


def test_a_test_sends_link_opens_the_customers_qr_page_without_a_click(web, twilio_backend, fake_twilio):
    # Given a test send of customer 0's message
    ids = make_customers(1)
    trial = send_test_message(make_campaign(), to=OPERATOR, customer_id=ids[0])

    # When the operator opens its link
    answer = web.http.get(f"{web.base}/q/{trial.link_code}", allow_redirects=False, timeout=10,
                          headers={"User-Agent": "Mozilla/5.0 (iPhone)"})

    # Then it leads to that customer's QR-code page, and no click is counted for anyone
    code = QRCode.get(QRCode.customer == ids[0]).code
    assert (answer.status_code, answer.headers["Location"]) == (302, QR_PAGE.replace("{code}", code))
    assert Click.select().count() == 0


def test_a_test_sends_delivery_report_is_kept_on_its_row_not_left_unknown(web, twilio_backend, fake_twilio):
    # Given a test send
    ids = make_customers(1)
    trial = send_test_message(make_campaign(), to=OPERATOR, customer_id=ids[0])

    # When Twilio reports it delivered, and a day passes
    assert web.status(trial.twilio_sid, "delivered").status_code == 200
    delivery.apply_early_statuses(now=utcnow() + dt.timedelta(days=1, seconds=1))

    # Then the report is on the test's row, nothing waits for it, and no warning is left
    assert TrialSend.get_by_id(trial.id).delivery_status == "delivered"
    assert EarlyStatus.select().count() == 0
    assert Event.select().where(Event.code == "unknown_sid_status").count() == 0
