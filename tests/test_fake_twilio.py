"""Proves FakeTwilio speaks the wire format the REAL twilio 9.x client expects."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

try:
    from tests.fake_twilio import FakeTwilio
except ImportError:  # tests/ not importable as a package (plain `pytest`)
    from fake_twilio import FakeTwilio

FROM = "+15005550006"
MG = "MG" + "a" * 32


def make_client(fake: FakeTwilio, *, token: str | None = None, timeout: float = 5) -> Client:
    """Build the client the way the worker does, pointed at the fake."""
    client = Client(
        fake.account_sid, token or fake.auth_token,
        http_client=TwilioHttpClient(timeout=timeout),
    )
    client.edge = None  # TWILIO_EDGE / TWILIO_REGION would rewrite the host
    client.region = None
    client.api.base_url = fake.base_url
    return client


@pytest.fixture(scope="module", params=["threads", "async"])
def _server(request):
    """Every test runs against both servers: the tests' threaded one and the benches' event loop."""
    with FakeTwilio(server=request.param) as fake:
        yield fake


@pytest.fixture
def fake(_server):
    _server.reset()
    yield _server
    _server.reset()


@pytest.fixture
def client(fake):
    return make_client(fake)


def test_create_with_from_and_with_messaging_service(fake, client):
    m1 = client.messages.create(to="+15551230001", from_=FROM, body="hello",
                                status_callback="https://cb.example/s")
    m2 = client.messages.create(to="+15551230002", messaging_service_sid=MG, body="héllo ✓")

    assert m1.sid.startswith("SM") and len(m1.sid) == 34 and m1.sid != m2.sid
    assert (m1.status, m1.from_, m1.body, m1.num_segments) == ("queued", FROM, "hello", "1")
    assert m1.date_created.tzinfo is not None and m1.error_code is None
    assert m2.messaging_service_sid == MG and m2.from_ is None
    recorded = fake.messages
    assert [m["sid"] for m in recorded] == [m1.sid, m2.sid]
    assert recorded[0]["status_callback"] == "https://cb.example/s"
    assert recorded[0]["from"] == FROM and recorded[1]["messaging_service_sid"] == MG
    assert fake.bodies_to("+15551230002") == ["héllo ✓"]
    assert [r["http_status"] for r in fake.requests] == [201, 201]
    assert client.messages(m1.sid).fetch().body == "hello"


def test_fetch_unknown_sid_is_404(client):
    with pytest.raises(TwilioRestException) as ei:
        client.messages("SM" + "0" * 32).fetch()
    assert (ei.value.status, ei.value.code) == (404, 20404)


def test_wrong_token_is_401_20003(fake):
    bad = make_client(fake, token="nope")
    with pytest.raises(TwilioRestException) as ei:
        bad.messages.create(to="+15551230001", from_=FROM, body="x")
    assert (ei.value.status, ei.value.code) == (401, 20003)
    assert fake.messages == []
    assert fake.requests[0]["outcome"] == "rejected" and fake.requests[0]["code"] == 20003


@pytest.mark.parametrize("code", [21211, 21610])
def test_fail_number(fake, client, code):
    fake.fail_number("+15551230009", code)
    with pytest.raises(TwilioRestException) as ei:
        client.messages.create(to="+15551230009", from_=FROM, body="x")
    assert (ei.value.status, ei.value.code) == (400, code)
    assert "+15551230009" not in ei.value.msg  # no PII echoed
    client.messages.create(to="+15551230010", from_=FROM, body="other number ok")
    assert [m["to"] for m in fake.messages] == ["+15551230010"]


@pytest.mark.parametrize(
    "kwargs, code",
    [
        (dict(to="12345", from_=FROM, body="x"), 21211),
        (dict(to="+15551230001", body="x"), 21603),
        (dict(to="+15551230001", from_=FROM, body=""), 21602),
        (dict(to="+15551230001", from_=FROM, body="x" * 1601), 21617),
    ],
)
def test_validation_errors(fake, client, kwargs, code):
    with pytest.raises(TwilioRestException) as ei:
        client.messages.create(**kwargs)
    assert (ei.value.status, ei.value.code) == (400, code)
    assert fake.messages == []


def test_fail_all_sender_error_and_clear(fake, client):
    fake.fail_all(21606)
    with pytest.raises(TwilioRestException) as ei:
        client.messages.create(to="+15551230001", from_=FROM, body="x")
    assert (ei.value.status, ei.value.code) == (400, 21606)
    fake.fail_all(None)
    client.messages.create(to="+15551230001", from_=FROM, body="x")
    assert len(fake.messages) == 1


def test_rate_429(fake, client):
    fake.set_error_rates(rate_429=1.0)
    with pytest.raises(TwilioRestException) as ei:
        client.messages.create(to="+15551230001", from_=FROM, body="x")
    assert (ei.value.status, ei.value.code) == (429, 20429)
    assert fake.messages == []
    resp = client.http_client._test_only_last_response
    assert resp.headers["Retry-After"] == "1"


def test_error_rates_are_seeded_and_partial(fake, client):
    def run():
        fake.reset()
        fake.set_error_rates(rate_429=0.3, rate_500=0.2)
        statuses = []
        for i in range(40):
            try:
                client.messages.create(to="+15551230001", from_=FROM, body=str(i))
                statuses.append(201)
            except TwilioRestException as e:
                statuses.append(e.status)
        return statuses

    first = run()
    assert first == run()  # same seed -> same sequence
    assert {201, 429, 500} <= set(first)
    assert len(fake.messages) == first.count(201)


def test_accept_then_drop_is_listable(fake, client):
    since = datetime.now(timezone.utc)
    fake.accept_then_fail(1, "drop")
    with pytest.raises(requests.exceptions.ConnectionError):
        client.messages.create(to="+15551230042", from_=FROM, body="maybe sent")
    assert fake.bodies_to("+15551230042") == ["maybe sent"]
    assert fake.requests[-1]["outcome"] == "accepted_then_dropped"

    found = client.messages.list(to="+15551230042", date_sent_after=since)
    assert [m.sid for m in found] == [fake.messages[0]["sid"]]
    assert client.messages.list(to="+15559999999", date_sent_after=since) == []
    # the pooled client recovers on the next call
    client.messages.create(to="+15551230042", from_=FROM, body="again")
    assert fake.bodies_to("+15551230042") == ["maybe sent", "again"]


def test_a_listing_lag_hides_a_message_until_it_is_old_enough(fake, client):
    # Given a Twilio whose list lags its creates by 5 s
    since = datetime.now(timezone.utc)
    fake.list_lag(5)
    client.messages.create(to="+15551230043", from_=FROM, body="accepted")

    # Then the message is not listed at once, and is once it is 5 s old
    assert client.messages.list(to="+15551230043", date_sent_after=since) == []
    fake.age(5)
    assert [m.body for m in client.messages.list(to="+15551230043", date_sent_after=since)] == ["accepted"]


def test_accept_then_500(fake, client):
    fake.accept_then_fail(1, "500")
    with pytest.raises(TwilioRestException) as ei:
        client.messages.create(to="+15551230043", from_=FROM, body="maybe sent")
    assert ei.value.status == 500
    assert fake.bodies_to("+15551230043") == ["maybe sent"]
    assert fake.requests[-1]["outcome"] == "accepted_then_500"


def test_latency_causes_read_timeout_but_message_is_accepted(fake):
    fake.latency_s = 0.3
    slow = make_client(fake, timeout=0.1)
    with pytest.raises(requests.exceptions.Timeout):
        slow.messages.create(to="+15551230044", from_=FROM, body="slow")
    assert fake.bodies_to("+15551230044") == ["slow"]


def test_date_filters_compare_utc_dates(fake, client):
    client.messages.create(to="+15551230045", from_=FROM, body="x")
    assert len(client.messages.list(date_sent_after=datetime(2000, 1, 1))) == 1
    assert client.messages.list(date_sent_before=datetime(2000, 1, 1)) == []
    assert client.messages.list(date_sent_after=datetime(2999, 1, 1)) == []


def test_list_paginates_newest_first(fake, client):
    for i in range(120):
        client.messages.create(to="+15551230050", from_=FROM, body=f"m{i}")
    client.messages.create(to="+15551230051", from_=FROM, body="not me")

    got = client.messages.list(to="+15551230050", page_size=50)
    assert [m.body for m in got] == [f"m{i}" for i in reversed(range(120))]
    page = client.messages.page(to="+15551230050", page_size=50)
    assert page.next_page_url is not None
    assert len(list(client.messages.list(to="+15551230050", limit=7))) == 7


def test_paging_is_stable_while_messages_arrive(fake, client):
    for i in range(6):
        client.messages.create(to="+15551230060", from_=FROM, body=f"old{i}")
    first = client.messages.page(to="+15551230060", page_size=3)
    client.messages.create(to="+15551230060", from_=FROM, body="new")  # shifts offsets
    second = first.next_page()
    assert [m.body for m in first] + [m.body for m in second] == [
        "old5", "old4", "old3", "old2", "old1", "old0"
    ]


def test_concurrent_creates_from_16_threads(fake):
    n_threads, per_thread = 16, 50
    barrier = threading.Barrier(n_threads)

    def worker(t):
        c = make_client(fake)
        barrier.wait()
        return [
            c.messages.create(to=f"+1555{t:03d}{i:04d}", from_=FROM, body=f"{t}-{i}").sid
            for i in range(per_thread)
        ]

    with ThreadPoolExecutor(n_threads) as ex:
        sids = [s for chunk in ex.map(worker, range(n_threads)) for s in chunk]

    recorded = fake.messages
    assert len(sids) == len(set(sids)) == n_threads * per_thread
    assert sorted(sids) == sorted(m["sid"] for m in recorded)
    assert fake.bodies_to("+15550070049") == ["7-49"]


@pytest.mark.parametrize("server", ["threads", "async"])
def test_stop_cuts_pooled_connections(server):
    fake = FakeTwilio(server=server).start()
    c = make_client(fake)
    c.messages.create(to="+15551230001", from_=FROM, body="x")  # opens a pooled conn
    fake.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        c.messages.create(to="+15551230001", from_=FROM, body="y")
