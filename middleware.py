"""Worker middleware of this project other than the rate limit (``ratelimit.py``)."""

from __future__ import annotations

import random
import threading
from typing import Callable

from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware

from models import database


class DatabaseConnection(Middleware):
    """Open the thread's database connection around every message and close it after.

    A connection per message (not per thread) survives a database restart: the next
    message simply connects again instead of failing on a dead socket.
    """

    def __init__(self, *, db=database) -> None:
        self.logger = get_logger(__name__, type(self))
        self.db = db

    def before_process_message(self, broker, message):
        self.db.connect(reuse_if_open=True)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        self._close()

    def after_skip_message(self, broker, message):
        self._close()

    def _close(self) -> None:
        if not self.db.is_closed():
            self.db.close()


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
