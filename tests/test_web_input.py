"""Bad input to the web process gets a clear error (issue 13), shown with Flask's test client
(and the threaded test server for a chunked body): size and field limits, short-link codes
refused before any query, fields that do not fit their column, repeated fields, what is
logged of a request, and the headers of every answer. The same through the real gunicorn of
the Procfile: tests/test_web_gunicorn.py.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlencode

import pytest
import requests
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

import models
import web
from models import Customer, EarlyStatus, OptOutEvent
from settings import Secret, Settings
from tests.endpoints import POSTGRES_URL
from tests.factories import make_customers, phone_for
from tests.test_web import PUBLIC, QR_PAGE, TOKEN, new_sid, sent_rows, web as web_server  # noqa: F401
from web import create_app

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"
MAX_FORM_FIELDS = 200  # webguard.MAX_FORM_FIELDS (not imported: these tests also run against the code before it)


class Client:
    """Flask's test client; ``post`` signs like Twilio (over every value, repeats too)."""

    def __init__(self, app):
        self.app = app
        self.http = app.test_client()

    def post(self, path: str, params, *, sign: bool = True, **kwargs):
        pairs = list(params.items()) if isinstance(params, dict) else list(params)
        headers = kwargs.pop("headers", {})
        if sign:
            headers["X-Twilio-Signature"] = RequestValidator(TOKEN).compute_signature(PUBLIC + path, MultiDict(pairs))
        return self.http.post(path, data=urlencode(pairs), headers=headers,
                              content_type="application/x-www-form-urlencoded", **kwargs)

    def inbound(self, from_: str, body: str, sid: str | None = None, **extra):
        params = {"MessageSid": new_sid() if sid is None else sid, "From": from_, "To": "+12125550100",
                  "Body": body, "AccountSid": "AC" + "f" * 32, "NumMedia": "0"}
        return self.post("/twilio/inbound", {**params, **extra})

    def status(self, sid: str, status: str, **extra):
        return self.post("/twilio/status", [("MessageSid", sid), ("MessageStatus", status)] + list(extra.items()))

    def get(self, path: str, **headers):
        return self.http.get(path, headers={"User-Agent": BROWSER, **headers})


def app_for(database_url: str):
    settings = Settings(database_url=database_url, twilio_auth_token=Secret(TOKEN), public_base_url=PUBLIC,
                        short_url_base=PUBLIC + "/q", qr_display_url=QR_PAGE)
    return create_app(settings)


@pytest.fixture
def client(db, stub_broker):
    """The app on SQLite and on PostgreSQL (a column's length and a NUL are PostgreSQL's
    to refuse; SQLite stores both)."""
    url = POSTGRES_URL if models.is_postgres() else f"sqlite:///{models.database.obj.database}"
    return Client(app_for(url))


@pytest.fixture
def sqlite_client(sqlite_db, stub_broker):
    return Client(app_for(f"sqlite:///{models.database.obj.database}"))


def subscribed(customer_id: int) -> bool:
    return Customer.get_by_id(customer_id).sms_subscribed


# --------------------------------------------------------------------------- 1. size

def test_a_body_over_64_kib_is_413_before_its_signature_is_checked(sqlite_client, web_server):  # noqa: F811
    (customer,) = make_customers(1)
    big = [("MessageSid", new_sid()), ("From", phone_for(0)), ("Body", "STOP"), ("AddOns", "x" * 70_000)]

    # With a Content-Length: refused from the header, whatever the signature
    answer = sqlite_client.post("/twilio/inbound", big)
    assert answer.status_code == 413
    assert answer.mimetype == "text/plain" and "over 65536 bytes" in answer.text
    assert sqlite_client.post("/twilio/inbound", big, sign=False, headers={"X-Twilio-Signature": "x"}).status_code == 413

    # Chunked (no Content-Length): cut at the limit too
    def chunks():
        yield urlencode(big[:3]).encode() + b"&AddOns="
        for _ in range(64):
            yield b"x" * 16_384  # 1 MiB in all

    chunked = requests.post(web_server.base + "/twilio/inbound", data=chunks(), timeout=10,
                            headers={"X-Twilio-Signature": "x", "Content-Type": "application/x-www-form-urlencoded"})
    assert chunked.status_code == 413
    assert "Content-Length" not in chunked.request.headers and chunked.request.headers["Transfer-Encoding"] == "chunked"
    assert OptOutEvent.select().count() == 0 and subscribed(customer)

    # Under the limit, a rich inbound message (60 KB of add-on results) is taken
    fits = big[:3] + [("AddOns", "x" * 60_000)]
    assert sqlite_client.post("/twilio/inbound", fits).status_code == 200
    assert not subscribed(customer)


def test_more_form_fields_than_the_cap_are_413_without_parsing_them(sqlite_client):
    customers = make_customers(2)
    base = [("From", phone_for(0)), ("Body", "STOP")]

    # 200 fields or more: refused, nothing recorded
    many = [("MessageSid", new_sid())] + base + [(f"Extra{i}", "1") for i in range(MAX_FORM_FIELDS)]
    answer = sqlite_client.post("/twilio/inbound", many)
    assert answer.status_code == 413 and f"more than {MAX_FORM_FIELDS} form fields" in answer.text
    assert subscribed(customers[0])

    # A million fields cost nothing to refuse (they took 7.5 s of CPU to parse)
    started = time.process_time()
    million = sqlite_client.http.post("/twilio/inbound", data=b"a=1&" * 1_000_000, headers={"X-Twilio-Signature": "x"},
                                      content_type="application/x-www-form-urlencoded")
    assert million.status_code == 413 and time.process_time() - started < 1.0

    # An MMS with 10 media (about 40 fields) is well under the cap
    media = [(f"MediaUrl{i}", f"https://api.twilio.com/2010-04-01/Accounts/AC{'f' * 32}/Messages/MM{'0' * 32}/Media/ME{i:032d}")
             for i in range(10)] + [(f"MediaContentType{i}", "image/jpeg") for i in range(10)]
    assert sqlite_client.inbound(phone_for(1), "STOP", NumMedia="10", **dict(media)).status_code == 200
    assert not subscribed(customers[1])


def test_a_body_that_is_not_a_form_is_415(sqlite_client):
    answer = sqlite_client.http.post("/twilio/inbound", json={"From": phone_for(0), "Body": "STOP"},
                                     headers={"X-Twilio-Signature": "x"})
    assert answer.status_code == 415 and "application/x-www-form-urlencoded" in answer.text


# --------------------------------------------------------------------------- 3. codes and logs

def test_short_link_codes_outside_the_alphabet_are_404_before_any_query(sqlite_client, monkeypatch):
    looked_up = []
    real = web.link_target
    monkeypatch.setattr(web, "link_target", lambda code: looked_up.append(code) or real(code))
    for path in ("/q/%00", "/q/%0Aforged", "/q/AB%00CDEFG", "/q/abcdefgh", "/q/ABCDEFG", "/q/" + "A" * 33,
                 "/q/%C3%84BCDEFGH", "/q/ABCD-EFG", "/q/ABCD%20EFG", "/q/..%2F..%2Fetc"):
        answer = sqlite_client.get(path)
        assert looked_up == [], path
        assert answer.status_code == 404 and answer.mimetype == "text/plain", path
    # A code of the right shape is looked up (and unknown: 404)
    assert sqlite_client.get("/q/ZZZZZZZZ").status_code == 404
    assert looked_up == ["ZZZZZZZZ"]


def test_nothing_from_a_request_is_logged_unescaped(client, caplog):
    caplog.set_level(logging.DEBUG)
    [row] = sent_rows(1)
    forged = "\n[2026-01-01 00:00:00,000] [PID 1] [web] [INFO] FORGED"
    answers = [
        client.get("/q/%00" + forged.replace("\n", "%0A").replace(" ", "%20")),
        client.status("SM" + "0" * 32 + forged, "delivered"),
        client.status(row.twilio_sid, "delivered", ErrorCode="30003" + forged),
        client.status(row.twilio_sid, "delivered" + forged),
        client.inbound("+1212" + forged, "STOP"),
        client.inbound(row.to_phone, "STOP", sid="SM\x00" + forged),
        client.post("/twilio/inbound", [("MessageSid", new_sid()), ("From", row.to_phone), ("From", forged)]),
    ]
    assert all(a.status_code < 500 for a in answers), [a.status_code for a in answers]
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert "\n" not in text and "\x00" not in text, text
    assert any("FORGED" in r.getMessage() for r in caplog.records)  # shown, escaped


# --------------------------------------------------------------------------- 4. columns

def test_a_field_too_long_for_its_column_or_holding_a_nul_is_refused_but_a_stop_is_recorded(client):
    [row] = sent_rows(1)
    customer = row.customer_id
    too_long, with_nul = "SM" + "a" * 39, "SM" + "0" * 16 + "\x00" + "0" * 15

    # A status for such a SID, or with such an error code, is 400 and changes nothing
    for kwargs in ({"sid": too_long}, {"sid": with_nul}, {"sid": row.twilio_sid, "ErrorCode": "3\x000003"},
                   {"sid": row.twilio_sid, "ErrorCode": "3" * 17}):
        answer = client.status(kwargs.pop("sid"), "delivered", **kwargs)
        assert answer.status_code == 400 and answer.mimetype == "text/plain", answer.text
    assert EarlyStatus.select().count() == 0
    assert delivery_of(row) == (None, None)

    # A START or a plain reply needs its SID (a replayed START would resubscribe): 400
    Customer.update(sms_subscribed=False).where(Customer.id == customer).execute()
    assert client.inbound(row.to_phone, "START", sid=too_long).status_code == 400
    assert client.inbound(row.to_phone, "thanks", sid=with_nul).status_code == 400
    assert not subscribed(customer) and OptOutEvent.select().count() == 0
    Customer.update(sms_subscribed=True).where(Customer.id == customer).execute()

    # A STOP from a valid number is binding: recorded whatever its SID, without it
    for sid in (too_long, with_nul, ""):
        Customer.update(sms_subscribed=True).where(Customer.id == customer).execute()
        answer = client.inbound(row.to_phone, "STOP", sid=sid)
        assert answer.status_code == 200 and "<Response/>" in answer.text
        assert not subscribed(customer)
    events = [(e.customer_id, e.action, e.keyword, e.message_sid) for e in OptOutEvent.select().order_by(OptOutEvent.id)]
    assert events == [(customer, "stop", "STOP", None)] * 3
    # And a STOP whose number is not one is still refused as before (200, nothing to record)
    assert client.inbound("+1212555\x000199", "STOP", sid=too_long).status_code == 200
    assert OptOutEvent.select().count() == 3


def delivery_of(row):
    fresh = models.Message.get_by_id(row.id)
    return fresh.delivery_status, fresh.delivery_error_code


# --------------------------------------------------------------------------- 5. repeated keys

def test_a_field_named_twice_is_400_although_the_signature_covers_it(client):
    [row] = sent_rows(1)
    other = new_sid()
    # The signature is the same whichever order the two values come in
    validator = RequestValidator(TOKEN)
    assert (validator.compute_signature(PUBLIC + "/twilio/status", MultiDict([("MessageSid", row.twilio_sid), ("MessageSid", other)]))
            == validator.compute_signature(PUBLIC + "/twilio/status", MultiDict([("MessageSid", other), ("MessageSid", row.twilio_sid)])))

    answer = client.post("/twilio/status", [("MessageSid", row.twilio_sid), ("MessageSid", other), ("MessageStatus", "delivered")])
    assert answer.status_code == 400 and "repeated form field 'MessageSid'" in answer.text
    assert delivery_of(row) == (None, None)
    answer = client.post("/twilio/inbound", [("MessageSid", new_sid()), ("From", "+12125559999"), ("From", row.to_phone),
                                             ("Body", "STOP")])
    assert answer.status_code == 400
    assert OptOutEvent.select().count() == 0 and subscribed(row.customer_id)


# --------------------------------------------------------------------------- 6. redirects and headers

def test_doubled_slashes_are_not_redirected_and_every_answer_has_the_public_headers(sqlite_client):
    [row] = sent_rows(1)
    code = models.QRCode.get(models.QRCode.customer == row.customer_id).code
    for path in ("/q//evil.example", "/q//evil.example/" + code, "//q/" + code, "/twilio//status"):
        answer = sqlite_client.get(path, Host="evil.example")
        assert answer.status_code == 404 and "Location" not in answer.headers, path

    answers = {
        "redirect": sqlite_client.get("/q/" + code),
        "not found": sqlite_client.get("/q/ZZZZZZZZ"),
        "twiml": sqlite_client.inbound(row.to_phone, "hello"),
        "forbidden": sqlite_client.post("/twilio/status", {"MessageSid": row.twilio_sid}, sign=False),
        "not allowed": sqlite_client.get("/twilio/status"),
    }
    assert answers["redirect"].status_code == 302 and answers["redirect"].headers["Location"] == QR_PAGE.format(code=code)
    for name, answer in answers.items():
        headers = answer.headers
        assert headers["X-Content-Type-Options"] == "nosniff", name
        assert headers["Cache-Control"] == "no-store", name
        assert headers["Referrer-Policy"] == "no-referrer", name
        assert headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'", name
        assert "Server" not in headers, name
    assert answers["not allowed"].status_code == 405 and "POST" in answers["not allowed"].headers["Allow"]
