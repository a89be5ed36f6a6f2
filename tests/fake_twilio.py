"""In-process fake of the Twilio 2010-04-01 Messages API, for tests.

Why a real HTTP server rather than mocks: the worker uses the real ``twilio``
client, so its auth, form encoding, error parsing (``TwilioRestException``),
paging and the ``requests`` transport errors (ConnectionError, ReadTimeout) are
all exercised exactly as in production. Worker processes reach it via
``base_url``.

Standard library only, so it can be imported from any test or subprocess.
"""

from __future__ import annotations

import base64
import collections
import json
import math
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from datetime import date, datetime, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

__all__ = ["FakeTwilio"]

API = "2010-04-01"
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_MESSAGES = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages\.json$")
_MESSAGE = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages/([^/]+)\.json$")
_NUMBERS = re.compile(r"^/2010-04-01/Accounts/([^/]+)/IncomingPhoneNumbers\.json$")
_SERVICE = re.compile(r"^/v1/Services/([^/]+)$")  # the Messaging domain (messaging.twilio.com)

# Default texts for error codes tests inject. None of them echo the phone
# number, so assertions on logs/exceptions never depend on (or leak) PII.
ERROR_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "An internal server error has occurred",
    21211: "The 'To' number is not a valid phone number.",
    21212: "The 'From' number is not a valid phone number, shortcode, or alphanumeric sender ID.",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the 'To' number.",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21606: "The 'From' phone number provided is not a valid message-capable Twilio phone number for this destination.",
    21610: "Attempt to send to unsubscribed recipient",
    21612: "The 'To' phone number is not currently reachable via SMS.",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    21659: "The 'From' number is not a Twilio phone number or Short Code country mismatch.",
    30027: "US A2P 10DLC - T-Mobile Daily Message Limit Reached",
    30032: "Toll-Free Number Has Not Been Verified",
    30034: "US A2P 10DLC - Message from an Unregistered Number",
    63038: "Account exceeded the daily messages limit",
}
_DEFAULT_STATUS = {20003: 401, 20404: 404, 20429: 429, 20500: 500}

# GSM 03.38 basic set and extension table (extension chars cost 2 septets).
_GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXT = set("^{}\\[~]|€\f")


def num_segments(body: str) -> int:
    """Segment count like a carrier would bill it: GSM-7 160/153, else UCS-2 70/67."""
    if all(c in _GSM_BASIC or c in _GSM_EXT for c in body):
        units, single, multi = sum(2 if c in _GSM_EXT else 1 for c in body), 160, 153
    else:
        units, single, multi = len(body.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else math.ceil(units / multi)


def _error(status: int, code: int, message: str | None = None) -> dict:
    """Twilio's legacy error body; no 'type'/'title' keys, so the client raises
    TwilioRestException (not TwilioServiceException) with .code and .status."""
    return {
        "code": code,
        "message": message or ERROR_MESSAGES.get(code, f"Twilio error {code}"),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _rfc2822(ts: float) -> str:
    return formatdate(ts, usegmt=False).replace("-0000", "+0000")


class _Reply:
    """An answer, sent ``delay_s`` after the request was decided (the fake's latency)."""

    __slots__ = ("status", "payload", "headers", "drop", "delay_s")

    def __init__(self, status=200, payload=None, headers=None, drop=False, delay_s=0.0):
        self.status, self.payload, self.headers, self.drop = status, payload, headers or {}, drop
        self.delay_s = delay_s


class _Handler(BaseHTTPRequestHandler):
    """HTTP plumbing only; all API behaviour lives in FakeTwilio._handle."""

    protocol_version = "HTTP/1.1"  # keep-alive: the client pools connections
    server_version = "FakeTwilio/1.0"
    sys_version = ""

    def version_string(self):
        return self.server_version

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle +
        # delayed ACK can add ~40 ms per response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, False)

    def log_message(self, format, *args):  # silence per-request stderr lines
        pass

    def _read_body(self) -> bytes:
        """Consume the whole body so the next keep-alive request parses cleanly."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self):
        try:
            body = self._read_body()
            reply = self.server.fake._handle(self.command, self.path, self.headers, body)
            if reply.delay_s > 0:
                time.sleep(reply.delay_s)
            if reply.drop:
                # Abort: RST instead of a response, so `requests` raises ConnectionError.
                self.close_connection = True
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                return
            data = json.dumps(reply.payload).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # client gave up (e.g. its read timeout) mid-request
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # default 5 drops SYNs when 16 clients connect at once

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):  # real bugs still print
            super().handle_error(request, client_address)


class FakeTwilio:
    """Fake Twilio Messages API with recorded state and fault injection.

    Recorded state and faults are guarded by one lock: handlers run on many
    threads and tests read state from another. Accessors return copies.
    """

    def __init__(
        self,
        *,
        account_sid: str = "AC" + "f" * 32,
        auth_token: str = "test-auth-token",
        latency_s: float = 0.0,
        seed: int = 1234,
        server: str = "threads",
    ):
        """``server="async"`` serves from one event loop (``tests/fake_twilio_async.py``),
        fast enough for the throughput benches; ``"threads"`` (a thread per connection) is
        the tests' default."""
        if server not in ("threads", "async"):
            raise ValueError("server must be 'threads' or 'async'")
        self.server_kind = server
        self._async = None
        self.account_sid = account_sid
        self.auth_token = auth_token
        self._default_latency = latency_s
        self._seed = seed
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.reset()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "FakeTwilio":
        """Bind an ephemeral port on 127.0.0.1 and serve in a daemon thread."""
        if self._server is not None or self._async is not None:
            raise RuntimeError("FakeTwilio already started")
        if self.server_kind == "async":
            from tests.fake_twilio_async import AsyncServer

            self._async = AsyncServer(self).start()
            return self
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="fake-twilio", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open keep-alive connections, so a pooled client
        cannot keep talking to handler threads of a stopped fake."""
        if self._async is not None:
            self._async.stop()
            self._async = None
            return
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FakeTwilio":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """Set as ``client.api.base_url`` (or the worker's Twilio base URL setting)."""
        if self._async is not None:
            return f"http://127.0.0.1:{self._async.port}"
        if self._server is None:
            raise RuntimeError("FakeTwilio not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    # ------------------------------------------------------- recorded state
    @property
    def messages(self) -> list[dict]:
        """Accepted creates in acceptance order (including accepted-then-failed)."""
        with self._lock:
            return [dict(m) for m in self._messages]

    @property
    def requests(self) -> list[dict]:
        """Every POST to Messages.json, including rejected ones, in arrival order."""
        with self._lock:
            return [dict(r) for r in self._requests]

    def bodies_to(self, to: str) -> list[str]:
        with self._lock:
            return [m["body"] for m in self._messages if m["to"] == to]

    def reset(self) -> None:
        """Clear recorded state and faults; latency and RNG go back to constructor values."""
        with self._lock:
            self._messages: list[dict] = []
            self._index: dict[str, int] = {}  # sid -> position in _messages
            self._requests: list[dict] = []
            self._fail_numbers: dict[str, tuple[int, int, str | None]] = {}
            self._fail_all: tuple[int, int, str | None] | None = None
            self._rate_429 = self._rate_500 = 0.0
            self._throttles: collections.deque[str | None] = collections.deque()
            self._pending: collections.deque[str] = collections.deque()
            self._hang: dict[str, float] = {}
            self._list_faults: collections.deque[tuple[str, float]] = collections.deque()
            self._list_lag_s = 0.0
            self._numbers: dict[str, bool] | None = None  # None: any number is the account's
            self._services: set[str] | None = None  # None: any messaging service exists
            self._sender_check_fault: str | None = None
            self._rng = random.Random(self._seed)
            self.latency_s = self._default_latency

    # ------------------------------------------------------ fault injection
    @staticmethod
    def _status_for(code: int, http_status: int | None) -> int:
        return http_status if http_status is not None else _DEFAULT_STATUS.get(code, 400)

    def fail_number(
        self, to: str, code: int, http_status: int | None = None, message: str | None = None
    ) -> None:
        """Reject every create to ``to`` with Twilio error ``code``.

        ``http_status`` defaults to the status Twilio uses for the code
        (400; 401 for 20003; 429 for 20429; 500 for 20500).
        """
        with self._lock:
            self._fail_numbers[to] = (code, self._status_for(code, http_status), message)

    def fail_all(
        self, code: int | None, http_status: int | None = None, message: str | None = None
    ) -> None:
        """Reject every create (e.g. sender error 21606); ``fail_all(None)`` clears."""
        with self._lock:
            self._fail_all = (
                None if code is None else (code, self._status_for(code, http_status), message)
            )

    def set_error_rates(self, *, rate_429: float = 0.0, rate_500: float = 0.0) -> None:
        """Seeded random share of creates answered 429 (20429, Retry-After: 1) or
        500 (20500) before acceptance: nothing is recorded as accepted."""
        if rate_429 < 0 or rate_500 < 0 or rate_429 + rate_500 > 1:
            raise ValueError("rates must be >= 0 and sum to <= 1")
        with self._lock:
            self._rate_429, self._rate_500 = rate_429, rate_500

    def throttle(self, count: int, retry_after: str | None = "1") -> None:
        """The next ``count`` creates are answered 429 (20429) with this ``Retry-After``
        header (None: without one); nothing is accepted. Calls queue up in order."""
        with self._lock:
            self._throttles.extend([retry_after] * count)

    def accept_then_fail(self, count: int, mode: str = "drop") -> None:
        """The next ``count`` valid creates are accepted (recorded, listable) but
        the client never learns it: the socket is reset (``"drop"``) or the
        answer is a 500 (``"500"``). Models the "maybe sent" case the worker
        must reconcile by listing. Calls queue up in order."""
        if mode not in ("drop", "500"):
            raise ValueError("mode must be 'drop' or '500'")
        with self._lock:
            self._pending.extend([mode] * count)

    def hang_after_accept(self, to: str, seconds: float) -> None:
        """Accept (record) the next create to ``to``, then hold the answer ``seconds``:
        a test can kill the worker while it waits, after Twilio accepted and before the
        worker could record it."""
        with self._lock:
            self._hang[to] = seconds

    def fail_lists(self, count: int, mode: str = "500", seconds: float = 0.0) -> None:
        """The next ``count`` list GETs fail: ``"500"`` (20500), ``"429"`` (20429 with
        Retry-After) or ``"slow"`` (the answer held ``seconds``, so the client times out).
        Calls queue up in order."""
        if mode not in ("500", "429", "slow"):
            raise ValueError("mode must be '500', '429' or 'slow'")
        with self._lock:
            self._list_faults.extend([(mode, seconds)] * count)

    def list_lag(self, seconds: float) -> None:
        """A message becomes listable only ``seconds`` after it was accepted, as when
        Twilio's own index lags behind its creates (the create answers at once)."""
        with self._lock:
            self._list_lag_s = seconds

    def age(self, seconds: float) -> None:
        """Make every recorded message ``seconds`` older, as if that much time had passed
        (tests shift the database's times by the same amount)."""
        with self._lock:
            for m in self._messages:
                m["accepted_at"] -= seconds

    def set_account_numbers(self, numbers: dict[str, bool] | list[str] | None) -> None:
        """The account's IncomingPhoneNumbers (number -> SMS-capable; a list: all capable).
        Once set, a create from any other ``From`` is refused with 21606, as Twilio does;
        None (the default) takes every number for the account's."""
        with self._lock:
            self._numbers = None if numbers is None else (
                dict(numbers) if isinstance(numbers, dict) else {n: True for n in numbers})

    def set_messaging_services(self, sids: list[str] | None) -> None:
        """The account's messaging services (fetching another is a 404); None: all exist."""
        with self._lock:
            self._services = None if sids is None else set(sids)

    def fail_sender_checks(self, mode: str | None) -> None:
        """The number list and the service fetch answer ``"500"`` or hold ``"slow"`` (2 s,
        longer than a short client timeout); None clears."""
        with self._lock:
            self._sender_check_fault = mode

    @property
    def senders_used(self) -> list[tuple[str | None, str | None, str]]:
        """(From, MessagingServiceSid, Body) of every create request, in arrival order."""
        with self._lock:
            return [(r["from"], r["messaging_service_sid"], r["body"]) for r in self._requests]

    def accepted(self, to: str) -> bool:
        with self._lock:
            return any(m["to"] == to for m in self._messages)

    # -------------------------------------------------------------- routing
    def _handle(self, method: str, raw_path: str, headers, body: bytes) -> _Reply:
        parts = urlsplit(raw_path)
        m_list, m_one = _MESSAGES.match(parts.path), _MESSAGE.match(parts.path)
        m_numbers, m_service = _NUMBERS.match(parts.path), _SERVICE.match(parts.path)
        if (m_numbers or m_service) and method == "GET":
            return self._sender_lookup(m_numbers, m_service, headers, parse_qs(parts.query))
        if m_list and method == "POST":
            return self._create(m_list.group(1), headers, body)
        if m_list and method == "GET":
            if not self._authorized(headers, m_list.group(1)):
                return _Reply(401, _error(401, 20003))
            with self._lock:
                fault = self._list_faults.popleft() if self._list_faults else None
            if fault is not None and fault[0] == "500":
                return _Reply(500, _error(500, 20500))
            if fault is not None and fault[0] == "429":
                return _Reply(429, _error(429, 20429), {"Retry-After": "1"})
            reply = self._list(parts.path, parse_qs(parts.query, keep_blank_values=True))
            if fault is not None:
                reply.delay_s = fault[1]
            return reply
        if m_one and method == "GET":
            if not self._authorized(headers, m_one.group(1)):
                return _Reply(401, _error(401, 20003))
            with self._lock:
                i = self._index.get(m_one.group(2))
                msg = None if i is None else self._resource(self._messages[i])
            if msg is not None:
                return _Reply(200, msg)
        return _Reply(404, _error(404, 20404, f"The requested resource {parts.path} was not found"))

    def _authorized(self, headers, path_sid: str) -> bool:
        auth = headers.get("Authorization", "")
        if not auth.startswith("Basic ") or path_sid != self.account_sid:
            return False
        try:
            user, _, pwd = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            return False
        return user == self.account_sid and pwd == self.auth_token

    def _validate(self, f: dict) -> tuple[int, int] | None:
        to, body = f.get("To", ""), f.get("Body", "")
        if not E164.match(to):
            return 400, 21211
        if bool(f.get("From")) == bool(f.get("MessagingServiceSid")):
            return 400, 21603  # need exactly one sender
        if not body:
            return 400, 21602
        if len(body) > 1600:
            return 400, 21617
        return None

    def _create(self, path_sid: str, headers, body: bytes) -> _Reply:
        """Decide and record the outcome on arrival; the answer goes ``latency_s`` later.

        Recording before the wait means a client that times out finds the
        message already accepted and listable, like a real slow Twilio.
        """
        f = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        to, text, now = f.get("To", ""), f.get("Body", ""), time.time()
        rejection, extra, outcome, payload, drop, hang_s = None, {}, "rejected", None, False, 0.0
        with self._lock:
            if not self._authorized(headers, path_sid):
                rejection = (401, 20003, None)
            elif (v := self._validate(f)) is not None:
                rejection = (*v, None)
            elif self._fail_all is not None:
                code, status, msg = self._fail_all
                rejection = (status, code, msg)
            elif f.get("From") and self._numbers is not None and not self._numbers.get(f["From"]):
                rejection = (400, 21606, None)
            elif to in self._fail_numbers:
                code, status, msg = self._fail_numbers[to]
                rejection = (status, code, msg)
            elif self._throttles:
                retry_after = self._throttles.popleft()
                rejection, extra = (429, 20429, None), ({"Retry-After": retry_after} if retry_after else {})
            elif not self._pending and (self._rate_429 or self._rate_500):
                r = self._rng.random()
                if r < self._rate_429:
                    rejection, extra = (429, 20429, None), {"Retry-After": "1"}
                elif r < self._rate_429 + self._rate_500:
                    rejection = (500, 20500, None)
            sid = None
            if rejection is None:
                sid = "SM" + uuid.uuid4().hex
                record = {
                    "sid": sid, "to": to, "from": f.get("From") or None,
                    "messaging_service_sid": f.get("MessagingServiceSid") or None,
                    "body": text, "status_callback": f.get("StatusCallback") or None,
                    "validity_period": f.get("ValidityPeriod") or None,
                    "accepted_at": now, "num_segments": num_segments(text),
                }
                self._index[sid] = len(self._messages)
                self._messages.append(record)
                hang_s = self._hang.pop(to, 0.0)
                mode = self._pending.popleft() if self._pending else None
                if mode == "drop":
                    outcome, status, code, drop = "accepted_then_dropped", None, None, True
                elif mode == "500":
                    outcome, status, code = "accepted_then_500", 500, 20500
                    payload = _error(500, 20500)
                else:
                    outcome, status, code = "accepted", 201, None
                    payload = self._resource(record)
            else:
                status, code, msg = rejection
                payload = _error(status, code, msg)
            self._requests.append({
                "to": to, "body": text, "http_status": status, "code": code,
                "at": now, "outcome": outcome, "sid": sid,
                "from": f.get("From") or None, "messaging_service_sid": f.get("MessagingServiceSid") or None,
                "validity_period": f.get("ValidityPeriod") or None,
            })
        return _Reply(status or 0, payload, extra, drop, delay_s=max(0.0, self.latency_s + hang_s))

    def _sender_lookup(self, m_numbers, m_service, headers, q: dict) -> _Reply:
        """``incoming_phone_numbers.list(phone_number=)`` and ``messaging.v1.services(sid).fetch()``."""
        if not self._authorized(headers, m_numbers.group(1) if m_numbers else self.account_sid):
            return _Reply(401, _error(401, 20003))
        with self._lock:
            fault, numbers, services = self._sender_check_fault, self._numbers, self._services
        if fault == "500":
            return _Reply(500, _error(500, 20500))
        delay_s = 2.0 if fault == "slow" else 0.0
        if m_service:
            sid = m_service.group(1)
            if services is not None and sid not in services:
                return _Reply(404, _error(404, 20404, f"The requested resource /Services/{sid} was not found"))
            return _Reply(200, {"sid": sid, "account_sid": self.account_sid, "friendly_name": "fake service",
                                "url": f"https://messaging.twilio.com/v1/Services/{sid}", "links": {}}, delay_s=delay_s)
        wanted = (q.get("PhoneNumber") or [""])[0]
        if numbers is None:
            found = {wanted: True} if E164.match(wanted) else {}
        else:
            found = {n: sms for n, sms in numbers.items() if not wanted or n == wanted}
        items = [{"sid": "PN" + uuid.uuid5(uuid.NAMESPACE_URL, n).hex, "account_sid": self.account_sid,
                  "phone_number": n, "friendly_name": n,
                  "capabilities": {"sms": sms, "mms": False, "voice": True, "fax": False}} for n, sms in found.items()]
        path = m_numbers.group(0)
        return _Reply(200, {"incoming_phone_numbers": items, "start": 0, "end": max(len(items) - 1, 0),
                            "page": 0, "page_size": 50, "first_page_uri": path, "next_page_uri": None,
                            "previous_page_uri": None, "uri": path}, delay_s=delay_s)

    def _resource(self, m: dict) -> dict:
        """A Message resource as the 2010 API returns it (status stays 'queued')."""
        ts = _rfc2822(m["accepted_at"])
        uri = f"/{API}/Accounts/{self.account_sid}/Messages/{m['sid']}.json"
        return {
            "account_sid": self.account_sid, "api_version": API, "body": m["body"],
            "date_created": ts, "date_sent": ts, "date_updated": ts,
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": m["from"], "messaging_service_sid": m["messaging_service_sid"],
            "num_media": "0", "num_segments": str(m["num_segments"]),
            "price": None, "price_unit": "USD", "sid": m["sid"], "status": "queued",
            "subresource_uris": {"media": uri[: -len(".json")] + "/Media.json"},
            "to": m["to"], "uri": uri,
        }

    def _list(self, path: str, q: dict) -> _Reply:
        """Newest-first list filtered like Twilio: To/From exact, DateSent*
        on the UTC *date* only (the time part the client sends is ignored), so
        callers must filter by time themselves.

        ``PageToken=PA<sid>`` pages continue strictly after that message, so
        paging stays stable while other threads keep creating messages.
        """
        one = {k: v[0] for k, v in q.items()}
        try:
            size = max(1, min(1000, int(one.get("PageSize") or 50)))
            page = max(0, int(one.get("Page") or 0))
            days = {k: date.fromisoformat(one[k][:10]) for k in ("DateSent", "DateSent<", "DateSent>") if one.get(k)}
        except ValueError:
            return _Reply(400, _error(400, 20001, "Invalid paging or DateSent parameter"))
        filters = {k: one[k] for k in ("To", "From", "DateSent", "DateSent<", "DateSent>") if one.get(k)}

        listable_before = time.time() - self._list_lag_s

        def keep(m: dict) -> bool:
            d = datetime.fromtimestamp(m["accepted_at"], timezone.utc).date()
            return (
                m["accepted_at"] <= listable_before
                and ("To" not in filters or m["to"] == filters["To"])
                and ("From" not in filters or m["from"] == filters["From"])
                and ("DateSent" not in days or d == days["DateSent"])
                and ("DateSent>" not in days or d >= days["DateSent>"])
                and ("DateSent<" not in days or d <= days["DateSent<"])
            )

        with self._lock:
            token = one.get("PageToken", "")
            after = self._index.get(token[2:]) if token.startswith("PA") else None
            older = self._messages if after is None else self._messages[:after]
            matched = [m for m in reversed(older) if keep(m)]
            start = 0 if after is not None else page * size
            items = [self._resource(m) for m in matched[start:start + size]]
            more = len(matched) > start + size

        def uri(p: int, tok: str | None = None) -> str:
            return path + "?" + urlencode({**filters, "PageSize": size, "Page": p, **({"PageToken": tok} if tok else {})})

        first = page * size
        return _Reply(200, {
            "messages": items,
            "end": first + max(len(items) - 1, 0),
            "first_page_uri": uri(0),
            "next_page_uri": uri(page + 1, "PA" + items[-1]["sid"]) if more else None,
            "page": page,
            "page_size": size,
            "previous_page_uri": uri(page - 1) if page > 0 else None,
            "start": first,
            "uri": uri(page, token or None),
        })
