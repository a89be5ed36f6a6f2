"""`make demo` (``python -m cli demo``) and the test set-up: the README's first screen."""

from __future__ import annotations

import os
import subprocess
import sys

import redis

from tests.conftest import POSTGRES_URL, REDIS_URL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo(tmp_path, **env: str) -> subprocess.CompletedProcess:
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}  # a shell's, not the tests' settings
    return subprocess.run([sys.executable, "-m", "cli", "demo"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, env={**base, "PYTHONPATH": ROOT, "REDIS_URL": REDIS_URL, **env})


def test_the_demo_ignores_a_production_namespace_and_twilio_settings(tmp_path, fake_twilio):
    # Given a shell with a production namespace holding queued work, and Twilio configured
    client = redis.Redis.from_url(REDIS_URL)
    client.delete("prod-ns.DQ.default", "prod-ns:default")
    client.rpush("prod-ns:default", "a production message")
    before = set(client.scan_iter("campaign-sms-demo*"))
    try:
        # When the demo runs there
        result = _demo(tmp_path, DRAMATIQ_NAMESPACE="prod-ns", SMS_BACKEND="twilio",
                       TWILIO_ACCOUNT_SID=fake_twilio.account_sid, TWILIO_AUTH_TOKEN=fake_twilio.auth_token,
                       TWILIO_FROM_NUMBER="+12125550100", TWILIO_API_BASE_URL=fake_twilio.base_url)

        # Then it completes on the console backend, texts nobody, leaves the production
        # queue alone and leaves no key of its own behind
        assert result.returncode == 0, result.stderr[-2000:]
        assert "completed" in result.stdout and "SMS backend=console" in result.stdout
        assert fake_twilio.requests == []
        assert client.lrange("prod-ns:default", 0, -1) == [b"a production message"]
        assert set(client.scan_iter("campaign-sms-demo*")) == before
    finally:
        client.delete("prod-ns:default")


def test_one_pair_of_variables_moves_the_tests_the_benches_and_the_fault_cases():
    # Given TEST_POSTGRES_URL and TEST_REDIS_URL pointing elsewhere, and nothing else
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "TEST_"))}
    env.update(TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:5432/elsewhere", TEST_REDIS_URL="redis://127.0.0.1:6379/3",
               PYTHONPATH=ROOT)

    # When the benches' and the tests' settings are read
    out = subprocess.run([sys.executable, "-c", "import bench.common as b, tests.conftest as t; "
                          "print(b.POSTGRES_URL, b.REDIS_URL, t.POSTGRES_URL, t.REDIS_URL)"],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)

    # Then every one of them follows the pair
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["postgresql://postgres@127.0.0.1:5432/elsewhere", "redis://127.0.0.1:6379/3"] * 2
    assert POSTGRES_URL and REDIS_URL
