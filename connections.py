"""The database connection: one proxy the models use, made from ``DATABASE_URL``
(SQLite in WAL mode with a busy timeout; PostgreSQL through a pool that PREPAREs the hot
statements), the database's clock every process reads, and the transaction helpers."""

from __future__ import annotations

import contextlib
import datetime as dt

import psycopg2.extensions
from peewee import DatabaseProxy, SqliteDatabase
from playhouse.db_url import connect as connect_url
from playhouse.db_url import parse as parse_url
from playhouse.pool import PooledPostgresqlDatabase

from dbclock import DatabaseClock

database = DatabaseProxy()

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": 10_000,
    "synchronous": "normal",
    "foreign_keys": 1,
}


_clock = DatabaseClock()


def utcnow() -> dt.datetime:
    """Now, as naive UTC, on the database's clock (``dbclock.py``): every time written to a
    row, and every time compared with one, comes from here."""
    return _clock.now()


def set_clock(clock: DatabaseClock) -> DatabaseClock:
    """Use ``clock`` (a host with a skewed clock, in tests); returns the previous one."""
    global _clock
    previous, _clock = _clock, clock
    return previous


def sync_clock(conn=None) -> None:
    """Measure this host's offset from the database's clock if it is due (PostgreSQL on a
    connection: ``conn``, or the thread's); SQLite shares this host's clock."""
    if not _clock.due:
        return
    db = database.obj
    if not isinstance(db, PooledPostgres):
        _clock.same_host()
        return

    def read() -> dt.datetime:
        query = "SELECT clock_timestamp() AT TIME ZONE 'UTC'"
        if conn is None:
            return db.execute_sql(query).fetchone()[0]
        with conn.cursor() as cursor:
            cursor.execute(query)
            return cursor.fetchone()[0]

    _clock.measure(read)


def make_database(url: str, *, max_connections: int = 8):
    """A peewee database for ``url``. SQLite gets WAL and a busy timeout so that several
    worker threads and processes can share one file; PostgreSQL gets a pool of at most
    ``max_connections`` per process (a thread that finds none free waits up to 10 s), so the
    connection opened and closed around each database step is a checkout, not a handshake."""
    if url.startswith("sqlite"):
        return connect_url(url, pragmas=SQLITE_PRAGMAS, timeout=10)
    params = parse_url(url)
    return PooledPostgres(params.pop("database"), max_connections=max_connections, stale_timeout=300, timeout=10,
                          **params)


class PreparingConnection(psycopg2.extensions.connection):
    """A psycopg2 connection that remembers which statements it has PREPAREd."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prepared: set[str] = set()


class PooledPostgres(PooledPostgresqlDatabase):
    """A pool that trusts the driver's own view of a connection at checkout.

    peewee's pool pings every idle connection (``SELECT 1``) when it is checked out: a
    round trip per message. Without it, a connection killed by a database restart fails
    its first query, the message is retried, and the driver's closed flag makes the pool
    discard the connection.
    """

    def __init__(self, database, **kwargs) -> None:
        kwargs.setdefault("connection_factory", PreparingConnection)
        super().__init__(database, **kwargs)

    def _is_closed(self, conn):
        return bool(conn.closed) or self._adapter.txn_status(conn) == self._adapter.txn_unknown

    def _initialize_connection(self, conn):
        super()._initialize_connection(conn)
        sync_clock(conn)  # at most once per refresh_s, on whichever connection comes first


class HotStatement:
    """A statement run for every message. PostgreSQL parses and plans a plain statement on
    every execution, which cost it several times the execution itself, so there it is
    PREPAREd once per connection; sqlite3 keeps its own cache of prepared statements.

    ``sql`` uses ``{p}`` for each parameter.
    """

    def __init__(self, name: str, sql: str) -> None:
        self.name = name
        self.sql = sql
        count = sql.count("{p}")
        numbered = sql
        for i in range(1, count + 1):
            numbered = numbered.replace("{p}", f"${i}", 1)
        self._prepare = f"PREPARE {name} AS {numbered}"
        self._execute = f"EXECUTE {name}({', '.join(['%s'] * count)})" if count else f"EXECUTE {name}"
        self._plain: dict[str, str] = {}

    def execute(self, params: tuple):
        db = database.obj
        if isinstance(db, PooledPostgres):
            conn = db.connection()
            if self.name not in conn.prepared:
                db.execute_sql(self._prepare)
                conn.prepared.add(self.name)
            return db.execute_sql(self._execute, params)
        plain = self._plain.get(db.param)
        if plain is None:
            plain = self._plain[db.param] = self.sql.replace("{p}", db.param)
        return db.execute_sql(plain, params)


def configure_database(url: str, *, max_connections: int = 8):
    """Point the models at ``url`` (idempotent for the same URL) and return the database."""
    current = database.obj
    if current is not None and getattr(current, "_project_url", None) == url:
        return current
    db = make_database(url, max_connections=max_connections)
    db._project_url = url
    database.initialize(db)
    _clock.forget()
    return db


def is_postgres() -> bool:
    return isinstance(database.obj, PooledPostgres)


def write_transaction():
    """A transaction for read-then-write work. On SQLite it takes the write lock at BEGIN
    (``IMMEDIATE``) so two writers cannot both read and then deadlock upgrading."""
    if isinstance(database.obj, SqliteDatabase):
        return database.atomic("IMMEDIATE")
    return database.atomic()


@contextlib.contextmanager
def connection():
    """Open a connection for the block unless one is already open (reused), then close
    only what this block opened."""
    opened = database.connect(reuse_if_open=True)
    try:
        yield database
    finally:
        if opened and not database.is_closed():
            database.close()


def in_list(values: list) -> str:
    """``IN (%s, %s, ...)`` for ``values``, written out by hand: for a batch's thousands of
    values, the query builder cost more than the query."""
    return f"IN ({', '.join([database.param] * len(values))})"


def column_in(table: str, column: str, values: list, *, where: str = "", params: tuple = ()) -> set:
    """The ``column`` values of ``table`` that are in ``values`` (and meet ``where``, with
    ``params``), in one statement written out by hand: for a batch's few hundred values,
    the query builder cost more than the query."""
    if not values:
        return set()
    sql = f'SELECT "{column}" FROM "{table}" WHERE "{column}" {in_list(values)}'
    if where:
        sql += f" AND {where}"
    return {row[0] for row in database.execute_sql(sql, [*values, *params]).fetchall()}

