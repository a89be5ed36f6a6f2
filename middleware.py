"""Worker middleware of this project other than the rate limit (``ratelimit.py``)."""

from __future__ import annotations

import random
import sys
import threading
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote, urlsplit

from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware

from errors import ServiceUnreachable
from models import database
from settings import mask_url


class DatabaseConnection(Middleware):
    """Database connections for worker threads, from the process's small pool
    (``DATABASE_MAX_CONNECTIONS``), whatever the number of threads.

    A thread takes a connection when its first statement runs (peewee connects on demand)
    and gives it back after each message, and before each request to Twilio
    (``actors.services``): a thread waiting on the network holds none, so a process can keep
    many more requests in flight than it has connections. A connection that died (a
    database restart) is dropped by the pool when it is given back, so the next message
    connects again; the message that met it is retried.
    """

    def __init__(self, *, db=database) -> None:
        self.logger = get_logger(__name__, type(self))
        self.db = db

    def after_process_message(self, broker, message, *, result=None, exception=None):
        self._close()

    def after_skip_message(self, broker, message):
        self._close()

    def before_worker_thread_shutdown(self, broker, thread):
        self._close()

    def _close(self) -> None:
        if not self.db.is_closed() and not self.db.in_transaction():
            self.db.close()


class Drain(Middleware):
    """Runs ``drain()`` once the worker's threads have stopped, to write what they left to
    be written behind. Errors are logged: the rows concerned are reconciled later."""

    def __init__(self, *, drain: Callable[[], object]) -> None:
        self.logger = get_logger(__name__, type(self))
        self.drain = drain

    def after_worker_shutdown(self, broker, worker):
        try:
            self.drain()
        except Exception:
            self.logger.exception("Drain at shutdown failed.")


class Sweeper(Middleware):
    """Runs ``sweep`` every ``interval_s`` in a background thread of each worker process.

    It lives in the worker, not in Redis, so it keeps going when Redis has lost every key
    (a periodic message would be lost with them). Errors are logged, never raised.
    """

    def __init__(self, *, interval_s: float, sweep: Callable[[], object], db=database) -> None:
        self.logger = get_logger(__name__, type(self))
        self.interval_s = interval_s
        self.sweep = sweep
        self.db = db
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker, worker):
        if self.interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sweeper", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker, worker):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s * random.uniform(0.8, 1.2)):
            try:
                self.db.connect(reuse_if_open=True)
                try:
                    self.sweep()
                finally:
                    self.db.close()
            except Exception:
                self.logger.exception("Sweep failed; will try again.")


@dataclass(frozen=True)
class Probe:
    """One service a worker needs: ``call()`` raises unless the service at ``url`` (the
    value of the setting ``variable``) answers."""

    variable: str
    url: str
    call: Callable[[], object]


def ping_database(db=database) -> None:
    """Open a connection (in the calling thread), run ``SELECT 1``, give it back."""
    db.connect(reuse_if_open=True)
    try:
        db.execute_sql("SELECT 1")
    finally:
        db.close()


def check_reachable(probes: list[Probe], *, timeout_s: float = 10.0) -> None:
    """Raise ``ServiceUnreachable`` for the first probe that fails or does not answer within
    ``timeout_s`` (each runs in a thread of its own, so a silent host cannot hang the start;
    a thread left waiting is a daemon and does not hold the exit)."""
    for probe in probes:
        outcome: list[BaseException | None] = []

        def run(probe=probe, outcome=outcome) -> None:
            try:
                probe.call()
            except BaseException as exc:  # reported below, whatever it is
                outcome.append(exc)
            else:
                outcome.append(None)

        thread = threading.Thread(target=run, name=f"probe-{probe.variable.lower()}", daemon=True)
        thread.start()
        thread.join(timeout_s)
        where = f"{probe.variable} ({mask_url(probe.url)})"
        if not outcome:
            raise ServiceUnreachable(f"cannot reach {where}: no answer within {timeout_s:g} s")
        if outcome[0] is not None:
            raise ServiceUnreachable(f"cannot reach {where}: {_one_line(outcome[0], probe.url)}")


def _one_line(exc: BaseException, url: str) -> str:
    """The error's first line, without the URL's password should a driver repeat it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[0] if lines else type(exc).__name__
    password = urlsplit(url).password
    if password:
        detail = detail.replace(password, "***").replace(unquote(password), "***")
    if "CERTIFICATE_VERIFY_FAILED" in detail:
        detail += " (a self-signed certificate, as Heroku's Redis has? set REDIS_TLS_VERIFY=off)"
    return detail


class StartupCheck(Middleware):
    """Ends a ``dramatiq`` worker process whose database or Redis does not answer at start,
    with one line on stderr naming the variable (password masked) and exit code 3, instead
    of booting and then failing every message, or logging a CRITICAL line every few seconds
    for as long as Redis is away.

    ``after_process_boot`` is emitted by dramatiq's CLI only, in each worker process right
    after it has imported the broker's module; a shell, the CLI, the web app, the demo and
    the tests import the same module or run an in-process ``Worker`` and never run this, so
    importing ``actors`` does no I/O. (``before_worker_boot`` would also run in those
    in-process workers, and dramatiq logs and ignores what it raises.) ``SystemExit`` passes
    through dramatiq's hook runner, which catches only ``Exception``.
    """

    #: dramatiq.cli.RET_CONNECT, "Broker connection failed during worker startup": the
    #: ``dramatiq`` parent stops the other processes and exits with it.
    EXIT_CODE = 3

    def __init__(self, *, probes: Callable[[], list[Probe]], timeout_s: float = 10.0, stream=None) -> None:
        self.logger = get_logger(__name__, type(self))
        self.probes = probes
        self.timeout_s = timeout_s
        self.stream = stream

    def after_process_boot(self, broker):
        try:
            check_reachable(self.probes(), timeout_s=self.timeout_s)
        except ServiceUnreachable as exc:
            print(exc.reason, file=self.stream or sys.stderr, flush=True)
            raise SystemExit(self.EXIT_CODE) from None
