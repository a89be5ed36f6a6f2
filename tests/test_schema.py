"""The release phase (``python -m cli init-db``) brings a database of an earlier version up
to date: the columns added since, then the indexes that cover them."""

from __future__ import annotations

from models import database
from schema import ADDED_COLUMNS, create_schema


def test_a_database_of_the_previous_version_gets_the_new_columns_and_indexes(db):
    # Given a database created before the columns added since (and their index) existed
    database.execute_sql('DROP INDEX IF EXISTS "message_by_link_code"')
    database.execute_sql('DROP INDEX IF EXISTS "customer_external_ref"')
    for table in ("customertag", "customattribute"):
        database.execute_sql(f'DROP TABLE "{table}"')
    for table, column, _field in ADDED_COLUMNS:
        database.execute_sql(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
    assert "link_code" not in {c.name for c in database.get_columns("message")}

    # When the release phase runs, twice (a second release changes nothing)
    create_schema()
    create_schema()

    # Then every added column and the link-code index are there
    for table, column, _field in ADDED_COLUMNS:
        assert column in {c.name for c in database.get_columns(table)}
    assert "message_by_link_code" in {index.name for index in database.get_indexes("message")}
    assert "customer_external_ref" in {index.name for index in database.get_indexes("customer") if index.unique}
    assert database.table_exists("customertag") and database.table_exists("customattribute")
