"""'Maybe sent' is reconciled at Twilio, not resent: a 5xx after acceptance, a dropped
connection, a read timeout, a row a crashed worker left in ``sending``, and sends whose
records a crash lost before they were written."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import threading

import pytest
from dramatiq import Worker

import actors
import analytics
import fanout
import sending
from errors import TransientError
from batching import WriteBehind
from models import Campaign, CampaignStatus, Event, Message, MessageStatus, utcnow
from tests.conftest import ROOT, join_all, wait_for
from tests.factories import make_campaign, make_customers, phone_for


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_accepted_then_no_answer_is_found_at_twilio_not_resent(db, stub_broker, stub_worker, twilio_backend, fake_twilio, mode):
    # Given Twilio accepts the first message but the answer is lost
    make_customers(3)
    fake_twilio.accept_then_fail(1, mode)
    campaign_id = make_campaign()

    # When the campaign runs (the retry waits RECONCILE_AFTER_S, 1 s in the tests)
    actors.send_campaign.send(campaign_id)
    join_all(stub_broker)

    # Then every customer has exactly one message at Twilio and one sent row with its SID
    tos = [m["to"] for m in fake_twilio.messages]
    assert sorted(tos) == sorted(phone_for(i) for i in range(3))
    sids = {m["to"]: m["sid"] for m in fake_twilio.messages}
    rows = list(Message.select().where(Message.campaign == campaign_id))
    assert {r.status for r in rows} == {MessageStatus.SENT}
    assert {r.to_phone: r.twilio_sid for r in rows} == sids
    reconciled = [r for r in rows if r.attempts == 2]
    assert len(reconciled) == 1 and reconciled[0].reason == "found at Twilio after an unanswered request"
    assert analytics.analytics_dict(campaign_id)["sent"] == 3


def test_read_timeout_is_reconciled(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given Twilio answers slower than the client's 0.5 s timeout
    make_customers(1)
    fake_twilio.latency_s = 0.8
    campaign_id = make_campaign()

    actors.send_campaign.send(campaign_id)
    join_all(stub_broker)

    assert len(fake_twilio.messages) == 1
    row = Message.get(Message.campaign == campaign_id)
    assert row.status == MessageStatus.SENT and row.twilio_sid == fake_twilio.messages[0]["sid"]


def test_a_row_left_sending_by_a_crash_is_sent_once_when_twilio_has_none(db, fake_twilio, twilio_backend):
    # Given a worker claimed a message and died before calling Twilio
    make_customers(1)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
    row = Message.get(Message.campaign == campaign_id)
    Message.update(status=MessageStatus.SENDING, body="Hi\nReply STOP to unsubscribe", segments=1,
                   sending_at=utcnow() - dt.timedelta(seconds=5), attempts=1).where(Message.id == row.id).execute()

    # When the message comes back while the claim is recent, it is told to come back later
    with pytest.raises(TransientError) as later:
        sending.send_message(row.id, backend=twilio_backend, short_url_base="https://x.test/q", reconcile_after_s=60)
    assert later.value.code == "in_flight" and 55_000 < later.value.retry_after_ms <= 56_000
    assert fake_twilio.messages == []

    # And once it is old enough, Twilio is asked, has nothing, and it is sent exactly once
    outcome = sending.send_message(row.id, backend=twilio_backend, short_url_base="https://x.test/q", reconcile_after_s=1)
    again = sending.send_message(row.id, backend=twilio_backend, short_url_base="https://x.test/q", reconcile_after_s=1)
    assert outcome.status == MessageStatus.SENT and again.detail == "already handled"
    assert [m["body"] for m in fake_twilio.messages] == ["Hi\nReply STOP to unsubscribe"]
    assert Message.get_by_id(row.id).attempts == 2


def test_sends_whose_records_a_crash_lost_are_found_at_twilio_not_resent(db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a worker that sent a campaign, had its broker messages acked, and died before
    # its writer thread wrote the "sent" records (the writer here keeps them to itself)
    make_customers(5)
    campaign_id = make_campaign()
    lost = []
    actors.services.configure_services(sent_records=WriteBehind(lost.extend))
    actors.send_campaign.send(campaign_id)
    wait_for(lambda: len(fake_twilio.messages) == 5)
    stub_broker.join("sms", timeout=10_000)  # the dispatcher goes on while rows are open
    assert len(lost) == 5 and len(fake_twilio.messages) == 5
    assert {m.status for m in Message.select()} == {MessageStatus.SENDING}

    # When, an hour later, another worker comes up and the dispatcher finds them stuck
    an_hour_ago = utcnow() - dt.timedelta(hours=1)
    Message.update(sending_at=an_hour_ago, queued_at=an_hour_ago).execute()
    actors.services.configure_services(sent_records=WriteBehind(sending.write_sent))
    actors.dispatch_campaign.send(campaign_id, Campaign.get_by_id(campaign_id).dispatch_token)
    join_all(stub_broker)

    # Then each is found at Twilio and recorded with its SID; nobody got a second message
    assert sorted(m["to"] for m in fake_twilio.messages) == sorted(phone_for(i) for i in range(5))
    rows = list(Message.select())
    assert {r.to_phone: r.twilio_sid for r in rows} == {m["to"]: m["sid"] for m in fake_twilio.messages}
    assert {r.reason for r in rows} == {"found at Twilio after an unanswered request"}
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.COMPLETED


def test_a_worker_that_stops_writes_the_records_it_holds_first(sqlite_db, stub_broker, twilio_backend, fake_twilio):
    # Given a worker whose writer cannot write yet (the database is slow to answer)
    make_customers(5)
    campaign_id = make_campaign()
    database_answers = threading.Event()

    def slow_write(records):
        database_answers.wait(10)
        sending.write_sent(records)

    actors.services.configure_services(sent_records=WriteBehind(slow_write, on_exit=sending.release_connection))
    worker = Worker(stub_broker, worker_timeout=50, worker_threads=4)
    worker.start()
    actors.send_campaign.send(campaign_id)
    wait_for(lambda: len(fake_twilio.messages) == 5)
    stub_broker.join("sms", timeout=10_000)  # the dispatcher goes on while rows are open
    assert actors.services.get_services().sent_records.pending == 5
    assert len(fake_twilio.messages) == 5

    # When the worker is told to stop (SIGTERM on a dyno), and the database answers meanwhile
    threading.Timer(0.3, database_answers.set).start()
    worker.stop()

    # Then it wrote every record before it stopped
    assert {m.status for m in Message.select()} == {MessageStatus.SENT}


def test_a_worker_process_that_exits_abruptly_writes_the_records_it_holds_first(tmp_path):
    # Given a worker process (the actors module, as ``dramatiq actors`` loads it) whose writer
    # holds a record it is slow to write, when the process is made to exit at once, as
    # dramatiq's handler of a second SIGTERM does (``sys.exit``, no orderly shutdown)
    written = tmp_path / "written"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        import actors
        from actors.services import configure_services
        from batching import WriteBehind

        def slow_write(records):
            time.sleep(0.5)
            open({str(written)!r}, "w").write(repr(records))

        configure_services(sent_records=WriteBehind(slow_write)).sent_records.put(7)
        sys.exit(3)
    """)

    # When it runs
    exited = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True, text=True)

    # Then it wrote the record before it was gone
    assert exited.returncode == 3, exited.stderr[-2000:]
    assert written.read_text() == "[7]"


def test_retries_exhausted_leave_a_recorded_failure(sqlite_db, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given Twilio is rate limiting every request and the actor may retry only twice, quickly
    make_customers(1)
    fake_twilio.set_error_rates(rate_429=1.0)
    campaign_id = make_campaign()
    actors.send_sms.options.update(max_retries=2, min_backoff=10, max_backoff=50)
    try:
        actors.send_campaign.send(campaign_id)
        join_all(stub_broker, fail_fast=False)
    finally:
        actors.send_sms.options.update(max_retries=10, min_backoff=5_000, max_backoff=15 * 60_000)

    # Then the customer's row is failed with the reason, and the campaign finished
    row = Message.get(Message.campaign == campaign_id)
    assert row.status == MessageStatus.FAILED and row.error_code == "retries_exhausted"
    assert "too many requests" in row.reason
    assert fake_twilio.messages == [] and len(fake_twilio.requests) == 3
    assert analytics.analytics_dict(campaign_id)["status"] == "completed"


def test_giving_up_on_a_maybe_sent_row_leaves_it_for_reconciliation(sqlite_db):
    # Given a row whose send may have reached Twilio
    make_customers(1)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
    row = Message.get()
    Message.update(status=MessageStatus.SENDING, sending_at=utcnow()).where(Message.id == row.id).execute()

    # When its retries run out, it is not failed blind: it stays for the lookup at Twilio
    assert sending.give_up(row.id, retries=10) == campaign_id
    assert Message.get_by_id(row.id).status == MessageStatus.SENDING
    assert "left for reconciliation" in Event.get(Event.code == "retries_exhausted").detail

