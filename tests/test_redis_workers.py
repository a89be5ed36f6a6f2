"""The whole path with real parts: the Redis broker, `dramatiq actors` worker processes,
PostgreSQL, and the real twilio client talking HTTP to the fake Twilio API."""

from __future__ import annotations

import json
import re
import time

import pytest
import redis
from peewee import fn
from dramatiq.brokers.redis import RedisBroker

import actors
import analytics
from models import Campaign, CampaignAnalytics, CampaignStatus, Message, MessageStatus
from segments import measure
from sms import FOOTER
from bench.common import Workers, delete_namespace, worker_env
from tests.conftest import POSTGRES_URL, REDIS_URL
from tests.factories import make_campaign, make_customers, phone_for


def WorkerProcesses(env: dict[str, str], log_path, processes: int = 2, threads: int = 8) -> Workers:
    """``dramatiq actors`` as an operator runs it, in its own process group."""
    return Workers("actors", env, str(log_path), processes=processes, threads=threads)


@pytest.fixture
def redis_env(unique_namespace, fake_twilio):
    yield worker_env(
        fake_twilio, ns=unique_namespace, database_url=POSTGRES_URL,
        REDIS_URL=REDIS_URL, TWILIO_TIMEOUT_S="5", SMS_RATE_LIMIT="100000/second", METRICS_DELAY_MS="200",
    )
    delete_namespace(redis.Redis.from_url(REDIS_URL), unique_namespace)


@pytest.fixture
def redis_broker(redis_env):
    broker = RedisBroker(url=REDIS_URL, namespace=redis_env["DRAMATIQ_NAMESPACE"])
    yield broker
    broker.close()


@pytest.fixture
def workers(redis_env, tmp_path):
    group = WorkerProcesses(redis_env, tmp_path / "workers.log")
    yield group
    group.stop()


def wait_finished(campaign_id: int, workers: WorkerProcesses, timeout_s: float = 120.0) -> Campaign:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        campaign = Campaign.get_by_id(campaign_id)
        if campaign.status in CampaignStatus.FINISHED:
            return campaign
        assert workers.proc.poll() is None, workers.tail(100_000)[-3000:]
        time.sleep(0.25)
    raise AssertionError(f"campaign not finished; counts {analytics.database_counts(campaign_id)}\n{workers.tail(100_000)[-3000:]}")


def test_thousand_customers_two_worker_processes_exactly_once(postgres_db, fake_twilio, redis_broker, workers):
    # Given 1,000 customers of whom 900 are eligible (40 unsubscribed, 30 bad phones, 30 without QR code)
    ineligible_unsub = set(range(0, 1000, 25))
    bad_indexes = [i for i in range(3, 1000, 31) if i not in ineligible_unsub][:30]
    bad = {i: ("12345" if n % 2 else "+1555abc") for n, i in enumerate(bad_indexes)}
    no_qr = set([i for i in range(5, 1000, 29) if i not in ineligible_unsub and i not in bad][:30])
    ids = make_customers(1000, unsubscribed=ineligible_unsub, bad_phones=bad, no_qr=no_qr)
    ineligible = ineligible_unsub | set(bad) | no_qr
    eligible_phones = {phone_for(i) for i in range(1000) if i not in ineligible}
    campaign_id = make_campaign()
    postgres_db.close()

    # When the fan-out is enqueued twice to two worker processes of 8 threads
    redis_broker.enqueue(actors.send_campaign.message(campaign_id))
    redis_broker.enqueue(actors.send_campaign.message(campaign_id))
    postgres_db.connect()
    campaign = wait_finished(campaign_id, workers)

    # Then exactly one message reached Twilio per eligible customer, each one segment with the footer
    assert campaign.status == CampaignStatus.COMPLETED
    sent_to = [m["to"] for m in fake_twilio.messages]
    assert len(sent_to) == len(eligible_phones) == 900
    assert set(sent_to) == eligible_phones
    assert all(m["body"].endswith("\n" + FOOTER) and measure(m["body"]).segments == 1 for m in fake_twilio.messages)
    # And the others are skipped with their reasons
    skipped = dict(
        Message.select(Message.error_code, fn.COUNT(Message.id)).where(Message.status == MessageStatus.SKIPPED)
        .group_by(Message.error_code).tuples()
    )
    assert skipped == {"unsubscribed": len(ineligible_unsub), "invalid_phone": len(bad), "no_qr_code": len(no_qr)}
    # And the analytics equal the database counts
    counts = analytics.database_counts(campaign_id)
    figures = CampaignAnalytics.get(CampaignAnalytics.campaign == campaign_id)
    assert counts == {"sent": len(eligible_phones), "skipped": len(ineligible)}
    assert (figures.targeted, figures.sent, figures.skipped, figures.failed) == (1000, counts["sent"], counts["skipped"], 0)
    assert json.loads(figures.skipped_by_reason) == skipped
    # And every sent row carries the SID Twilio returned
    sids = {m["sid"] for m in fake_twilio.messages}
    assert {m.twilio_sid for m in Message.select().where(Message.status == MessageStatus.SENT)} == sids
    # And the workers logged no full phone number and no traceback
    output = workers.tail(100_000)
    assert "Traceback" not in output
    assert not re.search(r"\+1212\d{7}", output)
    assert len(ids) == 1000


def test_prometheus_exports_dramatiq_and_project_counters(postgres_db, fake_twilio, redis_env, redis_broker, tmp_path):
    # Given workers started with PROMETHEUS=on
    import socket

    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(redis_env, PROMETHEUS="on", dramatiq_prom_port=str(port), dramatiq_prom_host="127.0.0.1",
               dramatiq_prom_db=str(tmp_path / "prom"))
    make_customers(12, unsubscribed={0})
    campaign_id = make_campaign()
    postgres_db.close()
    group = WorkerProcesses(env, tmp_path / "prom-workers.log", processes=1, threads=4)
    try:
        # When a campaign runs
        redis_broker.enqueue(actors.send_campaign.message(campaign_id))
        postgres_db.connect()
        wait_finished(campaign_id, group)
        # Then the exposition server reports Dramatiq's counters and ours
        deadline = time.monotonic() + 10
        text = ""
        expected = f'campaign_sms_messages_total{{campaign="{campaign_id}",outcome="sent",reason=""}} 11.0'
        while time.monotonic() < deadline and expected not in text:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except requests.RequestException:
                pass
            time.sleep(0.3)
        assert expected in text  # labelled by campaign (issue 15)
        assert "dramatiq_messages_total" in text
    finally:
        group.stop()
