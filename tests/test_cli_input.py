"""Bad input and unreachable services get one line, not a traceback (issue 13): values longer
than their columns (the same answer on SQLite and PostgreSQL), times out of range, intervals
that cannot be slept, a database or Redis that does not answer (named, password masked);
and a campaign's rate limit is accepted only if the worker honours it exactly as written."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

import cli
import fanout
from limits import parse
from models import Campaign, CampaignStatus
from ratelimit import _parse as worker_parse
from tests.factories import make_campaign, make_customers
from tests.test_cli_campaign import assert_fails, assert_says, database, run_cli  # noqa: F401 (a fixture)

TEMPLATE = "Hi {first_name}: {short_url}"


def create(*options: str) -> list[str]:
    return ["campaign", "create", "--template", TEMPLATE, *options]


# --------------------------------------------------------------- longer than the column
@pytest.mark.parametrize("option, value, told", [
    ("--name", "n" * 201, "--name is 201 characters long: at most 200"),
    ("--rate-limit", "1 per " + "0" * 26 + "1 minutes", "--rate-limit is 41 characters long: at most 40"),
    ("--time-zone", "America/" + "x" * 57, "--time-zone is 65 characters long: at most 64"),
])
def test_a_value_longer_than_its_column_is_refused_on_both_databases(db, option, value, told):
    # (today: SQLite keeps it whole, PostgreSQL answers with a traceback)
    options = [option, value] if option == "--name" else ["--name", "n", option, value]
    result = CliRunner().invoke(cli.main, create(*options), prog_name="python -m cli")

    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [f"Error: {told}"] and result.stdout == ""
    assert Campaign.select().count() == 0


def test_an_empty_name_and_text_that_is_not_utf8_are_refused(database):
    assert_fails(run_cli(*create("--name", " "), database=database), r"Error: --name is empty")
    result = run_cli(*create("--name", b"caf\xe9"), database=database)
    assert_fails(result, r"Error: Invalid value for '--name': is not valid UTF-8 text "
                         r"\(see 'python -m cli campaign create --help'\)", code=2)
    assert Campaign.select().count() == 0


# ------------------------------------------------------------------ values out of range
def test_a_start_time_that_overflows_in_utc_is_refused(database):
    campaign_id = make_campaign()
    # (today: OverflowError: date value out of range)
    assert_fails(run_cli("campaign", "send", str(campaign_id), "--at", "0001-01-01T00:00:00+14:00", database=database),
                 r"Error: Invalid value for '--at': '0001-01-01T00:00:00\+14:00' is out of range once in UTC "
                 r"\(see 'python -m cli campaign send --help'\)", code=2)
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.DRAFT


@pytest.mark.parametrize("interval", ["-1", "nan", "0", "1e300"])
def test_a_watch_interval_that_cannot_be_slept_is_refused(database, interval):
    campaign_id = make_campaign()
    # (today: ValueError: sleep length must be non-negative, after the first screen)
    assert_fails(run_cli("campaign", "status", str(campaign_id), "--watch", "--interval", interval, database=database),
                 rf"Error: Invalid value for '--interval': {interval} is not a number of seconds from 0\.1 to 3600 "
                 r"\(see 'python -m cli campaign status --help'\)", code=2)


# -------------------------------------------------------------- services that do not answer
def test_an_unreachable_database_is_one_line_naming_database_url_without_its_password(database):
    result = run_cli("campaign", "status", "1", database=database,
                     DATABASE_URL="postgresql://postgres:s3cret@127.0.0.1:1/x")
    # (today: 85 lines of traceback)
    assert_fails(result, r"Error: database error \(DATABASE_URL=postgresql://postgres:\*\*\*@127\.0\.0\.1:1/x\): "
                         r"connection to server at .*port 1 failed: .*")
    assert "s3cret" not in result.stderr


def test_a_database_without_tables_says_to_run_init_db(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert_fails(run_cli("campaign", "status", "1", database=url),
                 rf"Error: database error \(DATABASE_URL={re.escape(url)}\): no such table: campaign; run 'python -m cli init-db' first")


@pytest.mark.parametrize("command", ["send", "cancel"])
def test_an_unreachable_redis_is_one_line_naming_redis_url_and_nothing_is_changed(database, command):
    campaign_id = make_campaign()
    result = run_cli("campaign", command, str(campaign_id), database=database,
                     BROKER="redis", REDIS_URL="redis://:s3cret@127.0.0.1:1/0")
    # (today: 86 lines of traceback)
    assert_fails(result, r"Error: cannot reach Redis at REDIS_URL=redis://:\*\*\*@127\.0\.0\.1:1/0: .*Connection refused.*")
    assert "s3cret" not in result.stderr
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.DRAFT


# ------------------------------------------------------------------------ rate limits
@pytest.mark.parametrize("limit, told", [
    ("5 per 0 seconds", "has a period of 0: give a period of at least 1, such as '5 per 1 second'"),  # (today: 5/second)
    ("0/minute", "allows no message at all: the amount must be at least 1"),
    ("1/minute;2/second", "has 2 parts: a campaign has one limit, such as '5/minute'"),  # (today: 1/minute only)
    ("1 per 2 days", "has a window longer than a day: give one of at most a day, such as '100/day'"),
    ("100/second", "is faster than the global SMS_RATE_LIMIT '10/minute', which every message obeys as well: "
                   "give a slower one, or none to send at the global rate"),  # (today: accepted, never reached)
    ("11/minute", "is faster than the global SMS_RATE_LIMIT '10/minute', which every message obeys as well: "
                  "give a slower one, or none to send at the global rate"),
])
def test_a_rate_limit_the_worker_would_not_honour_as_written_is_refused(database, limit, told):
    result = run_cli(*create("--name", "n", "--rate-limit", limit), database=database, SMS_RATE_LIMIT="10/minute")
    assert_fails(result, "Error: " + re.escape(f"campaign rate limit {limit!r} {told}"))
    assert Campaign.select().count() == 0


@pytest.mark.parametrize("limit", ["5/minute", "10/minute", "10 per 2 minutes", "100/day", "1 per 1 hour"])
def test_a_rate_limit_accepted_is_the_one_the_worker_applies(database, limit):
    # When the operator creates a campaign with a limit no faster than the global one
    result = run_cli(*create("--name", "n", "--rate-limit", limit), database=database, SMS_RATE_LIMIT="10/minute")

    # Then it is saved as written, and the worker's limiter reads exactly that one limit
    from rendering import campaign_rate_limit

    assert_says(result, "1")
    assert Campaign.get_by_id(1).rate_limit == limit
    assert worker_parse(limit) == campaign_rate_limit(limit) == parse(limit)


@pytest.mark.parametrize("limit", ["5 per 0 seconds", "1/minute;2/second"])
def test_a_stored_limit_the_worker_cannot_honour_fails_the_campaign_at_its_fan_out(sqlite_db, limit):
    # Given a campaign saved with such a limit before it was checked (or by another way in)
    make_customers(2)
    campaign_id = make_campaign()
    Campaign.update(rate_limit=limit).where(Campaign.id == campaign_id).execute()

    # When it is started, it fails with the reason instead of sending at another rate
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
    campaign = Campaign.get_by_id(campaign_id)
    assert campaign.status == CampaignStatus.FAILED
    assert campaign.status_reason.startswith(f"campaign rate limit {limit!r} has ")
