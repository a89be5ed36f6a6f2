"""Observability (issue 15): campaign-labelled counters with bounded labels; the control
commands print their result once; the console backend prints each whole message in one
write; ``status --watch`` prints nothing but its reports."""

from __future__ import annotations

import subprocess

import pytest
from prometheus_client import CollectorRegistry

import actors
import fanout
import observability
from models import Campaign, CampaignStatus
from smsservice import ConsoleBackend
from tests.conftest import join_all
from tests.factories import make_campaign, make_customers, phone_for
from tests.test_cli_campaign import run_cli
from tests.recording import Recording

BASE = "https://x.test/q"


@pytest.fixture
def database(sqlite_db, tmp_path) -> str:
    """The URL of the test's SQLite file, which the subprocess and the test share."""
    return f"sqlite:///{tmp_path / 'campaigns.db'}"


def says_once(result: subprocess.CompletedProcess, line: str) -> None:
    """Exit 0, exactly ``line`` on stdout, and nothing at all on stderr."""
    assert result.returncode == 0, result.stderr
    assert (result.stdout.splitlines(), result.stderr) == ([line], "")


# ----------------------------------------------------------------- one line per command
def test_the_control_commands_print_their_result_once(database):
    # (before: pause and cancel printed the event's log record on stderr, then their line)
    # Given a sending campaign of 3 customers
    make_customers(3)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base=BASE)

    # When the operator pauses, resumes and cancels it, Then each command says one line
    says_once(run_cli("campaign", "pause", str(campaign_id), database=database), f"campaign {campaign_id} paused")
    says_once(run_cli("campaign", "resume", str(campaign_id), database=database), f"campaign {campaign_id} resumed")
    says_once(run_cli("campaign", "cancel", str(campaign_id), database=database),
              f"campaign {campaign_id} cancelled; 3 unsent customers recorded as cancelled")
    # and the event table keeps what the log said
    from models import Event
    assert [e.code for e in Event.select().order_by(Event.id)] == ["campaign_paused", "campaign_resumed", "campaign_cancelled"]


def test_send_prints_one_line(database):
    campaign_id = make_campaign()
    says_once(run_cli("campaign", "send", str(campaign_id), database=database), f"campaign {campaign_id} started")


def test_status_watch_of_a_finished_campaign_prints_its_report_once_and_nothing_else(database):
    # Given a completed campaign, and stdout not a terminal (a pipe)
    campaign_id = make_campaign()
    Campaign.update(status=CampaignStatus.COMPLETED).where(Campaign.id == campaign_id).execute()

    # When it is watched
    result = run_cli("campaign", "status", str(campaign_id), "--watch", "--interval", "0.1", database=database)

    # Then one report, no escape codes, nothing on stderr
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith(f"Campaign {campaign_id} ") and "\x1b" not in result.stdout
    assert result.stdout.count("Campaign ") == 1


# ------------------------------------------------------------------- the console backend
def test_the_console_backend_prints_the_whole_message_footer_included_in_one_write():
    # (before: only the first line, in a print of several writes)
    # Given the console backend writing to a stream of its own
    stream = Recording()
    backend = ConsoleBackend(stream=stream)

    # When a two-line message is sent
    backend.send(to="+12125550123", body="Hi Ada, your pass: https://x.test/q/ABCD2345\nReply STOP to unsubscribe")

    # Then one write carries all of it, the number masked
    assert len(stream.writes) == 1
    (text,) = stream.writes
    assert "Hi Ada, your pass: https://x.test/q/ABCD2345" in text and "Reply STOP to unsubscribe" in text
    assert "+1******0123" in text and "+12125550123" not in text
    assert text.endswith("\n")


# ----------------------------------------------------------------------------- counters
@pytest.fixture
def registry():
    registry = CollectorRegistry()
    observability.install(registry)
    yield registry
    observability.uninstall()


def test_outcomes_are_counted_by_campaign_and_reason(db, stub_broker, stub_worker, twilio_backend, fake_twilio, registry):
    # Given a campaign of 5 customers, one of whose numbers Twilio refuses (21211)
    make_customers(5)
    fake_twilio.fail_number(phone_for(1), 21211)
    campaign_id = make_campaign()

    # When it is sent
    actors.send_campaign.send(campaign_id)
    join_all(stub_broker)

    # Then the counters say 4 sent and 1 failed with 21211, for this campaign
    def value(outcome: str, reason: str = "") -> float | None:
        return registry.get_sample_value("campaign_sms_messages_total",
                                         {"campaign": str(campaign_id), "outcome": outcome, "reason": reason})

    assert (value("sent"), value("failed", "21211")) == (4.0, 1.0)


def test_label_values_are_bounded():
    # Given the counters' label guards
    registry = CollectorRegistry()
    observability.install(registry)
    try:
        # When more campaigns than the limit, and a reason that is not a code, are counted
        for campaign_id in range(1, observability.MAX_CAMPAIGN_LABELS + 6):
            observability.count_outcome("sent", campaign_id=campaign_id)
        observability.count_outcome("failed", campaign_id=1, reason="Twilio said: no +12125550123")
    finally:
        observability.uninstall()

    # Then the campaigns past the limit are "other", and the free text is "other" too
    series = {tuple(sorted(s.labels.items())): s.value for m in registry.collect() for s in m.samples
              if s.name == "campaign_sms_messages_total"}
    campaigns = {dict(labels)["campaign"] for labels in series}
    assert len(campaigns) == observability.MAX_CAMPAIGN_LABELS + 1 and "other" in campaigns
    assert series[(("campaign", "other"), ("outcome", "sent"), ("reason", ""))] == 5.0
    assert series[(("campaign", "1"), ("outcome", "failed"), ("reason", "other"))] == 1.0
