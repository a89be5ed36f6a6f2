"""The operator's campaign commands say what is true (issue 13): a campaign that does not
exist, or whose state does not allow the command, is refused in one line naming its state,
exit code 1; a start time in the past or empty is refused; a send of an id that cannot be a
campaign's ends in the worker at once, recorded once, never retried.

The CLI runs as a real subprocess (``python -m cli``) on a temporary SQLite file, the shell's
environment only (not the tests'); the state table runs in-process on both databases."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import uuid

import pytest
import redis
from click.testing import CliRunner

import actors
import campaigns
import cli
from models import Campaign, CampaignStatus, Event, utcnow
from ratelimit import RateLimit
from tests.conftest import REDIS_URL, join_all
from tests.factories import make_campaign, make_customers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, database: str, **env: str) -> subprocess.CompletedProcess:
    """``python -m cli ARGS`` with a shell's environment, the stub broker and ``database``."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    environment = {**base, "PYTHONPATH": ROOT, "DATABASE_URL": database, "BROKER": "stub", "QUIET_HOURS": "off", **env}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=os.path.dirname(database.removeprefix("sqlite:///")),
                          env=environment, capture_output=True, text=True, timeout=60)


def assert_fails(result: subprocess.CompletedProcess, line: str, code: int = 1) -> None:
    """Exit ``code``, nothing on stdout, and exactly ``line`` (a regex) on stderr: no traceback."""
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert (result.returncode, result.stdout) == (code, ""), (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and re.fullmatch(line, lines[0]), result.stderr


def assert_says(result: subprocess.CompletedProcess, line: str) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [line]


@pytest.fixture
def database(sqlite_db, tmp_path) -> str:
    """The URL of the test's SQLite file, which the subprocess and the test share."""
    return f"sqlite:///{tmp_path / 'campaigns.db'}"


# ------------------------------------------------------------ a campaign that is not there
@pytest.mark.parametrize("command", ["send", "pause", "resume", "cancel", "status", "preview"])
def test_every_command_on_a_missing_campaign_says_it_does_not_exist(database, command):
    # (today: send says "started", pause "is not sending", resume "is not paused", cancel
    # "is already finished")
    assert_fails(run_cli("campaign", command, "999999", database=database), r"Error: campaign 999999 does not exist")


@pytest.mark.parametrize("command", ["send", "cancel", "status"])
def test_an_id_beyond_the_integer_range_is_refused_before_anything_is_asked(database, command):
    # (today: send says "campaign 99999999999999999999 started" and the worker's actor fails
    # five times with a traceback)
    assert_fails(run_cli("campaign", command, "99999999999999999999", database=database),
                 rf"Error: Invalid value for 'CAMPAIGN_ID': 99999999999999999999 is not in the range 1<=x<=2147483647\. "
                 rf"\(see 'python -m cli campaign {command} --help'\)", code=2)


def test_cancel_of_a_missing_or_finished_campaign_writes_nothing_to_redis(database):
    # Given the real broker in a namespace of the test's own, and a completed campaign
    namespace = f"test-cli-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_URL)
    done = make_campaign()
    Campaign.update(status=CampaignStatus.COMPLETED).where(Campaign.id == done).execute()
    live = make_campaign()
    env = {"BROKER": "redis", "REDIS_URL": REDIS_URL, "DRAMATIQ_NAMESPACE": namespace}
    try:
        # When each is cancelled
        missing = run_cli("campaign", "cancel", "999999", database=database, **env)
        finished = run_cli("campaign", "cancel", str(done), database=database, **env)

        # Then each says what is true, and no stop key is left behind (today: "is already
        # finished", and a stop key kept for 30 days)
        assert_fails(missing, r"Error: campaign 999999 does not exist")
        assert_fails(finished, rf"Error: campaign {done} is completed: nothing to cancel")
        assert list(client.scan_iter(f"{namespace}*")) == []

        # While a campaign that can be cancelled still gets its stop key
        cancelled = run_cli("campaign", "cancel", str(live), database=database, **env)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.splitlines() == [f"campaign {live} cancelled; 0 unsent customers recorded as cancelled"]
        assert 0 < client.ttl(f"{namespace}:ratelimit:stop:campaign:{live}") <= 30 * 86400
    finally:
        keys = list(client.scan_iter(f"{namespace}*"))
        if keys:
            client.delete(*keys)


# (status, status_reason, command, what the operator is told)
REFUSALS = [
    (CampaignStatus.COMPLETED, None, "send", "campaign {id} is completed: nothing to send"),
    (CampaignStatus.CANCELLED, "cancelled by an operator", "send", "campaign {id} is cancelled: nothing to send"),
    (CampaignStatus.FAILED, "the template cannot fit in one SMS", "send",
     "campaign {id} has failed (the template cannot fit in one SMS): nothing to send"),
    (CampaignStatus.SENDING, None, "send", "campaign {id} is already sending"),
    (CampaignStatus.PAUSED, "paused by an operator", "send",
     "campaign {id} is paused (paused by an operator): resume it to send the rest"),
    (CampaignStatus.DRAFT, None, "pause", "campaign {id} is a draft: nothing to pause"),
    (CampaignStatus.PAUSED, "error storm", "pause", "campaign {id} is already paused"),
    (CampaignStatus.COMPLETED, None, "pause", "campaign {id} is completed: nothing to pause"),
    (CampaignStatus.SENDING, None, "resume", "campaign {id} is already sending"),
    (CampaignStatus.DRAFT, None, "resume", "campaign {id} is a draft: nothing to resume"),
    (CampaignStatus.FAILED, "Twilio 21606", "cancel", "campaign {id} has failed (Twilio 21606): nothing to cancel"),
    (CampaignStatus.CANCELLED, None, "cancel", "campaign {id} is cancelled: nothing to cancel"),
]


@pytest.mark.parametrize("status, reason, command, told", REFUSALS)
def test_a_command_the_campaigns_state_does_not_allow_says_that_state(db, stub_broker, status, reason, command, told):
    # Given a campaign in that state (on SQLite and on PostgreSQL)
    campaign_id = make_campaign()
    Campaign.update(status=status, status_reason=reason).where(Campaign.id == campaign_id).execute()

    # When the operator runs the command
    result = CliRunner().invoke(cli.main, ["campaign", command, str(campaign_id)], prog_name="python -m cli")

    # Then it is refused in one line saying what is true, and nothing changed
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert result.stderr.splitlines() == ["Error: " + told.format(id=campaign_id)]
    assert result.stdout == ""
    after = Campaign.get_by_id(campaign_id)
    assert (after.status, after.status_reason) == (status, reason)
    assert all(q.qsize() == 0 for q in stub_broker.queues.values())


def test_send_of_a_scheduled_campaign_starts_it_now(db, stub_broker):
    campaign_id = make_campaign()
    actors.start(campaign_id, utcnow() + dt.timedelta(days=1))
    stub_broker.flush_all()

    result = CliRunner().invoke(cli.main, ["campaign", "send", str(campaign_id)], prog_name="python -m cli")

    assert result.exit_code == 0 and result.stdout == f"campaign {campaign_id} started\n", result.output
    campaign = Campaign.get_by_id(campaign_id)
    assert campaign.status == CampaignStatus.SCHEDULED and campaign.send_at <= utcnow()  # due: the fan-out starts it
    [message] = stub_broker.queues["campaigns"].queue
    assert message  # the fan-out, asked for at once


# ------------------------------------------------------------------------- --at
def test_an_empty_start_time_is_refused_not_taken_for_now(database):
    campaign_id = make_campaign()
    result = run_cli("campaign", "send", str(campaign_id), "--at", "", database=database)
    # (today: "campaign N started")
    assert_fails(result, r"Error: Invalid value for '--at': is empty: give a date and time such as "
                         r"2026-12-01T09:00:00-05:00, or leave --at out to send now \(see 'python -m cli campaign send --help'\)",
                 code=2)
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.DRAFT


def test_a_start_time_in_the_past_is_refused(database):
    # Given a start time typed with last year in it
    campaign_id = make_campaign()
    last_year = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=365)).replace(microsecond=0)

    result = run_cli("campaign", "send", str(campaign_id), "--at", last_year.isoformat(), database=database)

    # Then nothing is scheduled (today: scheduled, and the sweeper sends it a minute later)
    assert_fails(result, rf"Error: --at {last_year:%Y-%m-%d %H:%M:%S} UTC is in the past \(it is [0-9: -]+ UTC\): "
                         r"give a later time, or no time to send now")
    campaign = Campaign.get_by_id(campaign_id)
    assert (campaign.status, campaign.send_at) == (CampaignStatus.DRAFT, None)


def test_a_start_time_within_a_minute_ago_means_now_and_a_later_one_schedules(database):
    soon_past, later = make_campaign(), make_campaign()
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    ago = run_cli("campaign", "send", str(soon_past), "--at", (now - dt.timedelta(seconds=20)).isoformat(), database=database)
    tomorrow = (now + dt.timedelta(days=1)).astimezone(dt.timezone(dt.timedelta(hours=-5)))
    scheduled = run_cli("campaign", "send", str(later), "--at", tomorrow.isoformat(), database=database)

    assert_says(ago, f"campaign {soon_past} started")  # (today: "scheduled for" a time past)
    assert Campaign.get_by_id(soon_past).status == CampaignStatus.DRAFT  # the stub broker's fan-out died with the process
    assert_says(scheduled, f"campaign {later} scheduled for {now + dt.timedelta(days=1):%Y-%m-%d %H:%M} UTC")
    assert Campaign.get_by_id(later).send_at == (now + dt.timedelta(days=1)).replace(tzinfo=None)


# ------------------------------------------------------------------ in the worker
@pytest.mark.parametrize("campaign_id", [999999, 2**31 - 1, 2**31, 99999999999999999999, 0, -5, "abc", True])
def test_send_campaign_with_an_id_that_does_not_fit_or_does_not_exist_ends_at_once(db, stub_broker, caplog, campaign_id):
    # Given a campaign that exists (so that True is not taken for id 1)
    make_customers(1)
    make_campaign()
    caplog.set_level("INFO")

    # When the actor gets an id that is not a campaign's (today: an OverflowError on SQLite,
    # "integer out of range" on PostgreSQL, for the large ones; 5 retries of it)
    actors.send_campaign.fn(campaign_id)

    # Then it returns without an exception (nothing to retry), says so in one line, records
    # it once, and asks for nothing more
    lines = [r for r in caplog.records if r.levelno >= 30]
    assert len(lines) == 1 and "campaign_not_found" in lines[0].getMessage()
    assert Event.select().where(Event.code == "campaign_not_found").count() == 1
    assert all(q.qsize() == 0 for q in stub_broker.queues.values())
    assert Campaign.select().where(Campaign.status != CampaignStatus.DRAFT).count() == 0


def test_send_campaign_with_an_id_out_of_range_is_not_retried_by_the_worker(db, stub_broker, stub_worker, caplog):
    caplog.set_level("INFO")
    actors.send_campaign.send(99999999999999999999)
    join_all(stub_broker)  # (today: 5 retries of a traceback, backing off from 5 s)
    assert not [r for r in caplog.records if "Retrying" in r.getMessage() or r.exc_info]
    assert sum(len(letters) for letters in stub_broker.dead_letters_by_queue.values()) == 0
    assert Event.get(Event.code == "campaign_not_found").campaign_id is None


def test_the_shell_controls_refuse_what_the_campaign_cannot_do(sqlite_db, stub_broker):
    # Given a completed campaign and a draft
    done, draft = make_campaign(), make_campaign()
    Campaign.update(status=CampaignStatus.COMPLETED).where(Campaign.id == done).execute()

    # Then a start of the finished one, or one a year ago, is refused (a ValueError, as before)
    with pytest.raises(campaigns.Refused, match=f"campaign {done} is completed: nothing to send"):
        actors.start(done)
    with pytest.raises(ValueError, match="is in the past"):
        actors.start(draft, utcnow() - dt.timedelta(days=365))
    # And a cancel of a missing or finished campaign stops nothing
    assert actors.cancel(999999) is None and actors.cancel(done) is None
    limiter = next(m for m in stub_broker.middleware if isinstance(m, RateLimit))
    assert limiter.windows._stops == set()
    assert all(q.qsize() == 0 for q in stub_broker.queues.values())
    assert Campaign.get_by_id(draft).status == CampaignStatus.DRAFT
