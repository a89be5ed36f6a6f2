"""Worker middleware of this project other than the rate limit (``ratelimit.py``)."""

from __future__ import annotations

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
