"""The time that processes on different hosts compare: the database's clock.

Every time the project writes and later compares across processes (a claim's
``sending_at`` against another worker's in-flight guard, a dispatcher's ``queued_at``
against another's stale cut-off, a campaign's heartbeat against a sweeper's) is taken from
``models.utcnow()``, which is this host's clock corrected by its measured offset from the
database server's clock. A worker whose clock is 90 s off therefore writes and compares
the same times as the others, without a round trip per reading.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Callable

logger = logging.getLogger(__name__)


def system_utcnow() -> dt.datetime:
    """This host's clock, as naive UTC."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class DatabaseClock:
    """Naive-UTC time on the database's clock: this host's clock plus a measured offset.

    Parameters:
      local: This host's clock (naive UTC); injectable, for a skewed host in tests.
      refresh_s: How long a measured offset is trusted before ``due`` asks for another.
      monotonic: The clock that times ``refresh_s``.
    """

    def __init__(
        self, *, local: Callable[[], dt.datetime] = system_utcnow, refresh_s: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local = local
        self.refresh_s = refresh_s
        self.monotonic = monotonic
        self.offset = dt.timedelta(0)
        self._measured_at: float | None = None

    def now(self) -> dt.datetime:
        return self.local() + self.offset

    @property
    def due(self) -> bool:
        return self._measured_at is None or self.monotonic() - self._measured_at >= self.refresh_s

    def measure(self, read_database_utc: Callable[[], dt.datetime]) -> dt.timedelta:
        """Set the offset from one reading of the database's clock, taken as having been
        read halfway through the round trip. A reading that fails keeps the last offset."""
        before = self.local()
        try:
            database_utc = read_database_utc()
        except Exception as exc:  # noqa: BLE001 - the next connection tries again
            logger.warning("could not read the database's clock (%s); keeping offset %s", type(exc).__name__, self.offset)
            return self.offset
        after = self.local()
        offset = database_utc - (before + (after - before) / 2)
        if abs(offset - self.offset) > dt.timedelta(seconds=1):
            logger.info("this host's clock is %.3f s behind the database's", offset.total_seconds())
        self.offset, self._measured_at = offset, self.monotonic()
        return offset

    def forget(self) -> None:
        """Another database: no offset until it is measured."""
        self.offset, self._measured_at = dt.timedelta(0), None

    def same_host(self) -> None:
        """The database is a file on this host (SQLite): its clock is this one."""
        self.offset, self._measured_at = dt.timedelta(0), self.monotonic()
