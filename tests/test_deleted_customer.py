"""A customer deleted while their campaign runs: their message rows stay (the campaign's
record: nothing is lost), a pending one is skipped with its reason rather than sent or left
pending forever, and the release phase brings an earlier database's cascade up to date."""

from __future__ import annotations

import fanout
import sending
from message_types import SkipReason
from models import Customer, Message, MessageStatus, database, is_postgres
from schema import create_schema, message_customer_on_delete
from tests.factories import make_campaign, make_customers

BASE = "https://x.test/q"


def test_a_pending_message_whose_customer_was_deleted_is_skipped_not_sent(db, fake_twilio, twilio_backend):
    # Given a sending campaign with one pending message
    (a,) = make_customers(1)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base=BASE)
    message = Message.get(Message.campaign == campaign_id)

    # When its customer is deleted before the send
    Customer.delete().where(Customer.id == a).execute()
    outcome = sending.send_message(message.id, backend=twilio_backend, short_url_base=BASE)

    # Then nothing is sent and the row is skipped with its reason
    row = Message.get_by_id(message.id)
    assert (outcome.status, row.status, row.error_code) == (MessageStatus.SKIPPED, MessageStatus.SKIPPED,
                                                            SkipReason.CUSTOMER_DELETED)
    assert fake_twilio.messages == []


def _cascade_schema() -> None:
    """The message table as earlier versions made it: its customer deleted with it."""
    if is_postgres():
        name = database.execute_sql(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'message'::regclass AND contype = 'f' "
            "AND conkey = ARRAY[(SELECT attnum FROM pg_attribute WHERE attrelid = 'message'::regclass "
            "AND attname = 'customer_id')]").fetchone()[0]
        database.execute_sql(f'ALTER TABLE "message" DROP CONSTRAINT "{name}", ADD CONSTRAINT "{name}" '
                             'FOREIGN KEY ("customer_id") REFERENCES "customer" ("id") ON DELETE CASCADE, '
                             'ALTER COLUMN "customer_id" SET NOT NULL')
    else:
        sql = database.execute_sql("SELECT sql FROM sqlite_master WHERE name = 'message'").fetchone()[0]
        old = sql.replace('"customer_id" INTEGER,', '"customer_id" INTEGER NOT NULL,').replace(
            'ON DELETE SET NULL', 'ON DELETE CASCADE')
        assert old != sql
        database.execute_sql("PRAGMA foreign_keys = OFF")
        database.execute_sql("PRAGMA writable_schema = ON")
        database.execute_sql("UPDATE sqlite_master SET sql = ? WHERE name = 'message'", (old,))
        database.execute_sql("PRAGMA writable_schema = OFF")
        database.close()
        database.connect()


def test_the_release_phase_turns_an_earlier_cascade_into_set_null_keeping_every_row(db):
    # Given a database of an earlier version, whose messages went with their customer
    (a, b) = make_customers(2)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base=BASE)
    _cascade_schema()
    assert message_customer_on_delete() == "CASCADE"

    # When the release phase runs (twice: a second one changes nothing)
    create_schema()
    create_schema()

    # Then the rows are all there, and deleting a customer keeps their message
    assert message_customer_on_delete() == "SET NULL"
    assert Message.select().where(Message.campaign == campaign_id).count() == 2
    Customer.delete().where(Customer.id == a).execute()
    assert sorted(m.customer_id or 0 for m in Message.select()) == [0, b]
    assert "message_by_link_code" in {index.name for index in database.get_indexes("message")}
