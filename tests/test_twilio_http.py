"""The send path's HTTP client (``twilio_http.py``) through the real twilio client to the
fake Twilio: what reaches Twilio is what ``requests`` would have sent, and the
environment's proxies and CA bundle still count (read once per host)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from urllib.parse import parse_qsl

import pytest
from requests.auth import _basic_auth_str
from requests.models import RequestEncodingMixin
from requests.utils import default_headers

from errors import TransientError
from smsservice import make_backend
from tests.conftest import twilio_settings
from tests.local_relay import LocalRelay
from twilio_http import form_body


@pytest.mark.parametrize("data", [
    {"To": "+12125550123", "Body": "Olá & adiós = 100% + 🎉\nReply STOP", "ValidityPeriod": 14400},
    {"To": "+1", "MediaUrl": ["https://x.test/a.png", "https://x.test/b?c=d&e"], "Skipped": None},
])
def test_a_form_is_encoded_as_requests_would(data):
    # Given fields as twilio hands them to its HTTP client (a repeated field as a list)
    # When the form is encoded here
    body = form_body(data)

    # Then it is byte for byte what requests makes of the same dict
    assert body == RequestEncodingMixin._encode_params(data)
    assert dict(parse_qsl(body))["To"] == data["To"]


def test_a_send_reaches_twilio_with_every_field(fake_twilio):
    # Given the Twilio backend on the fake
    backend = make_backend(twilio_settings(fake_twilio, twilio_timeout_s=5))
    text = "Olá & adiós = 100% + 🎉 https://x.test/q/ABCD1234 Reply STOP to unsubscribe"

    # When a message is sent, twice (the second on the kept connection)
    first = backend.send(to="+12125550123", body=text, valid_for_s=600)
    second = backend.send(to="+12125550124", body=text)

    # Then the fake received both with the body, the sender and the validity as given
    received = fake_twilio.requests
    assert [r["sid"] for r in received] == [first.sid, second.sid]
    assert [r["body"] for r in received] == [text, text]
    assert [r["to"] for r in received] == ["+12125550123", "+12125550124"]
    assert received[0]["from"] == "+12125550100"
    assert [r["validity_period"] for r in received] == ["600", "14400"]


@pytest.mark.parametrize("no_proxy, reaches", [("", False), ("127.0.0.1", True)])
def test_a_proxy_in_the_environment_still_counts(fake_twilio, monkeypatch, no_proxy, reaches):
    # Given HTTP_PROXY pointing at a port where nothing listens, with or without the
    # fake's host in NO_PROXY, set before the backend is built
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    backend = make_backend(twilio_settings(fake_twilio, twilio_timeout_s=2))

    # When a message is sent, twice
    outcomes = []
    for _ in range(2):
        try:
            outcomes.append(backend.send(to="+12125550123", body="hello https://x.test/q/ABCD1234").sid)
        except TransientError as exc:
            outcomes.append(exc.code)

    # Then both went through the proxy (refused: never sent) unless the host is exempt
    if reaches:
        assert all(o.startswith("SM") for o in outcomes) and len(fake_twilio.requests) == 2
    else:
        assert outcomes == ["connect_error", "connect_error"] and not fake_twilio.requests


def test_the_clients_log_lines_are_made_only_when_kept(fake_twilio, caplog):
    # Given the Twilio backend, whose client logger make_twilio_client sets to WARNING
    import logging
    backend = make_backend(twilio_settings(fake_twilio, twilio_timeout_s=5))
    logger = logging.getLogger("twilio.http_client")

    # When a message is sent with the logger at WARNING, then at INFO (an operator debugging)
    with caplog.at_level(logging.DEBUG):
        backend.send(to="+12125550123", body="one https://x.test/q/ABCD1234")
        quiet = [r for r in caplog.records if r.name == "twilio.http_client"]
        logger.setLevel(logging.INFO)
        try:
            backend.send(to="+12125550123", body="two https://x.test/q/ABCD1234")
        finally:
            logger.setLevel(logging.WARNING)
    kept = [r.getMessage() for r in caplog.records if r.name == "twilio.http_client"]

    # Then nothing was logged at WARNING; at INFO the request and its answer were, without
    # the Authorization header
    assert quiet == []
    assert any(m.startswith("POST Request:") for m in kept) and any(m.startswith("Response Status Code: 201") for m in kept)
    assert not any("authorization" in m.lower() for m in kept)


def _port_nobody_listens_on() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("failure, kind, code", [
    ("refused", "TransientError", "connect_error"),
    ("drop", "MaybeSent", "connection_dropped"),
    ("slow", "MaybeSent", "read_timeout"),
])
def test_a_transport_failure_is_told_never_sent_or_maybe_sent(fake_twilio, failure, kind, code):
    # Given the Twilio backend on a port where nothing listens, or on the fake that drops
    # the connection after accepting, or answers later than the 0.5 s timeout
    base_url = f"http://127.0.0.1:{_port_nobody_listens_on()}" if failure == "refused" else fake_twilio.base_url
    settings = twilio_settings(fake_twilio, twilio_timeout_s=0.5, twilio_api_base_url=base_url)
    if failure == "drop":
        fake_twilio.accept_then_fail(1, "drop")
    else:
        fake_twilio.latency_s = 1.0
    backend = make_backend(settings)

    # When a message is sent
    with pytest.raises(Exception) as raised:
        backend.send(to="+12125550123", body="hello https://x.test/q/ABCD1234")

    # Then the failure is the project's: never sent when the connection was refused, maybe
    # sent (to be looked up at Twilio, never resent blindly) once the request could have left
    assert type(raised.value).__name__ == kind and raised.value.code == code
    assert len(fake_twilio.messages) == (0 if failure == "refused" else 1)


def test_a_lookup_that_cannot_connect_is_a_transient_failure(fake_twilio):
    # Given the backend on a port where nothing listens
    backend = make_backend(twilio_settings(fake_twilio, twilio_api_base_url=f"http://127.0.0.1:{_port_nobody_listens_on()}"))

    # When a sent message is looked up
    import datetime as dt
    with pytest.raises(TransientError) as raised:
        backend.find_sent(to="+12125550123", body="x", since=dt.datetime(2026, 1, 1))

    # Then it is a lookup that failed, to be tried again, with the transport error named
    assert raised.value.code == "lookup_failed" and "ConnectionError" in str(raised.value)


@pytest.mark.parametrize("proxy, authorization", [
    ("http://twilio:s%40cret@127.0.0.1:{port}", _basic_auth_str("twilio", "s@cret")),
    ("127.0.0.1:{port}", None),
])
def test_a_proxy_with_credentials_or_without_a_scheme_is_used_as_requests_uses_it(
        fake_twilio, monkeypatch, proxy, authorization):
    # Given HTTP_PROXY pointing at a local proxy in front of the fake, with a user and a
    # password in its URL, or written without a scheme (both of which requests accepts)
    relay = LocalRelay(target=fake_twilio.base_url)
    monkeypatch.setenv("HTTP_PROXY", proxy.format(port=relay.port))
    monkeypatch.setenv("NO_PROXY", "")
    backend = make_backend(twilio_settings(fake_twilio, twilio_timeout_s=5))

    # When a message is sent
    try:
        sent = backend.send(to="+12125550123", body="hello https://x.test/q/ABCD1234")
    finally:
        relay.close()

    # Then it went through the proxy, which was given the credentials as requests gives them
    assert sent.sid.startswith("SM") and len(fake_twilio.requests) == 1
    [(line, headers)] = relay.seen
    assert line.startswith(f"POST {fake_twilio.base_url}/2010-04-01/Accounts/")
    assert headers.get("proxy-authorization") == authorization


def test_every_header_requests_adds_to_a_request_is_sent(fake_twilio):
    # Given the Twilio backend on a local relay in front of the fake, which records headers
    relay = LocalRelay(target=fake_twilio.base_url)
    backend = make_backend(twilio_settings(fake_twilio, twilio_timeout_s=5,
                                           twilio_api_base_url=f"http://127.0.0.1:{relay.port}"))

    # When a message is sent
    try:
        backend.send(to="+12125550123", body="hello https://x.test/q/ABCD1234")
    finally:
        relay.close()

    # Then the headers requests adds to every request (bar its User-Agent and Accept, which
    # twilio's own replace) are there with requests' values: the answer may come compressed
    [(_, headers)] = relay.seen
    expected = {k.lower(): v for k, v in default_headers().items() if k.lower() not in ("user-agent", "accept")}
    assert {k: headers.get(k) for k in expected} == expected
    assert headers["user-agent"].startswith("twilio-python/") and headers["accept"] == "application/json"


@pytest.fixture
def self_signed(tmp_path):
    """A certificate for ``localhost`` signed by itself: its key, the certificate as a
    bundle file, and a directory of hashed certificates holding it (``openssl rehash``)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate")
    key, cert, directory = tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / "certs"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True)
    digest = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", cert], check=True, capture_output=True, text=True)
    directory.mkdir()
    shutil.copy(cert, directory / f"{digest.stdout.strip()}.0")
    return key, cert, directory


@pytest.mark.parametrize("bundle, host, reaches", [
    ("file", "localhost", True),
    ("directory", "localhost", True),
    ("certifi", "localhost", False),
    ("file", "127.0.0.1", False),
])
def test_https_is_verified_against_the_environments_ca_bundle(fake_twilio, monkeypatch, self_signed, bundle, host, reaches):
    # Given the Twilio host on https with a self-signed certificate for localhost, and
    # REQUESTS_CA_BUNDLE naming it as a file, or a directory of hashed certificates holding
    # it (both of which requests accepts), or no bundle (certifi's, which does not hold it)
    key, cert, directory = self_signed
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    relay = LocalRelay(target=fake_twilio.base_url, tls=tls)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    if bundle == "certifi":
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    else:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert if bundle == "file" else directory))
    backend = make_backend(twilio_settings(fake_twilio, twilio_timeout_s=5, twilio_api_base_url=f"https://{host}:{relay.port}"))

    # When a message is sent
    try:
        outcome = backend.send(to="+12125550123", body="hello https://x.test/q/ABCD1234").sid
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    finally:
        relay.close()

    # Then it reaches Twilio when the certificate is trusted and names the host; otherwise
    # it fails as requests failed (an SSLError, maybe sent), and nothing was sent
    if reaches:
        assert outcome.startswith("SM") and len(fake_twilio.requests) == 1
    else:
        assert outcome.startswith("MaybeSent") and "SSLError" in outcome and not fake_twilio.requests
