"""Issue 13, settings: the worker fails cleanly. ``dramatiq actors`` (the Procfile's worker)
with a bad setting prints one line naming the variable and exits non-zero; one whose
database or Redis does not answer at start says so, naming DATABASE_URL or REDIS_URL with
the password masked, and exits instead of booting. Importing ``actors`` elsewhere (a shell,
the CLI, the tests) does no I/O, and the demo still falls back to a stub broker.

Each test runs real processes: the ``dramatiq`` command as the Procfile does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import REDIS_URL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "dramatiq")
DRAMATIQ = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "dramatiq"]
WORKER = [*DRAMATIQ, "actors", "--processes", "2", "--threads", "2"]


def clean_env(**settings: str) -> dict[str, str]:
    """A shell's environment (not the tests' settings) plus ``settings``."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return {**base, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1", **settings}


def free_port() -> int:
    """A local port nobody listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess:
    """The worker until it exits by itself; one still running after ``timeout_s`` (it
    booted despite the problem) is stopped and the test fails."""
    proc = subprocess.Popen(WORKER, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the worker was still running after {timeout_s} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(WORKER, proc.returncode, out, err)


def own_lines(stderr: str) -> list[str]:
    """The lines that are not dramatiq's own log lines ("[date] [PID n] ...")."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("[")]


@pytest.mark.parametrize("variable, value", [("FANOUT_BATCH_SIZE", "0"), ("SMS_BACKEND", "carrier-pigeon"),
                                             ("TWILIO_TIMEOUT_S", "nan")])
def test_a_bad_setting_stops_the_worker_with_one_line_naming_it(variable, value, tmp_path):
    result = run_worker(clean_env(**{variable: value}, DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}"))

    # dramatiq's parent exits with its worker's code: 2, dramatiq's "import failed"
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert own_lines(result.stderr) == [own_lines(result.stderr)[0]] and len(own_lines(result.stderr)) == 1, result.stderr
    line = own_lines(result.stderr)[0]
    assert line.startswith(f"configuration error: {variable}=")


def test_a_redis_that_does_not_answer_stops_the_worker_naming_redis_url(tmp_path):
    port = free_port()
    started = time.monotonic()
    result = run_worker(clean_env(BROKER="redis", REDIS_URL=f"redis://:hunter2@127.0.0.1:{port}/0",
                                  DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}"))

    assert result.returncode == 3, result.stderr[-3000:]  # dramatiq's "broker connection failed"
    assert time.monotonic() - started < 30
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    lines = own_lines(result.stderr)
    assert lines and all(line.startswith(f"cannot reach REDIS_URL (redis://:***@127.0.0.1:{port}/0): ") for line in lines), lines
    assert "Connection refused" in lines[0]
    assert "Consumer encountered a connection error" not in result.stderr


def test_a_database_that_does_not_answer_stops_the_worker_naming_database_url():
    port = free_port()
    result = run_worker(clean_env(BROKER="redis", REDIS_URL=REDIS_URL, DRAMATIQ_NAMESPACE=f"test-{uuid.uuid4().hex[:8]}",
                                  DATABASE_URL=f"postgresql://postgres:hunter2@127.0.0.1:{port}/nowhere"))

    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    lines = own_lines(result.stderr)
    assert lines and all(line.startswith(f"cannot reach DATABASE_URL (postgresql://postgres:***@127.0.0.1:{port}/nowhere): ")
                         for line in lines), lines


def test_a_database_file_that_cannot_be_opened_stops_the_worker(tmp_path):
    result = run_worker(clean_env(BROKER="redis", REDIS_URL=REDIS_URL, DRAMATIQ_NAMESPACE=f"test-{uuid.uuid4().hex[:8]}",
                                  DATABASE_URL=f"sqlite:///{tmp_path / 'no-such-dir' / 'w.db'}"))
    assert result.returncode == 3, result.stderr[-3000:]
    assert own_lines(result.stderr)[0] == f"cannot reach DATABASE_URL (sqlite:///{tmp_path}/no-such-dir/w.db): unable to open database file"


def test_a_worker_whose_services_answer_boots_and_stops_cleanly(tmp_path):
    env = clean_env(BROKER="redis", REDIS_URL=REDIS_URL, DRAMATIQ_NAMESPACE=f"test-{uuid.uuid4().hex[:8]}",
                    DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}")
    log = open(tmp_path / "worker.log", "w+")
    proc = subprocess.Popen(WORKER, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while (tmp_path / "worker.log").read_text().count("Worker process is ready for action.") < 2:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # the parent passes it on, as on a dyno's stop
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
    assert proc.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert "cannot reach" not in (tmp_path / "worker.log").read_text()


def test_importing_actors_elsewhere_does_no_io():
    # Given a Redis and a database that accept connections but never answer (a connection
    # to either would show in its backlog)
    with socket.create_server(("127.0.0.1", 0)) as fake_redis, socket.create_server(("127.0.0.1", 0)) as fake_pg:
        fake_redis.settimeout(0)
        fake_pg.settimeout(0)
        env = clean_env(BROKER="redis", REDIS_URL=f"redis://127.0.0.1:{fake_redis.getsockname()[1]}/0",
                        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{fake_pg.getsockname()[1]}/x")

        # When a shell imports actors (as the CLI, the web app and the tests do)
        result = subprocess.run([sys.executable, "-c", "import actors; print(type(actors.broker).__name__)"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

        # Then it gets the broker at once, and nothing was contacted
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip() == "RedisBroker"
        for listener in (fake_redis, fake_pg):
            with pytest.raises(BlockingIOError):
                listener.accept()


def test_the_cli_still_prints_a_bad_setting_in_one_line():
    result = subprocess.run([sys.executable, "-m", "cli", "sweep"], cwd=ROOT, env=clean_env(FANOUT_BATCH_SIZE="0"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["Error: configuration error: FANOUT_BATCH_SIZE=0 is out of range: must be 1 to 2000"]


def test_the_demo_still_falls_back_to_a_stub_broker_when_redis_is_down(tmp_path):
    env = clean_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    result = subprocess.run([sys.executable, "-m", "cli", "demo"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "broker=stub" in result.stdout and "completed" in result.stdout


def test_a_service_that_never_answers_is_reported_after_the_timeout_not_waited_for():
    import threading

    from errors import ServiceUnreachable
    from middleware import Probe, check_reachable

    never = threading.Event()
    started = time.monotonic()
    with pytest.raises(ServiceUnreachable) as error:
        check_reachable([Probe("DATABASE_URL", "postgresql://app:hunter2@10.255.255.1/app", never.wait)], timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert error.value.reason == "cannot reach DATABASE_URL (postgresql://app:***@10.255.255.1/app): no answer within 0.5 s"
    never.set()


def test_a_driver_that_repeats_the_password_has_it_masked():
    from errors import ServiceUnreachable
    from middleware import Probe, check_reachable

    def fails():
        raise OSError("login failed with password hunter2\nsecond line")

    with pytest.raises(ServiceUnreachable) as error:
        check_reachable([Probe("REDIS_URL", "redis://:hunter2@h:6379/0", fails)])
    assert error.value.reason == "cannot reach REDIS_URL (redis://:***@h:6379/0): login failed with password ***"
