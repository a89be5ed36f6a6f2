"""The web process over real HTTP: Twilio's status callbacks and inbound messages, signed
with twilio's own RequestValidator, and the short links, each checked in the database.

The app is served on 127.0.0.1 by werkzeug in a thread; PUBLIC_BASE_URL is deliberately not
the address the app sees (as behind Heroku's router), so a signature only passes when it
signs the public URL Twilio called.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from twilio.request_validator import RequestValidator
from werkzeug.serving import make_server

import actors
import analytics
import fanout
import message_types
import delivery
import models
import sending
from errors import ConfigurationError
from models import CampaignAnalytics, Click, Customer, EarlyStatus, Event, Message, MessageStatus, OptOutEvent, QRCode, utcnow
from settings import Secret, Settings
from tests.conftest import join_all
from tests.factories import make_campaign, make_customers, phone_for
from web import create_app

TOKEN = "web-test-auth-token"
PUBLIC = "https://campaigns.example.com"
QR_PAGE = "https://cdn.example.com/qr/{code}"
BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1"


class Server:
    """The app on an ephemeral loopback port; ``post`` signs like Twilio does."""

    def __init__(self, app):
        self.httpd = make_server("127.0.0.1", 0, app, threaded=True)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.http = requests.Session()

    def post(self, path: str, params: dict, *, sign: str | None = "", token: str = TOKEN) -> requests.Response:
        """POST ``params`` to ``path``. ``sign`` is the URL to sign ("" = the public URL of
        ``path``, None = send no signature)."""
        headers = {}
        if sign is not None:
            url = sign or PUBLIC + path
            headers["X-Twilio-Signature"] = RequestValidator(token).compute_signature(url, params)
        return self.http.post(self.base + path, data=params, headers=headers, timeout=10)

    def status(self, sid: str, status: str, error_code: str | None = None, **kwargs) -> requests.Response:
        params = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status,
                  "AccountSid": "AC" + "f" * 32, "To": "+12125550199", "From": "+12125550100"}
        if error_code:
            params["ErrorCode"] = error_code
        return self.post("/twilio/status", params, **kwargs)

    def inbound(self, from_: str, body: str, *, sid: str | None = None, opt_out_type: str | None = None, **kwargs):
        params = {"MessageSid": sid or new_sid(), "From": from_, "To": "+12125550100", "Body": body,
                  "AccountSid": "AC" + "f" * 32, "NumMedia": "0"}
        if opt_out_type:
            params["OptOutType"] = opt_out_type
        return self.post("/twilio/inbound", params, **kwargs)

    def get(self, path: str, user_agent: str = BROWSER, method: str = "GET") -> requests.Response:
        return self.http.request(method, self.base + path, headers={"User-Agent": user_agent}, allow_redirects=False, timeout=10)

    def close(self):
        self.http.close()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def new_sid(prefix: str = "SM") -> str:
    return prefix + uuid.uuid4().hex


@pytest.fixture
def web(sqlite_db, stub_broker):
    settings = Settings(
        database_url=f"sqlite:///{models.database.obj.database}",
        twilio_auth_token=Secret(TOKEN),
        public_base_url=PUBLIC + "/",
        short_url_base=PUBLIC + "/q",
        qr_display_url=QR_PAGE,
    )
    settings.validate()
    server = Server(create_app(settings))
    yield server
    server.close()


def sent_rows(count: int, *, campaign_id: int | None = None, sent_at: dt.datetime | None = None) -> list[Message]:
    """``count`` customers with a message already sent (and a Twilio SID) in one campaign."""
    campaign_id = campaign_id or make_campaign()
    ids = make_customers(count)
    for i, customer_id in enumerate(ids):
        Message.create(campaign=campaign_id, customer=customer_id, status=MessageStatus.SENT, to_phone=phone_for(i),
                       twilio_sid=new_sid(), sent_at=sent_at or utcnow(), segments=1)
    return list(Message.select().where(Message.campaign == campaign_id).order_by(Message.id))


def reload(message: Message) -> Message:
    return Message.get_by_id(message.id)


def test_delivery_callbacks_of_a_real_run_end_in_the_analytics(web, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a campaign sent to 6 customers through the fake Twilio
    make_customers(6)
    campaign_id = make_campaign()
    actors.send_campaign.send(campaign_id)
    join_all(stub_broker)
    rows = list(Message.select().where(Message.campaign == campaign_id).order_by(Message.id))
    assert {r.to_phone: r.twilio_sid for r in rows} == {m["to"]: m["sid"] for m in fake_twilio.messages}
    assert len(rows) == 6

    # When Twilio reports each one: 3 delivered (one after queued and sent), 2 undelivered
    # with 30003, 1 failed with 30005
    outcomes = [("delivered", None)] * 3 + [("undelivered", "30003")] * 2 + [("failed", "30005")]
    assert web.status(rows[0].twilio_sid, "queued").status_code == 200
    assert web.status(rows[0].twilio_sid, "sent").status_code == 200
    for row, (status, code) in zip(rows, outcomes):
        assert web.status(row.twilio_sid, status, code).status_code == 200
    join_all(stub_broker)

    # Then every record holds its outcome and the analytics count them
    assert [(reload(r).delivery_status, reload(r).delivery_error_code) for r in rows] == outcomes
    assert all(reload(r).delivered_at is not None for r in rows[:3])
    assert all(reload(r).delivered_at is None for r in rows[3:])
    figures = analytics.analytics_dict(campaign_id)
    assert (figures["sent"], figures["delivered"], figures["undelivered"]) == (6, 3, 3)
    assert figures["carrier_errors"] == {"30003": 2, "30005": 1}


def test_forged_unsigned_and_misaddressed_requests_are_refused_and_change_nothing(web):
    [row] = sent_rows(1)
    customer = row.customer_id
    bad = [
        dict(token="not-the-auth-token"),                      # forged: wrong key
        dict(sign=None),                                       # unsigned
        dict(sign=PUBLIC + "/elsewhere"),                      # signed for another URL
        dict(sign="http://campaigns.example.com{path}"),       # signed for another scheme
        dict(sign=web.base + "{path}"),                        # signed for the address the app sees
        dict(sign=PUBLIC + "{path}?x=1"),                      # signed with a query it was not sent with
    ]
    for kwargs in bad:
        def at(path):
            return {k: (v.format(path=path) if isinstance(v, str) else v) for k, v in kwargs.items()}
        assert web.status(row.twilio_sid, "delivered", **at("/twilio/status")).status_code == 403, kwargs
        assert web.inbound(row.to_phone, "STOP", **at("/twilio/inbound")).status_code == 403, kwargs
    # Each endpoint's signature is only good for that endpoint
    status_params = {"MessageSid": row.twilio_sid, "MessageStatus": "delivered"}
    assert web.post("/twilio/status", status_params, sign=PUBLIC + "/twilio/inbound").status_code == 403
    # A signature over other parameters does not cover a changed body either
    params = {"MessageSid": row.twilio_sid, "MessageStatus": "delivered"}
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + "/twilio/status", params)
    tampered = requests.post(web.base + "/twilio/status", data={**params, "ErrorCode": "30003"},
                             headers={"X-Twilio-Signature": signature}, timeout=10)
    assert tampered.status_code == 403

    assert reload(row).delivery_status is None and reload(row).delivered_at is None
    assert Customer.get_by_id(customer).sms_subscribed is True
    assert OptOutEvent.select().count() == 0


def test_replayed_callbacks_change_nothing_further(web):
    [row] = sent_rows(1)
    # Given a delivered message
    assert web.status(row.twilio_sid, "delivered").status_code == 200
    delivered = reload(row)
    assert delivered.delivery_status == "delivered" and delivered.delivered_at is not None

    # When the same callback and a late "sent" are replayed
    assert web.status(row.twilio_sid, "delivered").status_code == 200
    assert web.status(row.twilio_sid, "sent").status_code == 200
    assert web.status(row.twilio_sid, "undelivered", "30003").status_code == 200

    # Then nothing moved
    again = reload(row)
    assert (again.delivery_status, again.delivery_error_code, again.delivered_at) == ("delivered", None, delivered.delivered_at)

    # And a replayed inbound STOP neither records a second event nor undoes a later START
    stop_sid = new_sid()
    assert web.inbound(row.to_phone, "STOP", sid=stop_sid).status_code == 200
    assert Customer.get_by_id(row.customer_id).sms_subscribed is False
    assert web.inbound(row.to_phone, "START").status_code == 200
    assert Customer.get_by_id(row.customer_id).sms_subscribed is True
    assert web.inbound(row.to_phone, "STOP", sid=stop_sid).status_code == 200
    assert Customer.get_by_id(row.customer_id).sms_subscribed is True
    events = list(OptOutEvent.select().order_by(OptOutEvent.id))
    assert [(e.action, e.keyword) for e in events] == [("stop", "STOP"), ("start", "START")]
    assert [e.message_sid for e in events].count(stop_sid) == 1


def test_inbound_opt_out_keywords_and_phone_lookup(web):
    campaign_id = make_campaign()
    a = Customer.create(first_name="A", phone="+12125550101")                            # raw phone in E.164
    b = Customer.create(first_name="B", phone="212.555.0102", phone_e164="+12125550102")  # normalised phone
    c = Customer.create(first_name="C", phone="(212) 555-0103")                          # only a message's to_phone
    d = Customer.create(first_name="D", phone="+12125550104")
    Message.create(campaign=campaign_id, customer=c, status=MessageStatus.SENT, to_phone="+12125550103", twilio_sid=new_sid())

    answer = web.inbound("+12125550101", "stop")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/xml") and "<Response/>" in answer.text
    assert web.inbound("+12125550102", " Stop! ").status_code == 200
    assert web.inbound("+12125550103", "please take me off", opt_out_type="STOP").status_code == 200
    assert web.inbound("+12125550104", "stop by the store").status_code == 200

    subscribed = {x.first_name: x.sms_subscribed for x in Customer.select()}
    assert subscribed == {"A": False, "B": False, "C": False, "D": True}
    events = {e.customer_id: (e.action, e.keyword, e.phone_e164) for e in OptOutEvent.select()}
    assert events == {
        a.id: ("stop", "STOP", "+12125550101"),
        b.id: ("stop", "STOP", "+12125550102"),
        c.id: ("stop", "OptOutType=STOP", "+12125550103"),
    }

    # START (any case, with punctuation) resubscribes; the inbound SID is on the event
    sid = new_sid()
    assert web.inbound("+12125550101", "Start.", sid=sid).status_code == 200
    assert Customer.get_by_id(a.id).sms_subscribed is True
    assert OptOutEvent.get(OptOutEvent.message_sid == sid).action == "start"
    assert Customer.get_by_id(d.id).sms_subscribed is True


def test_out_of_order_and_concurrent_callbacks_only_move_forward(web):
    rows = sent_rows(5)
    # Delivered, then a late sent and queued: stays delivered
    first = rows[0]
    for status in ("delivered", "sent", "queued", "sending"):
        assert web.status(first.twilio_sid, status).status_code == 200
    assert reload(first).delivery_status == "delivered"

    # Every status of every message at once, in a random order: all end at their final one
    final = {r.twilio_sid: ("delivered" if i % 2 else "undelivered") for i, r in enumerate(rows[1:])}
    calls = [(sid, s) for sid, last in final.items() for s in ("queued", "sending", "sent", last)] * 2
    random.Random(5).shuffle(calls)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda call: web.status(*call).status_code, calls))
    assert set(codes) == {200}
    assert {r.twilio_sid: reload(r).delivery_status for r in rows[1:]} == final


def test_stop_while_a_campaign_is_sending_stops_later_messages(web, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a campaign whose rows are recorded but not yet sent
    ids = make_customers(5)
    campaign_id = make_campaign()
    fanned = fanout.fan_out(campaign_id, short_url_base=PUBLIC + "/q")
    assert Message.select().where(Message.status == MessageStatus.PENDING).count() == 5

    # When customer 2 replies STOP before its message goes out
    assert web.inbound(phone_for(2), "STOP").status_code == 200

    # And the sends run
    actors.dispatch_campaign.send(campaign_id, fanned.dispatch_token)
    join_all(stub_broker)

    # Then customer 2 got nothing and is recorded skipped as unsubscribed; the others got theirs
    assert sorted(m["to"] for m in fake_twilio.messages) == sorted(phone_for(i) for i in (0, 1, 3, 4))
    row = Message.get(Message.customer == ids[2])
    assert (row.status, row.error_code) == (MessageStatus.SKIPPED, "unsubscribed")
    assert analytics.database_counts(campaign_id) == {"sent": 4, "skipped": 1}


def test_short_links_count_people_not_preview_bots(web, stub_broker, stub_worker):
    # Given X and Y were last sent campaign 2 (X was also sent campaign 1, earlier), Z nothing
    old, new = make_campaign(name="old"), make_campaign(name="new")
    x, y, z = make_customers(3)
    earlier = utcnow() - dt.timedelta(days=3)
    Message.create(campaign=old, customer=x, status=MessageStatus.SENT, to_phone=phone_for(0), twilio_sid=new_sid(), sent_at=earlier)
    Message.create(campaign=new, customer=x, status=MessageStatus.SENT, to_phone=phone_for(0), twilio_sid=new_sid(), sent_at=utcnow())
    Message.create(campaign=new, customer=y, status=MessageStatus.SENT, to_phone=phone_for(1), twilio_sid=new_sid(), sent_at=utcnow())
    code = {cid: QRCode.get(QRCode.customer == cid).code for cid in (x, y, z)}

    # A person opens X's link twice: redirected to the QR page, two clicks for campaign 2
    for _ in range(2):
        answer = web.get(f"/q/{code[x]}")
        assert answer.status_code == 302 and answer.headers["Location"] == QR_PAGE.format(code=code[x])
    # Link previews and HEAD requests are redirected but not counted
    for agent in ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
                  "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", "WhatsApp/2.23.20.0", ""):
        answer = web.get(f"/q/{code[y]}", user_agent=agent)
        assert answer.status_code == 302 and answer.headers["Location"] == QR_PAGE.format(code=code[y])
    assert web.get(f"/q/{code[y]}", method="HEAD").status_code == 302
    assert Click.select().where(Click.customer == y).count() == 0
    # Then Y opens it, and Z (never sent anything) too
    assert web.get(f"/q/{code[y]}").status_code == 302
    assert web.get(f"/q/{code[z]}").status_code == 302
    # An unknown code is 404 and records nothing
    assert web.get("/q/NOPE0000").status_code == 404
    join_all(stub_broker)

    clicks = [(c.customer_id, c.campaign_id, c.code) for c in Click.select().order_by(Click.id)]
    assert clicks == [(x, new, code[x]), (x, new, code[x]), (y, new, code[y]), (z, None, code[z])]
    assert Click.get(Click.customer == y).user_agent == BROWSER
    assert CampaignAnalytics.get(CampaignAnalytics.campaign == new).unique_clicks == 2
    assert CampaignAnalytics.get_or_none(CampaignAnalytics.campaign == old) is None


def test_a_report_that_overtakes_its_sid_is_applied_once_the_sid_is_recorded(web, stub_broker):
    # Given a message Twilio accepted whose "sent" record is still being written (row sending)
    make_customers(1)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
    row = Message.get(Message.campaign == campaign_id)
    Message.update(status=MessageStatus.SENDING).where(Message.id == row.id).execute()
    sid = new_sid()

    # When Twilio's callbacks arrive first (delivered, then a late sent, then a replay)
    for status in ("delivered", "sent", "delivered"):
        assert web.status(sid, status).status_code == 200
    assert reload(row).delivery_status is None
    assert sorted(e.status for e in EarlyStatus.select()) == ["delivered", "sent"]

    # And then the record is written and the campaign's metrics update runs
    sending.write_sent([message_types.SentRecord(row.id, sid, 1, campaign_id)])
    actors.update_metrics(campaign_id)

    # Then the delivery is recorded as if it had come in order, counted, and no longer kept
    assert reload(row).delivery_status == "delivered"
    assert CampaignAnalytics.get(CampaignAnalytics.campaign == campaign_id).delivered == 1
    assert EarlyStatus.select().count() == 0


def test_a_report_whose_sid_never_comes_is_dropped_after_a_day_with_an_event(web):
    # Given a report for a SID no message has
    sid = new_sid()
    assert web.status(sid, "delivered").status_code == 200

    # When kept reports are applied within the day, it waits; a day later, it is dropped
    assert delivery.apply_early_statuses() == set()
    assert EarlyStatus.select().count() == 1
    assert delivery.apply_early_statuses(now=utcnow() + dt.timedelta(days=1, seconds=1)) == set()

    # Then it is gone, and an operator can see why
    assert EarlyStatus.select().count() == 0
    [event] = Event.select().where(Event.code == "unknown_sid_status")
    assert sid in event.detail


def test_malformed_requests_are_400_and_unknown_ones_change_nothing(web):
    [row] = sent_rows(1)
    sid = row.twilio_sid
    assert web.post("/twilio/status", {"MessageStatus": "delivered"}).status_code == 400
    assert web.post("/twilio/status", {"MessageSid": sid}).status_code == 400
    assert web.status(sid, "teleported").status_code == 400
    assert web.post("/twilio/inbound", {"MessageSid": new_sid(), "Body": "STOP"}).status_code == 400
    # (a STOP without its SID is still recorded: tests/test_web_input.py)
    assert web.post("/twilio/inbound", {"From": row.to_phone, "Body": "START"}).status_code == 400
    assert web.post("/twilio/inbound", {"From": row.to_phone, "Body": "hello"}).status_code == 400
    # An unknown SID, and a status with nothing to record, are acknowledged and ignored
    assert web.status(new_sid(), "delivered").status_code == 200
    assert web.status(sid, "accepted").status_code == 200
    assert reload(row).delivery_status is None
    assert Customer.get_by_id(row.customer_id).sms_subscribed is True
    # A STOP from a number no customer has is acknowledged and kept for audit only
    assert web.inbound("+12125559999", "STOP").status_code == 200
    assert [(e.customer_id, e.phone_e164) for e in OptOutEvent.select()] == [(None, "+12125559999")]
    assert Customer.select().where(Customer.sms_subscribed == False).count() == 0  # noqa: E712


def test_settings_check_the_new_urls():
    with pytest.raises(ConfigurationError, match="QR_DISPLAY_URL"):
        Settings(qr_display_url="https://cdn.example.com/qr").validate()
    with pytest.raises(ConfigurationError, match="PUBLIC_BASE_URL"):
        Settings.from_env({"PUBLIC_BASE_URL": "campaigns.example.com"})
    assert Settings.from_env({"PUBLIC_BASE_URL": PUBLIC, "QR_DISPLAY_URL": QR_PAGE}).public_base_url == PUBLIC


def test_a_message_link_credits_its_own_campaign_and_leads_to_the_customers_qr_page(web, stub_broker, stub_worker):
    # Given a customer who was sent campaign "first", then campaign "second" (the more recent)
    (customer,) = make_customers(1)
    first, second = make_campaign(name="first"), make_campaign(name="second")
    for campaign_id in (first, second):
        fanout.fan_out(campaign_id, short_url_base=PUBLIC + "/q")
    first_row, second_row = (Message.get(Message.campaign == c) for c in (first, second))
    Message.update(status=MessageStatus.SENT, sent_at=utcnow()).where(Message.id == second_row.id).execute()
    Message.update(status=MessageStatus.SENT, sent_at=utcnow() - dt.timedelta(days=1)).where(Message.id == first_row.id).execute()
    assert first_row.link_code != second_row.link_code and first_row.body != second_row.body

    # When they open the link of the first campaign's message
    answer = web.get(f"/q/{first_row.link_code}")
    join_all(stub_broker)

    # Then they reach their QR-code page, and the click is the first campaign's
    qr_code = QRCode.get(QRCode.customer == customer).code
    assert answer.status_code == 302 and answer.headers["Location"] == QR_PAGE.format(code=qr_code)
    assert [(c.customer_id, c.campaign_id, c.code) for c in Click.select()] == [(customer, first, first_row.link_code)]
    assert CampaignAnalytics.get(CampaignAnalytics.campaign == first).unique_clicks == 1
