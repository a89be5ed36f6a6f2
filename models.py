"""Peewee models: the database is the source of truth; Redis only carries IDs.

Every (campaign, customer) pair gets exactly one ``Message`` row (a unique index), and that
row's status is the customer's outcome for the campaign. ``CampaignAnalytics`` is always
recomputed from those rows, never incremented, so it cannot drift from them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json

import psycopg2.extensions

from dbclock import DatabaseClock

from peewee import (

    AutoField,
    BooleanField,
    CharField,
    DatabaseProxy,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    SqliteDatabase,
    TextField,
)
from playhouse.db_url import connect as connect_url
from playhouse.db_url import parse as parse_url
from playhouse.pool import PooledPostgresqlDatabase

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


class BaseModel(Model):
    class Meta:
        database = database


class Customer(BaseModel):
    first_name = CharField(max_length=100, default="")
    last_name = CharField(max_length=100, default="")
    phone = CharField(max_length=40, null=True)
    phone_e164 = CharField(max_length=20, null=True, index=True)
    time_zone = CharField(max_length=64, null=True)
    sms_subscribed = BooleanField(default=True)
    created_at = DateTimeField(default=utcnow)
    #: The customer's id in the team's own system: the import's upsert key.
    external_ref = CharField(max_length=100, null=True, unique=True)
    #: The country (ISO 3166 alpha-2) the phone number was read in.
    region = CharField(max_length=2, null=True)
    #: When and where consent was given, as the import said.
    consent_at = DateTimeField(null=True)
    consent_source = CharField(max_length=200, null=True)
    #: Custom attributes from the import's other columns (a JSON object of strings).
    attributes = TextField(null=True)
    updated_at = DateTimeField(null=True)

    def attribute_values(self) -> dict[str, str]:
        return json.loads(self.attributes) if self.attributes else {}


class CustomerTag(BaseModel):
    customer = ForeignKeyField(Customer, backref="tags", on_delete="CASCADE")
    tag = CharField(max_length=64, index=True)

    class Meta:
        indexes = ((("customer", "tag"), True),)


class CustomAttribute(BaseModel):
    """A custom attribute some import brought in: templates may use it as a placeholder."""

    name = CharField(max_length=64, unique=True)
    created_at = DateTimeField(default=utcnow)


class QRCode(BaseModel):
    customer = ForeignKeyField(Customer, backref="qr_codes", unique=True, on_delete="CASCADE")
    code = CharField(max_length=32, unique=True)


class CampaignStatus:
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    COMPLETED = "completed"
    FAILED = "failed"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    FINISHED = (COMPLETED, FAILED, CANCELLED)


class Campaign(BaseModel):
    name = CharField(max_length=200)
    template = TextField()
    status = CharField(max_length=16, default=CampaignStatus.DRAFT, index=True)
    status_reason = TextField(null=True)
    rate_limit = CharField(max_length=40, null=True)
    time_zone = CharField(max_length=64, null=True)
    send_at = DateTimeField(null=True)
    dispatch_token = CharField(max_length=32, null=True)
    heartbeat_at = DateTimeField(null=True)
    fanout_done_at = DateTimeField(null=True)
    #: The fan-out's own sign of life (the dispatcher's is ``heartbeat_at``): a fan-out that
    #: died is restarted even while its dispatcher goes on.
    fanout_beat_at = DateTimeField(null=True)
    #: The recipients' time zones (a JSON list), gathered by the fan-out.
    zones = TextField(null=True)

    def recipient_zones(self) -> list[str]:
        """The time zones of the campaign's recipients, as far as the fan-out got."""
        return json.loads(self.zones) if self.zones else []
    started_at = DateTimeField(null=True)
    completed_at = DateTimeField(null=True)
    created_at = DateTimeField(default=utcnow)


class MessageStatus:
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    OPEN = (PENDING, SENDING)
    ALL = (PENDING, SENDING, SENT, FAILED, SKIPPED, CANCELLED)


class Message(BaseModel):
    """One customer's outcome in one campaign."""

    id = AutoField()
    campaign = ForeignKeyField(Campaign, backref="messages", on_delete="CASCADE", index=False)  # led by the unique index
    customer = ForeignKeyField(Customer, backref="messages", on_delete="CASCADE")
    status = CharField(max_length=16, default=MessageStatus.PENDING)
    to_phone = CharField(max_length=20, null=True)
    body = TextField(null=True)
    encoding = CharField(max_length=8, null=True)
    segments = IntegerField(null=True)
    twilio_sid = CharField(max_length=40, null=True)
    delivery_status = CharField(max_length=16, null=True)
    delivery_error_code = CharField(max_length=16, null=True)
    delivered_at = DateTimeField(null=True)
    error_code = CharField(max_length=32, null=True)
    reason = TextField(null=True)
    attempts = IntegerField(default=0)
    deferrals = IntegerField(default=0)
    queued_at = DateTimeField(null=True)
    sending_at = DateTimeField(null=True)
    #: The first claim's time, never moved: a message is looked for at Twilio since then.
    first_attempt_at = DateTimeField(null=True)
    #: The code of this message's own short link (``links.py``), set when it is rendered.
    link_code = CharField(max_length=16, null=True)
    #: The recipient's time zone as the fan-out found it (quiet hours): the dispatcher does
    #: not enqueue a row while its zone is inside them.
    time_zone = CharField(max_length=64, null=True)
    sent_at = DateTimeField(null=True)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("campaign", "customer"), True),)


#: The dispatcher's and the sweeper's view of a campaign's unfinished rows. Partial, so that
#: a row that is done leaves it and recording a result writes one index entry fewer.
Message.add_index(
    Message.index(Message.campaign, Message.status, Message.queued_at, name="message_open_by_campaign")
    .where(Message.status.in_(list(MessageStatus.OPEN)))
)
#: Status callbacks find a message by its SID, inbound STOPs the messages sent to a number.
#: Both cover sent messages only, so claiming a row writes no entry in them.
Message.add_index(
    Message.index(Message.twilio_sid, unique=True, name="message_by_twilio_sid").where(Message.twilio_sid.is_null(False))
)
Message.add_index(
    Message.index(Message.to_phone, name="message_sent_to_phone").where(Message.twilio_sid.is_null(False))
)
#: A short link finds its message; codes are unique across campaigns.
Message.add_index(
    Message.index(Message.link_code, unique=True, name="message_by_link_code").where(Message.link_code.is_null(False))
)
def db_datetime(value: dt.datetime):
    """``value`` as the driver takes it in a hand-written statement (as peewee would pass it)."""
    return Message.sent_at.db_value(value)




class CampaignAnalytics(BaseModel):
    campaign = ForeignKeyField(Campaign, backref="analytics", unique=True, on_delete="CASCADE")
    targeted = IntegerField(default=0)
    eligible = IntegerField(default=0)
    pending = IntegerField(default=0)
    sent = IntegerField(default=0)
    failed = IntegerField(default=0)
    skipped = IntegerField(default=0)
    cancelled = IntegerField(default=0)
    segments = IntegerField(default=0)
    delivered = IntegerField(default=0)
    undelivered = IntegerField(default=0)
    unique_clicks = IntegerField(default=0)
    carrier_errors = TextField(default="{}")
    skipped_by_reason = TextField(default="{}")
    failed_by_reason = TextField(default="{}")
    updated_at = DateTimeField(default=utcnow)


class Event(BaseModel):
    """An operator-visible record of something that went wrong outside a message row
    (for example a campaign id that does not exist)."""

    campaign_id = IntegerField(null=True, index=True)
    level = CharField(max_length=8, default="error")
    code = CharField(max_length=40)
    detail = TextField()
    created_at = DateTimeField(default=utcnow)


class OptOutEvent(BaseModel):
    """Every change of a customer's SMS consent, kept for audit."""

    customer = ForeignKeyField(Customer, backref="opt_out_events", null=True, on_delete="SET NULL")
    phone_e164 = CharField(max_length=20, index=True)
    action = CharField(max_length=8)  # "stop" or "start"
    keyword = CharField(max_length=40, null=True)
    message_sid = CharField(max_length=40, null=True, unique=True)
    created_at = DateTimeField(default=utcnow)


class EarlyStatus(BaseModel):
    """A delivery report for a SID not recorded yet (see ``delivery.py``)."""

    sid = CharField(max_length=40)
    status = CharField(max_length=16)
    error_code = CharField(max_length=16, null=True)
    received_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("sid", "status"), True),)


class Click(BaseModel):
    """A visit of a customer's short link (link-preview bots excluded)."""

    customer = ForeignKeyField(Customer, backref="clicks", on_delete="CASCADE")
    campaign = ForeignKeyField(Campaign, backref="clicks", null=True, on_delete="SET NULL")
    code = CharField(max_length=32)
    user_agent = CharField(max_length=300, null=True)
    created_at = DateTimeField(default=utcnow)


MODELS = [Customer, CustomerTag, CustomAttribute, QRCode, Campaign, Message, CampaignAnalytics, Event, OptOutEvent, Click,
          EarlyStatus]


def make_database(url: str):
    """A peewee database for ``url``. SQLite gets WAL and a busy timeout so that several
    worker threads and processes can share one file; PostgreSQL gets a connection pool, so
    the connection opened and closed around each message is a checkout, not a handshake."""
    if url.startswith("sqlite"):
        return connect_url(url, pragmas=SQLITE_PRAGMAS, timeout=10)
    params = parse_url(url)
    return PooledPostgres(params.pop("database"), max_connections=64, stale_timeout=300, timeout=10, **params)


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


def configure_database(url: str):
    """Point the models at ``url`` (idempotent for the same URL) and return the database."""
    current = database.obj
    if current is not None and getattr(current, "_project_url", None) == url:
        return current
    db = make_database(url)
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


__all__ = [

    "Campaign",
    "CampaignAnalytics",
    "CampaignStatus",
    "Customer",
    "Event",
    "Message",
    "MessageStatus",
    "QRCode",
    "configure_database",
    "connection",
    "database",
    "utcnow",
    "write_transaction",
]
