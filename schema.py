"""The release phase (``python -m cli init-db``): create what is missing, and bring a
database of an earlier version up to date (columns added since, obsolete indexes dropped)."""

from __future__ import annotations

from peewee import BooleanField, CharField, DateTimeField, IntegerField, TextField
from playhouse.migrate import SchemaMigrator, migrate

import consent
from models import MODELS, Message, database, is_postgres

#: Indexes of earlier versions that the models' indexes replace.
OBSOLETE_INDEXES = ("message_campaign_id", "message_campaign_id_status_queued_at", "message_to_phone", "message_twilio_sid")

#: Columns added after a table was first created: ``create_schema`` adds those missing.
ADDED_COLUMNS = (
    ("message", "first_attempt_at", lambda: DateTimeField(null=True)),
    ("message", "link_code", lambda: CharField(max_length=16, null=True)),
    ("message", "time_zone", lambda: CharField(max_length=64, null=True)),
    ("campaign", "zones", lambda: TextField(null=True)),
    ("campaign", "fanout_beat_at", lambda: DateTimeField(null=True)),
    ("campaign", "audience", lambda: TextField(null=True)),
    ("campaign", "frequency_cap_h", lambda: IntegerField(null=True)),
    ("campaign", "smart_encoding", lambda: BooleanField(null=True)),
    ("campaign", "on_overflow", lambda: CharField(max_length=16, null=True)),
    ("campaign", "language", lambda: CharField(max_length=8, null=True)),
    ("campaign", "from_number", lambda: CharField(max_length=20, null=True)),
    ("campaign", "messaging_service_sid", lambda: CharField(max_length=34, null=True)),
    ("campaign", "slowed_at", lambda: DateTimeField(null=True)),
    ("customer", "external_ref", lambda: CharField(max_length=100, null=True)),
    ("customer", "region", lambda: CharField(max_length=2, null=True)),
    ("customer", "consent_at", lambda: DateTimeField(null=True)),
    ("customer", "consent_source", lambda: CharField(max_length=200, null=True)),
    ("customer", "attributes", lambda: TextField(null=True)),
    ("customer", "updated_at", lambda: DateTimeField(null=True)),
)


def create_schema(*, default_region: str | None = None) -> None:
    """Create what is missing (the release phase): tables, columns added since, indexes.
    With ``default_region``, also bring the data up: every customer's number in E.164, and
    the opt-outs recorded before the suppression list on it (``consent.py``)."""
    with database.connection_context():
        _add_missing_columns()  # first: the indexes below may cover them
        if database.table_exists("message") and message_customer_on_delete() == "CASCADE":
            _keep_messages_of_deleted_customers()
        if is_postgres() and database.table_exists("message"):
            # On a table that already holds rows, build it without blocking the workers'
            # writes (create_tables would not); create_tables then finds it there.
            database.execute_sql(
                'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "message_by_link_code" ON "message" ("link_code") '
                'WHERE ("link_code" IS NOT NULL)'
            )
            database.execute_sql(
                'CREATE INDEX CONCURRENTLY IF NOT EXISTS "message_sent_by_campaign" ON "message" ("campaign_id", "sent_at") '
                'WHERE ("sent_at" IS NOT NULL)'
            )
        database.create_tables(MODELS, safe=True)
        for name in OBSOLETE_INDEXES:
            database.execute_sql(f'DROP INDEX IF EXISTS "{name}"')
        if default_region is not None:
            consent.backfill_phone_e164(default_region)
            consent.backfill_suppressions()


def _add_missing_columns() -> None:
    migrator = SchemaMigrator.from_database(database.obj)
    operations = []
    for table, column, field in ADDED_COLUMNS:
        if not database.table_exists(table):
            continue
        if column not in {c.name for c in database.get_columns(table)}:
            operations.append(migrator.add_column(table, column, field()))
    if operations:
        migrate(*operations)


def message_customer_on_delete() -> str | None:
    """What deleting a customer does to their message rows: "SET NULL" (they stay, the
    campaign's record) or, in databases of earlier versions, "CASCADE"."""
    if is_postgres():
        row = database.execute_sql(
            "SELECT c.confdeltype FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid "
            "AND a.attnum = ANY(c.conkey) WHERE c.conrelid = 'message'::regclass AND c.contype = 'f' "
            "AND a.attname = 'customer_id'").fetchone()
        return None if row is None else {"c": "CASCADE", "n": "SET NULL", "a": "NO ACTION", "r": "RESTRICT"}.get(row[0])
    for row in database.execute_sql('PRAGMA foreign_key_list("message")').fetchall():
        if row[3] == "customer_id":
            return row[6]
    return None


def _keep_messages_of_deleted_customers() -> None:
    """Earlier versions deleted a customer's messages with them (and so a campaign's record
    of that number: its next customer would be texted again). Make the key SET NULL: in one
    statement on PostgreSQL; on SQLite, which cannot alter a constraint, by rebuilding the
    table (the indexes are made again by ``create_tables``)."""
    if is_postgres():
        name = database.execute_sql(
            "SELECT c.conname FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid "
            "AND a.attnum = ANY(c.conkey) WHERE c.conrelid = 'message'::regclass AND c.contype = 'f' "
            "AND a.attname = 'customer_id'").fetchone()[0]
        with database.atomic():  # NOT VALID: no scan of the table while the workers' writes wait
            database.execute_sql(f'ALTER TABLE "message" DROP CONSTRAINT "{name}", ALTER COLUMN "customer_id" DROP NOT NULL, '
                                 f'ADD CONSTRAINT "{name}" FOREIGN KEY ("customer_id") REFERENCES "customer" ("id") '
                                 'ON DELETE SET NULL NOT VALID')
        database.execute_sql(f'ALTER TABLE "message" VALIDATE CONSTRAINT "{name}"')  # a lock that lets writes on
        return
    create, params = database.get_sql_context().sql(Message._schema._create_table(safe=False)).query()
    columns = ", ".join(f'"{field.column_name}"' for field in Message._meta.sorted_fields)
    database.execute_sql("PRAGMA foreign_keys = OFF")
    try:
        with database.atomic():
            database.execute_sql(create.replace('"message"', '"message__rebuilt"', 1), params)
            database.execute_sql(f'INSERT INTO "message__rebuilt" ({columns}) SELECT {columns} FROM "message"')
            database.execute_sql('DROP TABLE "message"')
            database.execute_sql('ALTER TABLE "message__rebuilt" RENAME TO "message"')
    finally:
        database.execute_sql("PRAGMA foreign_keys = ON")
