"""The database's clock, as every process reads it (``dbclock.py``)."""

from __future__ import annotations

import datetime as dt

from dbclock import DatabaseClock
from models import database, sync_clock

T0 = dt.datetime(2026, 12, 1, 12, 0, 0)


class Ticks:
    """A local clock that moves 10 ms per reading, and a monotonic clock set by hand."""

    def __init__(self, start: dt.datetime) -> None:
        self.at, self.mono = start, 0.0

    def local(self) -> dt.datetime:
        self.at += dt.timedelta(milliseconds=10)
        return self.at

    def monotonic(self) -> float:
        return self.mono


def test_the_offset_is_measured_halfway_through_the_round_trip_and_refreshed_when_due():
    # Given a host whose clock is 90 s ahead of the database's
    ticks = Ticks(T0 + dt.timedelta(seconds=90))
    clock = DatabaseClock(local=ticks.local, monotonic=ticks.monotonic, refresh_s=60)
    assert clock.due

    # When it reads the database's clock (which reads T0 + 15 ms, mid-way through the call)
    offset = clock.measure(lambda: T0 + dt.timedelta(milliseconds=15))

    # Then its time is the database's, and it is not due again before refresh_s
    assert offset == dt.timedelta(seconds=-90)
    assert abs(clock.now() - (T0 + dt.timedelta(milliseconds=30))) < dt.timedelta(milliseconds=1)
    assert not clock.due
    ticks.mono = 60.0
    assert clock.due


def test_a_failed_reading_keeps_the_last_offset():
    ticks = Ticks(T0)
    clock = DatabaseClock(local=ticks.local, monotonic=ticks.monotonic)
    clock.measure(lambda: T0 + dt.timedelta(seconds=5, milliseconds=15))

    def broken():
        raise OSError("connection lost")

    assert clock.measure(broken) == dt.timedelta(seconds=5)
    assert clock.offset == dt.timedelta(seconds=5)


def test_postgres_connections_measure_the_offset_and_sqlite_shares_the_hosts_clock(db):
    # Given a fresh clock of this host (which agrees with the local database server's)
    from models import set_clock

    clock = DatabaseClock()
    previous = set_clock(clock)
    try:
        # When the database is asked for its time
        database.close()
        database.connect()
        sync_clock()
    finally:
        set_clock(previous)

    # Then the measured offset is that of two clocks of one machine: next to nothing
    assert not clock.due
    assert abs(clock.offset) < dt.timedelta(milliseconds=50)
