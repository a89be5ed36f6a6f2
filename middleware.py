"""Worker middleware of this project other than the rate limit (``ratelimit.py``)."""

from __future__ import annotations

import random
import threading
from typing import Callable

from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware

from models import database


class DatabaseConnection(Middleware):
    """Give each worker thread a database connection, kept from one message to the next.

    A message that fails returns its thread's connection to the pool, which drops it if the
    driver saw it die: after a database restart, the messages that met a dead connection
    are retried and the next ones connect again. Keeping the connection otherwise spares
    every message a pool checkout.
    """

    def __init__(self, *, db=database) -> None:
        self.logger = get_logger(__name__, type(self))
        self.db = db

    def before_process_message(self, broker, message):
        self.db.connect(reuse_if_open=True)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is not None:
            self._close()

    def before_worker_thread_shutdown(self, broker, thread):
        self._close()

    def _close(self) -> None:
        if not self.db.is_closed():
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
