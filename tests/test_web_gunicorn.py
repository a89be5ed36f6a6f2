"""The web process as the Procfile runs it: the real gunicorn, started from the Procfile's
``web`` command line on an ephemeral loopback port, against PostgreSQL and Redis.

Slow clients cannot starve the webhooks, no ``Server`` banner, the body limit (chunked too)
holds the worker's memory, and nothing a request carries forges a line of its log. Each
test stops the gunicorn it started (its whole process group).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis
import requests
from twilio.request_validator import RequestValidator

from models import Customer, Message, MessageStatus, OptOutEvent, database, utcnow
from tests.conftest import ROOT
from tests.endpoints import POSTGRES_URL, REDIS_URL
from tests.factories import make_campaign, make_customers, phone_for

TOKEN = "gunicorn-test-auth-token"
PUBLIC = "https://campaigns.example.com"
BODY_TIMEOUT_S = 10  # webguard.BODY_TIMEOUT_S
SLOW_CLIENTS = 12  # more than the 2 x 4 threads of the worker this replaced


def procfile_command(name: str = "web") -> str:
    with open(os.path.join(ROOT, "Procfile")) as procfile:
        for line in procfile:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} process in the Procfile")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Gunicorn:
    """The Procfile's web command under bash (as honcho and Heroku run it), in a session of
    its own; its output goes to ``log_path``."""

    def __init__(self, log_path: str, namespace: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ)
        env.update(
            PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
            PORT=str(self.port),
            GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{self.port}",  # loopback only (a config's bind gives way)
            DATABASE_URL=POSTGRES_URL, BROKER="redis", REDIS_URL=REDIS_URL, DRAMATIQ_NAMESPACE=namespace,
            TWILIO_AUTH_TOKEN=TOKEN, PUBLIC_BASE_URL=PUBLIC, SHORT_URL_BASE=PUBLIC + "/q",
            QR_DISPLAY_URL="https://cdn.example.com/qr/{code}", PYTHONUNBUFFERED="1",
        )
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(["bash", "-c", "exec " + procfile_command()], cwd=ROOT, env=env,
                                        stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.wait_ready()

    def output(self) -> str:
        with open(self.log_path, "rb") as log:
            return log.read().decode("utf-8", "backslashreplace")

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "gunicorn exited:\n" + self.output()
            booted = self.output().count("Booting worker")
            try:
                if requests.get(self.base + "/q/ZZZZZZZZ", timeout=2).status_code == 404 and booted >= 2:
                    return
            except requests.RequestException:  # not listening yet, or too busy to answer in 2 s
                pass
            time.sleep(0.2)
        raise AssertionError("gunicorn did not answer:\n" + self.output())

    def worker_pids(self) -> list[int]:
        with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as children:
            return [int(pid) for pid in children.read().split()]

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=25)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass
        self.log.close()


@pytest.fixture
def gunicorn(postgres_db, tmp_path):
    namespace = f"test-gunicorn-{uuid.uuid4().hex[:12]}"
    server = Gunicorn(str(tmp_path / "gunicorn.log"), namespace)
    yield server
    server.stop()
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{namespace}*"))
    if keys:
        client.delete(*keys)
    client.close()


def signed(path: str, params: dict) -> dict:
    return {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(PUBLIC + path, params)}


def post(server: Gunicorn, path: str, params: dict, timeout: float = 10) -> requests.Response:
    return requests.post(server.base + path, data=params, headers=signed(path, params), timeout=timeout)


def inbound_stop(from_: str) -> dict:
    return {"MessageSid": "SM" + uuid.uuid4().hex, "From": from_, "To": "+12125550100", "Body": "STOP",
            "AccountSid": "AC" + "f" * 32, "NumMedia": "0"}


def open_slow_body(server: Gunicorn) -> socket.socket:
    """A request whose headers arrive at once and whose body (1,000 bytes announced) will
    come a byte a second."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"POST /twilio/inbound HTTP/1.1\r\nHost: campaigns.example.com\r\n"
                 b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n"
                 b"X-Twilio-Signature: slow\r\n\r\nFrom=")
    return sock


def nothing_answered(sock: socket.socket) -> bool:
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)
    return False


def closed(sock: socket.socket) -> bool:
    """The server closed its side: an end of file, or a reset (bytes were still arriving)."""
    try:
        return sock.recv(64) == b""
    except ConnectionResetError:
        return True


def test_slow_bodies_do_not_starve_an_inbound_stop(gunicorn):
    # Given a customer, 12 connections trickling their bodies at a byte a second, and 4
    # trickling their headers
    (customer,) = make_customers(1)
    slow = [open_slow_body(gunicorn) for _ in range(SLOW_CLIENTS)]
    slow_headers = [socket.create_connection(("127.0.0.1", gunicorn.port), timeout=5) for _ in range(4)]
    for sock in slow_headers:
        sock.sendall(b"POST /twilio/inbound HTTP/1.1\r\nHost: campaigns.example.com\r\nX-Slow: ")
    opened = time.monotonic()
    stop_trickle = threading.Event()

    def trickle():
        for _ in range(BODY_TIMEOUT_S + 20):
            if stop_trickle.wait(1):
                return
            for sock in slow + slow_headers:
                try:
                    sock.send(b"1")
                except OSError:
                    pass

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        time.sleep(2)  # every slow request is in its body by now

        # When the customer's STOP comes in
        started = time.monotonic()
        try:
            answer = post(gunicorn, "/twilio/inbound", inbound_stop(phone_for(0)), timeout=5)
        except requests.Timeout:
            pytest.fail(f"a signed STOP was not answered within 5 s while {SLOW_CLIENTS} slow bodies hang")
        latency = time.monotonic() - started

        # Then it is answered and recorded at once, while the slow ones still hang
        assert answer.status_code == 200 and "<Response/>" in answer.text, latency
        assert Customer.get_by_id(customer).sms_subscribed is False
        assert OptOutEvent.select().where(OptOutEvent.customer == customer, OptOutEvent.action == "stop").count() == 1
        assert all(nothing_answered(sock) for sock in slow)
        # (headers are waited for at most gunicorn's keepalive, 2 s: those are closed already,
        # with an end of file, or a reset if bytes were still arriving)
        assert [closed(sock) for sock in slow_headers] == [True] * len(slow_headers)

        # And each slow one is cut off (408) once its body is BODY_TIMEOUT_S late
        for sock in slow:
            sock.settimeout(BODY_TIMEOUT_S + 10 - (time.monotonic() - opened))
            assert sock.recv(64).startswith(b"HTTP/1.1 408 "), "a slow body was not cut off"
        assert time.monotonic() - opened >= BODY_TIMEOUT_S  # not cut off before its time
    finally:
        stop_trickle.set()
        trickler.join(timeout=5)
        for sock in slow + slow_headers:
            sock.close()
    assert "Traceback" not in gunicorn.output()


def test_no_server_banner_and_the_public_headers_through_gunicorn(gunicorn):
    make_customers(1)
    campaign_id = make_campaign()
    sid = "SM" + uuid.uuid4().hex
    Message.create(campaign=campaign_id, customer=Customer.select().first(), status=MessageStatus.SENT,
                   to_phone=phone_for(0), twilio_sid=sid, sent_at=utcnow(), segments=1, link_code="LINKCODE")
    answers = {
        "redirect": requests.get(gunicorn.base + "/q/LINKCODE", headers={"User-Agent": "Mozilla/5.0"},
                                 allow_redirects=False, timeout=10),
        "not found": requests.get(gunicorn.base + "/q/%00", timeout=10),
        "doubled slash": requests.get(gunicorn.base + "/q//evil.example", headers={"Host": "evil.example"},
                                      allow_redirects=False, timeout=10),
        "status": post(gunicorn, "/twilio/status", {"MessageSid": sid, "MessageStatus": "delivered"}),
        "forbidden": requests.post(gunicorn.base + "/twilio/status", data={"MessageSid": sid}, timeout=10),
    }
    assert [a.status_code for a in answers.values()] == [302, 404, 404, 200, 403]
    assert "Location" not in answers["doubled slash"].headers
    for name, answer in answers.items():
        assert "Server" not in answer.headers, name
        assert answer.headers["X-Content-Type-Options"] == "nosniff", name
        assert answer.headers["Cache-Control"] == "no-store", name
        assert answer.headers["Referrer-Policy"] == "no-referrer", name
    # The status went through the whole app under gevent: PostgreSQL and the Redis broker
    assert Message.get(Message.twilio_sid == sid).delivery_status == "delivered"


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status.read(), re.M).group(1))


def test_the_body_limit_holds_the_workers_memory_chunked_too(gunicorn):
    workers = gunicorn.worker_pids()
    assert len(workers) == 2
    for _ in range(8):  # each worker's first requests load what it loads lazily: not the body's cost
        post(gunicorn, "/twilio/inbound", {"From": "x"})
    before = {pid: peak_rss_kib(pid) for pid in workers}

    # 64 MiB announced and sent (it took a worker to 392 MB with 100 MB): 413
    size = 64 * 1024 * 1024
    sock = socket.create_connection(("127.0.0.1", gunicorn.port), timeout=15)
    sock.sendall(b"POST /twilio/inbound HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"X-Twilio-Signature: x\r\nContent-Length: %d\r\n\r\n" % size)

    def send_body():
        chunk = b"a=1&" * 16_384
        try:
            for _ in range(size // len(chunk)):
                sock.sendall(chunk)
        except OSError:
            pass  # the server may close once it has answered

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    try:
        assert sock.recv(64).startswith(b"HTTP/1.1 413 ")
        sender.join(timeout=30)
    finally:
        sock.close()

    # Chunked, without a Content-Length: cut at the limit
    def chunks():
        for _ in range(64):
            yield b"a=1&" * 4096  # 1 MiB in all

    chunked = requests.post(gunicorn.base + "/twilio/inbound", data=chunks(), timeout=15,
                            headers={"X-Twilio-Signature": "x", "Content-Type": "application/x-www-form-urlencoded"})
    assert chunked.status_code == 413 and chunked.request.headers["Transfer-Encoding"] == "chunked"

    grown = {pid: peak_rss_kib(pid) - before[pid] for pid in workers}
    assert max(grown.values()) < 32 * 1024, grown  # KiB: a 64 MiB body read whole would grow it by 64 MiB
    # And a normal STOP is still served by the same workers
    assert post(gunicorn, "/twilio/inbound", inbound_stop(phone_for(1))).status_code == 200


def test_nothing_a_request_carries_forges_a_line_of_the_log(gunicorn):
    make_customers(1)
    forged = "\n[2026-01-01 00:00:00 +0000] [1] [INFO] FORGED"
    quoted = forged.replace("\n", "%0A").replace(" ", "%20").replace("[", "%5B").replace("]", "%5D").replace("+", "%2B")
    answers = [
        requests.get(gunicorn.base + "/q/%00" + quoted, timeout=10),
        requests.get(gunicorn.base + "/q/ABCDEFGH" + quoted, timeout=10),
        post(gunicorn, "/twilio/status", {"MessageSid": "SM" + "0" * 32 + forged, "MessageStatus": "delivered"}),
        post(gunicorn, "/twilio/inbound", {**inbound_stop(phone_for(0)), "MessageSid": "SM\x00" + forged}),
        post(gunicorn, "/twilio/inbound", inbound_stop("+1212" + forged)),
    ]
    assert [a.status_code for a in answers] == [404, 404, 400, 200, 200]
    time.sleep(0.5)
    output = gunicorn.output()
    assert "FORGED" in output  # logged, escaped
    assert not [line for line in output.splitlines() if line.lstrip().startswith("[2026-01-01")], output
    assert "Traceback" not in output


def test_queries_waiting_on_a_lock_hold_their_own_requests_only(gunicorn):
    # Given two customers whose rows this test keeps locked (as a campaign's transaction might)
    customers = make_customers(2)
    answers = {}

    def stop(index: int) -> None:
        answers[index] = post(gunicorn, "/twilio/inbound", inbound_stop(phone_for(index)), timeout=30)

    with database.atomic():
        list(Customer.select().where(Customer.id.in_(customers)).for_update())
        # When their STOPs come in (one per worker, if a waiting query blocked its worker)
        stoppers = [threading.Thread(target=stop, args=(i,)) for i in range(2)]
        for thread in stoppers:
            thread.start()
            time.sleep(0.5)
        time.sleep(0.5)
        assert all(thread.is_alive() for thread in stoppers)
        # Then other requests are still answered at once (psycopg2 waits through gevent: a
        # query blocks its greenlet, not its process)
        others = [requests.get(gunicorn.base + "/q/ZZZZZZZZ", timeout=5).status_code for _ in range(20)]
        assert others == [404] * 20
        assert all(thread.is_alive() for thread in stoppers)
    # And the STOPs go through once the locks are released
    for thread in stoppers:
        thread.join(timeout=10)
    assert [answers[i].status_code for i in range(2)] == [200, 200]
    assert [Customer.get_by_id(c).sms_subscribed for c in customers] == [False, False]
