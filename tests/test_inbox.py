"""Inbound texts through the real webhook route, signed as Twilio signs them: the keywords
of every language (ARRÊT stops anyone), HELP answered when Twilio does not answer it, and
every other reply kept in the inbox, per customer and per number."""

from __future__ import annotations

import html
import re

import pytest

import actors
import models
from inbox import inbox_for, inbox_for_phone, record_reply
from languages import ENGLISH, FRENCH
from models import Campaign, Customer, InboundMessage, Message, MessageStatus, OptOutEvent, QRCode, Suppression
from settings import Secret, Settings
from segments import measure
from tests.conftest import join_all
from tests.factories import make_campaign, make_customers, phone_for
from tests.test_cli_campaign import assert_fails, run_cli
from tests.test_web import PUBLIC, TOKEN, Server, new_sid
from web import create_app

EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def serve(**settings) -> Server:
    """The web process on loopback, Twilio's requests signed for PUBLIC (``tests/test_web.py``)."""
    values = dict(database_url=f"sqlite:///{models.database.obj.database}", twilio_auth_token=Secret(TOKEN),
                  public_base_url=PUBLIC, **settings)
    return Server(create_app(Settings(**values)))


@pytest.fixture
def web(sqlite_db, stub_broker):
    server = serve()
    yield server
    server.close()


@pytest.fixture
def database(sqlite_db, tmp_path) -> str:
    """The URL of the test's SQLite file, which the CLI's subprocess shares."""
    return f"sqlite:///{tmp_path / 'campaigns.db'}"


def said(answer) -> str | None:
    """The text a TwiML answer sends back, None for an empty one."""
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/xml"), answer.text
    if answer.text == EMPTY:
        return None
    [text] = re.findall(r"<Message>(.*)</Message>", answer.text, re.S)
    return html.unescape(text)


def test_a_french_campaign_has_the_french_footer_and_an_arret_from_a_customer_suppresses_them(
        web, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a French campaign sent to 3 customers through the fake Twilio
    ids = make_customers(3)
    french = Campaign.create(name="Soldes", template="Bonjour {first_name}, les soldes : {short_url}", language="fr").id
    actors.send_campaign.send(french)
    join_all(stub_broker)

    # Then every message Twilio was given ends in the French footer, in GSM-7, one segment
    assert len(fake_twilio.messages) == 3
    for sent in fake_twilio.messages:
        assert sent["body"].endswith("\nRépondez STOP pour vous désabonner"), sent["body"]
        assert (measure(sent["body"]).encoding, measure(sent["body"]).segments) == ("GSM-7", 1)

    # When customer 1 answers "ARRÊT" through the signed webhook
    answer = web.inbound(phone_for(1), "ARRÊT")

    # Then the number is on the suppression list, the customer unsubscribed, and the
    # confirmation (Twilio does not handle ARRET) is ours, in French
    assert said(answer) == FRENCH.stopped_reply
    assert Suppression.get(Suppression.phone_e164 == phone_for(1)).source == "inbound"
    assert Customer.get_by_id(ids[1]).sms_subscribed is False
    assert [(e.customer_id, e.action, e.keyword) for e in OptOutEvent.select()] == [(ids[1], "stop", "ARRET")]
    assert not InboundMessage.select().exists()

    # When a new row with the same number appears and a later campaign is sent
    again = Customer.create(first_name="Re", phone=phone_for(1))
    QRCode.create(customer=again, code="RE000001")
    later = make_campaign(name="later")
    actors.send_campaign.send(later)
    join_all(stub_broker)

    # Then nobody at that number gets it: the old row unsubscribed, the new one suppressed
    to_later = [m["to"] for m in fake_twilio.messages[3:]]
    assert sorted(to_later) == sorted([phone_for(0), phone_for(2)])
    skipped = {r.customer_id: r.error_code for r in Message.select().where(Message.campaign == later,
                                                                           Message.status == MessageStatus.SKIPPED)}
    assert skipped == {ids[1]: "unsubscribed", again.id: "suppressed"}


@pytest.mark.parametrize("body", ["ARRET", "arret", "Arrêt !", "arrêt", " ARRÊT. ", "Désabonner"])
def test_every_spelling_of_a_french_opt_out_stops_the_number(web, body):
    # Given a customer who was never sent a French campaign
    (customer,) = make_customers(1)

    # When they text a French opt-out, in any case, with or without its accent
    answer = web.inbound(phone_for(0), body)

    # Then they are unsubscribed and the number suppressed, and told so in French
    assert Customer.get_by_id(customer).sms_subscribed is False
    assert Suppression.select().where(Suppression.phone_e164 == phone_for(0)).exists()
    assert said(answer) == FRENCH.stopped_reply


def test_an_opt_out_twilio_handles_is_not_confirmed_twice(web):
    # Given two customers
    make_customers(2)

    # When one texts STOP (Twilio's own keyword) and the other ARRET that Advanced Opt-Out
    # took as an opt-out (OptOutType=STOP: Twilio confirms)
    stop = web.inbound(phone_for(0), "STOP")
    arret = web.inbound(phone_for(1), "ARRET", opt_out_type="STOP")

    # Then both are suppressed and neither gets a second confirmation from us
    assert (said(stop), said(arret)) == (None, None)
    assert Suppression.select().count() == 2


def test_help_is_answered_unless_twilio_answered_it_and_kept_in_the_inbox(web, stub_broker, stub_worker,
                                                                          twilio_backend, fake_twilio):
    # Given customer 0 last texted by a French campaign, customer 1 by none
    make_customers(2)
    Customer.update(sms_subscribed=False).where(Customer.phone == phone_for(1)).execute()
    french = Campaign.create(name="Soldes", template="Bonjour {short_url}", language="fr").id
    actors.send_campaign.send(french)
    join_all(stub_broker)
    Customer.update(sms_subscribed=True).execute()

    # When they ask for help in each way, once with Twilio's Advanced Opt-Out answering
    answers = [said(web.inbound(phone_for(0), "INFO")), said(web.inbound(phone_for(1), "help")),
               said(web.inbound(phone_for(1), "Aide")), said(web.inbound(phone_for(1), "HELP", opt_out_type="HELP"))]

    # Then INFO is answered in the language the number was texted in, HELP in English, AIDE
    # in French, and nothing when Twilio answered; every one is kept, nobody unsubscribed
    assert answers == [FRENCH.help_reply, ENGLISH.help_reply, FRENCH.help_reply, None]
    assert [r.body for r in inbox_for_phone(phone_for(1))] == ["help", "Aide", "HELP"]
    assert Customer.select().where(Customer.sms_subscribed == False).count() == 0  # noqa: E712


def test_the_configured_help_reply_wins(sqlite_db, stub_broker):
    # Given a web process with SMS_HELP_REPLY set
    server = serve(sms_help_reply="Acme Shoes: help at acme.example or 212-555-0100.")
    try:
        # When a number texts AIDE, then the answer is the configured one
        assert said(server.inbound(phone_for(0), "AIDE")) == "Acme Shoes: help at acme.example or 212-555-0100."
    finally:
        server.close()


def test_other_replies_are_kept_once_per_message_and_visible_per_customer(web):
    # Given two customers, the second's number also held by a later row
    a, b = make_customers(2)
    Customer.update(phone_e164=phone_for(1)).where(Customer.id == b).execute()
    twin = Customer.create(first_name="Twin", phone=phone_for(1), phone_e164=phone_for(1))

    # When they reply (one message replayed by Twilio), and an unknown number writes
    sid = new_sid()
    assert said(web.inbound(phone_for(0), "Is the sale\non Sunday?\x1b[2J", sid=sid)) is None
    assert said(web.inbound(phone_for(0), "Is the sale\non Sunday?\x1b[2J", sid=sid)) is None
    assert said(web.inbound(phone_for(1), "Thanks \u202eevil")) is None
    assert said(web.inbound("+12125559999", "who is this")) is None
    assert said(web.inbound(phone_for(0), "stop by the store")) is None

    # Then each is kept once, cleaned, with its customer; nobody is unsubscribed
    assert [(r.customer_id, r.body) for r in inbox_for(a)] == [(a, "Is the sale on Sunday?[2J"), (a, "stop by the store")]
    assert [(r.customer_id, r.body) for r in inbox_for(b)] == [(b, "Thanks evil")]
    assert [r.body for r in inbox_for(twin.id)] == ["Thanks evil"]  # the number's replies, whoever's row
    assert [(r.customer_id, r.body) for r in inbox_for_phone("+12125559999")] == [(None, "who is this")]
    assert InboundMessage.select().count() == 4 and not Suppression.select().exists()


def test_customers_inbox_prints_a_numbers_replies_with_the_number_masked(database, web):
    # Given a customer who replied twice
    (customer,) = make_customers(1)
    web.inbound(phone_for(0), "Is the sale on Sunday?")
    web.inbound(phone_for(0), "ok thanks")

    # When the operator reads the inbox of that number, and of a number that is none
    result = run_cli("customers", "inbox", phone_for(0), database=database)
    empty = run_cli("customers", "inbox", "+12125559999", database=database)
    bad = run_cli("customers", "inbox", "not-a-phone", database=database)

    # Then the replies are listed oldest first, the number masked; the others in one line
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == [
        f"+1******0000 (customer {customer}): Is the sale on Sunday?", f"+1******0000 (customer {customer}): ok thanks"]
    assert phone_for(0) not in result.stdout
    assert empty.stdout == "no replies from +1******9999\n"
    assert_fails(bad, r"Error: Invalid value for PHONE: invalid phone number \(no digits\): .*", code=2)


def test_the_inbox_keeps_a_reply_once_and_finds_its_customer_on_both_databases(db):
    # Given a customer texted by a campaign, and another row holding the same number since
    a, b = make_customers(2)
    campaign_id = make_campaign()
    Message.create(campaign=campaign_id, customer=b, status=MessageStatus.SENT, to_phone=phone_for(0),
                   twilio_sid=new_sid(), sent_at=models.utcnow())
    Customer.update(phone_e164=phone_for(0)).where(Customer.id.in_([a, b])).execute()

    # When the number replies, and the same message is recorded again
    sid = new_sid()
    first = record_reply(phone_for(0), "  Où est\tle magasin ?  ", sid)
    replay = record_reply(phone_for(0), "  Où est\tle magasin ?  ", sid)

    # Then it is kept once, as the reply of the customer last texted at the number, cleaned
    assert first is not None and replay is None
    assert [(r.customer_id, r.body) for r in inbox_for_phone(phone_for(0))] == [(b, "Où est le magasin ?")]
    assert [r.message_sid for r in inbox_for(a)] == [sid]  # a holds the number too
