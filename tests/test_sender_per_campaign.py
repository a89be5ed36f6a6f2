"""A sender per campaign (issue 15): ``campaign create --from`` / ``--messaging-service``,
defaulting to the settings; the campaign keeps its sender from start to end, whatever the
workers' TWILIO_FROM_NUMBER says, for every send and every reconciliation; the preview (and
``campaign send``) ask Twilio whether it knows the sender before anything is sent."""

from __future__ import annotations

import collections
import os
import signal

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

import actors
import fanout
import reports
import sender_check
import senders
import sending
from actors.services import configure_services
from errors import MaybeSent
from bench.common import Workers, delete_namespace, namespace, wait_until, worker_env
from models import Campaign, CampaignStatus, Message, MessageStatus, utcnow
from smsservice import make_backend
from tests.conftest import POSTGRES_URL, REDIS_URL, join_all, twilio_settings
from tests.factories import TEMPLATE, make_customers
from tests.test_cli_campaign import assert_fails, run_cli

NUMBER_A = "+12125550111"
NUMBER_B = "+12125550122"
SERVICE = "MG" + "ab" * 16


@pytest.fixture
def database(sqlite_db, tmp_path) -> str:
    """The URL of the test's SQLite file, which the CLI's subprocess and the test share."""
    return f"sqlite:///{tmp_path / 'campaigns.db'}"


def campaign_with(sender: str | None, name: str = "Campaign") -> int:
    return Campaign.create(name=name, template=TEMPLATE, **senders.columns(sender)).id


# ------------------------------------------------------------------- the sender's form

@pytest.mark.parametrize("given, told", [
    (dict(from_number="2125550111"), "--from '2125550111' is not an E.164 number such as +12125550100"),
    (dict(from_number="+1 212 555 0111"), "--from '+1 212 555 0111' is not an E.164 number such as +12125550100"),
    (dict(messaging_service_sid="MG123"), "--messaging-service 'MG123' is not 'MG' followed by 32 hex digits"),
    (dict(messaging_service_sid="AC" + "a" * 32), f"--messaging-service 'AC{'a' * 32}' is not 'MG' followed by 32 hex digits"),
    (dict(from_number=NUMBER_A, messaging_service_sid=SERVICE), "give --from or --messaging-service, not both"),
])
def test_a_sender_that_is_neither_a_number_nor_a_service_is_refused_naming_the_problem(given, told):
    # When an operator gives a malformed or doubled sender, Then one line names the problem
    with pytest.raises(senders.SenderInvalid) as refused:
        senders.check(**given)
    assert str(refused.value) == told


def test_a_sender_is_stored_in_the_column_its_form_names():
    # Given each form, Then its column is set and the other is empty, and Twilio gets its field
    assert senders.check(from_number=NUMBER_A) == NUMBER_A and senders.check() is None
    assert senders.columns(NUMBER_A) == {"from_number": NUMBER_A, "messaging_service_sid": None}
    assert senders.columns(SERVICE) == {"from_number": None, "messaging_service_sid": SERVICE}
    assert senders.twilio_fields(NUMBER_A) == {"from_": NUMBER_A}
    assert senders.twilio_fields(SERVICE) == {"messaging_service_sid": SERVICE}


# ------------------------------------------------------------- the CLI: create and send

def test_create_keeps_the_sender_given_or_the_settings_one(database):
    # When campaigns are created with --from, with --messaging-service, and with neither
    env = {"TWILIO_FROM_NUMBER": NUMBER_B}
    made = [run_cli("campaign", "create", "--name", "n", "--template", TEMPLATE, *extra, database=database, **env)
            for extra in (["--from", NUMBER_A], ["--messaging-service", SERVICE], [])]

    # Then each stores its own, and the one without gets the settings' sender at creation
    assert [r.returncode for r in made] == [0, 0, 0], [r.stderr for r in made]
    stored = [(c.from_number, c.messaging_service_sid) for c in Campaign.select().order_by(Campaign.id)]
    assert stored == [(NUMBER_A, None), (None, SERVICE), (NUMBER_B, None)]


def test_create_with_a_bad_sender_says_so_in_one_line_and_creates_nothing(database):
    # When the sender is malformed, or both are given
    bad = run_cli("campaign", "create", "--name", "n", "--template", TEMPLATE, "--from", "555-0111", database=database)
    both = run_cli("campaign", "create", "--name", "n", "--template", TEMPLATE, "--from", NUMBER_A,
                   "--messaging-service", SERVICE, database=database)

    # Then each is one line, exit 1, and no campaign exists
    assert_fails(bad, r"Error: --from '555-0111' is not an E\.164 number such as \+12125550100")
    assert_fails(both, r"Error: give --from or --messaging-service, not both")
    assert Campaign.select().count() == 0


def test_send_refuses_a_campaign_whose_sender_twilio_does_not_know(database, fake_twilio):
    # Given a Twilio account holding number A only, and campaigns from A and from B
    fake_twilio.set_account_numbers([NUMBER_A])
    known, unknown = campaign_with(NUMBER_A), campaign_with(NUMBER_B)
    env = dict(SMS_BACKEND="twilio", TWILIO_ACCOUNT_SID=fake_twilio.account_sid, TWILIO_AUTH_TOKEN=fake_twilio.auth_token,
               TWILIO_FROM_NUMBER=NUMBER_A, TWILIO_API_BASE_URL=fake_twilio.base_url, RECONCILE_AFTER_S="30")

    # When each is sent
    refused = run_cli("campaign", "send", str(unknown), database=database, **env)
    started = run_cli("campaign", "send", str(known), database=database, **env)

    # Then B's is refused before it starts (nothing sent, still a draft) and A's starts
    assert_fails(refused, rf"Error: campaign {unknown} not started: sender number \+12125550122: UNKNOWN to Twilio "
                          r"\(not a phone number of this Twilio account: sends would fail with 21606\)")
    assert Campaign.get_by_id(unknown).status == CampaignStatus.DRAFT
    assert started.returncode == 0 and started.stdout.splitlines() == [f"campaign {known} started"], started.stderr
    assert fake_twilio.requests == []


def test_send_starts_with_a_note_when_twilio_cannot_be_asked(database, fake_twilio):
    # Given a Twilio whose number list answers 500
    fake_twilio.fail_sender_checks("500")
    campaign_id = campaign_with(NUMBER_A)
    env = dict(SMS_BACKEND="twilio", TWILIO_ACCOUNT_SID=fake_twilio.account_sid, TWILIO_AUTH_TOKEN=fake_twilio.auth_token,
               TWILIO_FROM_NUMBER=NUMBER_A, TWILIO_API_BASE_URL=fake_twilio.base_url, RECONCILE_AFTER_S="30")

    # When it is sent, Then it starts, saying the sender was not checked and why
    result = run_cli("campaign", "send", str(campaign_id), database=database, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"campaign {campaign_id} started (sender number {NUMBER_A}: sender not checked: Twilio answered HTTP 500)"]


# ------------------------------------------------------------------ the preview's check

def _preview_check(fake, campaign_id: int, **settings):
    config = twilio_settings(fake, twilio_from_number=NUMBER_A, **settings)
    result = reports.preview(campaign_id, short_url_base="https://x.test/q",
                             check_sender=lambda sender: sender_check.check_sender(config, sender))
    return result.sender_check


def test_the_preview_finds_an_unknown_number_before_twilio_refuses_it_with_21606(db, stub_broker, stub_worker, fake_twilio):
    # Given an account holding A (SMS-capable) and B (voice only), and a campaign from B
    make_customers(2)
    fake_twilio.set_account_numbers({NUMBER_A: True, NUMBER_B: False})
    from_b, from_c, from_a = campaign_with(NUMBER_B), campaign_with("+12125550133"), campaign_with(NUMBER_A)

    # When each is previewed
    checks = [_preview_check(fake_twilio, c) for c in (from_b, from_c, from_a)]

    # Then B and C are reported unknown, A known; nothing was sent
    assert [c.line() for c in checks] == [
        f"sender number {NUMBER_B}: UNKNOWN to Twilio (this account's number is not SMS-capable: sends would fail with 21606)",
        "sender number +12125550133: UNKNOWN to Twilio (not a phone number of this Twilio account: sends would fail with 21606)",
        f"sender number {NUMBER_A}: known to Twilio (a phone number of this account, SMS-capable)",
    ]
    assert fake_twilio.requests == []

    # And sending C's anyway meets the 21606 the preview announced: the campaign pauses
    configure_services(backend=make_backend(twilio_settings(fake_twilio, twilio_from_number=NUMBER_A)))
    actors.send_campaign.send(from_c)
    join_all(stub_broker)
    paused = Campaign.get_by_id(from_c)
    assert paused.status == CampaignStatus.PAUSED and "21606" in paused.status_reason
    assert {r["code"] for r in fake_twilio.requests} == {21606}


def test_the_preview_checks_that_a_messaging_service_exists(db, fake_twilio):
    # Given an account with one messaging service
    fake_twilio.set_messaging_services([SERVICE])
    other = "MG" + "cd" * 16

    # When campaigns through it and through another are previewed
    known, unknown = (_preview_check(fake_twilio, campaign_with(s)) for s in (SERVICE, other))

    # Then the first exists and the second is unknown
    assert (known.known, known.detail) == (True, "the messaging service exists")
    assert unknown.line() == (f"sender messaging service {other}: UNKNOWN to Twilio "
                              "(no such messaging service in this account (every send would fail))")


@pytest.mark.parametrize("fault, detail", [
    ("500", "Twilio answered HTTP 500"),
    ("slow", "Twilio could not be reached (ReadTimeout)"),
    ("down", "Twilio could not be reached (ConnectionError)"),
])
@pytest.mark.parametrize("sender", [NUMBER_A, SERVICE])
def test_the_preview_says_sender_not_checked_when_twilio_cannot_be_asked(sqlite_db, fake_twilio, fault, detail, sender):
    # Given a Twilio that answers 500, too slowly for the client's 0.5 s, or not at all
    campaign_id = campaign_with(sender)
    if fault == "down":
        settings = {"twilio_api_base_url": "http://127.0.0.1:9"}  # nothing listens there
    else:
        fake_twilio.fail_sender_checks(fault)
        settings = {}

    # When the campaign is previewed, Then the preview says why the sender was not checked
    checked = _preview_check(fake_twilio, campaign_id, **settings)
    assert checked.known is None
    assert checked.line() == f"sender {senders.describe(sender)}: sender not checked: {detail}"


def test_the_cli_preview_prints_the_check(database):
    # Given the console backend (nothing goes to Twilio) and a campaign from A
    campaign_id = campaign_with(NUMBER_A)

    # When it is previewed, Then the second line says the sender and that it was not checked
    result = run_cli("campaign", "preview", str(campaign_id), database=database)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == (
        f"  sender number {NUMBER_A}: sender not checked: SMS_BACKEND=console sends nothing to Twilio")


# ---------------------------------------------- every send and lookup: the campaign's sender

def test_two_campaigns_at_once_each_message_leaves_from_its_campaigns_sender(db, stub_broker, stub_worker, fake_twilio):
    # Given workers whose default is B, a campaign from A and one through a messaging service
    make_customers(6)
    configure_services(backend=make_backend(twilio_settings(fake_twilio, twilio_from_number=NUMBER_B)),
                       default_sender=NUMBER_B)
    from_a, via_service = campaign_with(NUMBER_A, "A"), campaign_with(SERVICE, "service")

    # When both run at once
    actors.send_campaign.send(from_a)
    actors.send_campaign.send(via_service)
    join_all(stub_broker)

    # Then each message at Twilio left from its own campaign's sender, none from the default
    by_body = {body: (frm, mg) for frm, mg, body in fake_twilio.senders_used}
    rows = list(Message.select().where(Message.status == MessageStatus.SENT))
    assert len(rows) == 12 and len(by_body) == 12
    assert {by_body[r.body] for r in rows if r.campaign_id == from_a} == {(NUMBER_A, None)}
    assert {by_body[r.body] for r in rows if r.campaign_id == via_service} == {(None, SERVICE)}


def test_a_campaign_without_a_sender_gets_the_first_starting_workers_default_once(db):
    # Given a campaign created without a sender (as before this change)
    make_customers(1)
    campaign_id = campaign_with(None)

    # When two fan-outs with different defaults try to start it
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q", default_sender=NUMBER_A)
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q", default_sender=NUMBER_B)

    # Then the first one's default is its sender for good
    assert senders.of(Campaign.get_by_id(campaign_id)) == NUMBER_A
    assert senders.fix_on_campaign(campaign_id, NUMBER_B) == NUMBER_A


def test_a_worker_restarted_with_another_default_sends_and_reconciles_from_the_campaigns_sender(db, fake_twilio):
    # Given a campaign without a sender, started by a worker whose default is A, whose first
    # message Twilio accepted without the worker learning it (maybe sent)
    make_customers(3)
    campaign_id = campaign_with(None)
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q", default_sender=NUMBER_A)
    ids = [m.id for m in Message.select().where(Message.campaign == campaign_id).order_by(Message.id)]
    worker_a = make_backend(twilio_settings(fake_twilio, twilio_from_number=NUMBER_A))
    fake_twilio.accept_then_fail(1, "500")
    with pytest.raises(MaybeSent):
        sending.send_message(ids[0], backend=worker_a, short_url_base="https://x.test/q", default_sender=NUMBER_A)
    sending.send_message(ids[1], backend=worker_a, short_url_base="https://x.test/q", default_sender=NUMBER_A)

    # When a worker whose default is B (other settings) sends the rest and looks up the first
    worker_b = make_backend(twilio_settings(fake_twilio, twilio_from_number=NUMBER_B))
    sending.send_message(ids[2], backend=worker_b, short_url_base="https://x.test/q", default_sender=NUMBER_B)
    found = sending.send_message(ids[0], backend=worker_b, short_url_base="https://x.test/q", default_sender=NUMBER_B,
                                 reconcile_after_s=0.0)
    message_state_rows = {m.id: m for m in Message.select().where(Message.campaign == campaign_id)}

    # Then every message left from A, once, and the maybe-sent one was found (from A), not resent
    assert [frm for frm, _mg, _body in fake_twilio.senders_used] == [NUMBER_A] * 3
    assert (found.status, found.detail) == (MessageStatus.SENT, "reconciled")
    accepted = {m["body"]: m["sid"] for m in fake_twilio.messages}
    assert len(accepted) == 3
    assert all(message_state_rows[i].twilio_sid == accepted[message_state_rows[i].body] for i in ids)


# ------------------------------------- acceptance 4: real workers, restarted with another default

def test_real_workers_restarted_with_another_default_keep_each_campaigns_sender(postgres_db, fake_twilio, tmp_path):
    # Given 2 x 100 customers' messages: a campaign created without a sender (it gets the
    # default of the workers that start it: A) and one through a messaging service; the first
    # 3 messages Twilio accepts of each lose their answer (maybe sent: looked up at Twilio
    # once RECONCILE_AFTER_S has passed, by then after the restart)
    make_customers(100)
    under_a, via_service = campaign_with(None, "created under A"), campaign_with(SERVICE, "service")
    ns = namespace("test-sender")
    env = worker_env(fake_twilio, ns=ns, database_url=POSTGRES_URL, REDIS_URL=REDIS_URL, TWILIO_FROM_NUMBER=NUMBER_A,
                     TWILIO_TIMEOUT_S="2", RECONCILE_AFTER_S="10", SMS_RATE_LIMIT="25/second", METRICS_DELAY_MS="200",
                     dramatiq_worker_timeout="100")
    broker = RedisBroker(url=REDIS_URL, namespace=ns)
    postgres_db.close()
    first = Workers("actors", env, str(tmp_path / "workers-a.log"), processes=1, threads=8)
    second = None
    try:
        # When workers with TWILIO_FROM_NUMBER=A run both campaigns at once, are stopped mid-way
        # (SIGTERM to the dramatiq parent), and workers with TWILIO_FROM_NUMBER=B take over
        fake_twilio.accept_then_fail(3, "500")
        broker.enqueue(actors.send_campaign.message(under_a))
        assert wait_until(lambda: len(fake_twilio.messages) >= 3, 60), first.tail()  # A's three maybe sent
        fake_twilio.accept_then_fail(3, "500")
        broker.enqueue(actors.send_campaign.message(via_service))
        assert wait_until(lambda: len(fake_twilio.messages) >= 40, 60), first.tail()
        os.kill(first.proc.pid, signal.SIGTERM)  # the dramatiq parent only: an orderly shutdown
        first.proc.wait(60)
        postgres_db.connect()
        stopped_at, sent_before = utcnow(), len(fake_twilio.requests)
        assert {c.status for c in Campaign.select()} == {CampaignStatus.SENDING}
        postgres_db.close()
        second = Workers("actors", {**env, "TWILIO_FROM_NUMBER": NUMBER_B}, str(tmp_path / "workers-b.log"),
                         processes=1, threads=8)
        postgres_db.connect()
        assert wait_until(lambda: {c.status for c in Campaign.select()} == {CampaignStatus.COMPLETED}, 120), (
            first.tail(3000) + second.tail(3000))

        # Then every message left from its campaign's sender, before and after the restart
        rows = {m.body: m for m in Message.select()}
        campaign_of = {body: m.campaign_id for body, m in rows.items()}
        used = collections.Counter((campaign_of[body], frm, mg) for frm, mg, body in fake_twilio.senders_used)
        after = collections.Counter(campaign_of[body] for _f, _m, body in fake_twilio.senders_used[sent_before:])
        print(f"\nrequests at the fake by (campaign, From, MessagingServiceSid): {dict(used)}; "
              f"after the restart: {dict(after)}")
        assert used == {(under_a, NUMBER_A, None): 100, (via_service, None, SERVICE): 100}
        assert after[under_a] > 0 and after[via_service] > 0
        # And every customer got one message per campaign, its SID on the row
        assert len(fake_twilio.messages) == len(rows) == 200
        assert all(rows[m["body"]].twilio_sid == m["sid"] for m in fake_twilio.messages)
        # And the 6 maybe-sent messages were found at Twilio by the workers whose default is B
        found = [m for m in rows.values() if m.reason == "found at Twilio after an unanswered request"]
        print(f"maybe sent, found at Twilio after the restart: {len(found)} "
              f"(campaigns {sorted(collections.Counter(m.campaign_id for m in found).items())})")
        assert len(found) == 6 and all(m.updated_at >= stopped_at for m in found)
        assert collections.Counter(m.campaign_id for m in found)[under_a] >= 3
        assert senders.of(Campaign.get_by_id(under_a)) == NUMBER_A
    finally:
        if second is not None:
            second.stop()
        first.stop()
        broker.close()
        delete_namespace(redis.Redis.from_url(REDIS_URL), ns)
