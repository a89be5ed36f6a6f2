"""The dashboard's sign-in throttle, through Flask's test client with the real Redis: failed
attempts counted per user name and per client address over a sliding window (the clock
injected), a refusal that says the same whether the name exists or not, nothing reset by
someone else's success, and a Redis that does not answer (sign-in refused, closed)."""

from __future__ import annotations

import uuid

import pytest
import redis

from dashboard.throttle import SignInThrottle, client_address
from errors import ConfigurationError
from models import Event
from settings import Settings
from tests.endpoints import REDIS_URL
from tests.test_dashboard import OPERATOR, PASSWORD, app_for, https_client, token_of

WINDOW_S = 15 * 60
ATTACKER, OFFICE = "203.0.113.66", "198.51.100.7"


class Clock:
    """Epoch seconds that move only when told."""

    def __init__(self, now_s: float = 1_800_000_000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def throttled_app(sqlite_db, stub_broker, clock):
    """The dashboard with its throttle on the test Redis, in a namespace of its own."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    settings = dict(redis_url=REDIS_URL, dramatiq_namespace=namespace)
    throttle = SignInThrottle.from_settings(Settings(**settings), clock=clock)
    yield app_for(**settings, sign_in_throttle=throttle)
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)


class Browser:
    """One client at one address (behind the router, which appends it to X-Forwarded-For)."""

    def __init__(self, app, address: str) -> None:
        self.client = https_client(app)
        self.address = address
        self.token = token_of(self.client.get("/dashboard/sign-in").text)

    def sign_in(self, name: str, password: str):
        return self.client.post("/dashboard/sign-in", data={"csrf_token": self.token, "name": name, "password": password},
                                headers={"X-Forwarded-For": f"10.1.2.3, {self.address}"})


def test_five_failures_for_a_name_refuse_it_with_429_until_the_window_passes_whether_it_exists_or_not(
        throttled_app, clock):
    # Given an attacker trying passwords for the operator's name and for a name nobody has
    attacker = Browser(throttled_app, ATTACKER)
    tries = {name: [attacker.sign_in(name, f"guess {i}").status_code for i in range(5)] for name in (OPERATOR, "nobody")}
    assert tries == {OPERATOR: [401] * 5, "nobody": [401] * 5}

    # When a sixth attempt comes for each, the right password for the operator included
    clock.advance(60)
    known, unknown = attacker.sign_in(OPERATOR, PASSWORD), attacker.sign_in("nobody", "guess 6")

    # Then both are refused alike, 429 with when to try again, the password not even checked
    for answer in (known, unknown):
        assert answer.status_code == 429
        assert "too many failed sign-ins: try again in 14 minutes" in answer.text
        assert answer.headers["Retry-After"] == str(WINDOW_S - 60)
    assert known.text.replace(OPERATOR, "nobody") == unknown.text.replace(OPERATOR, "nobody")
    assert Event.select().where(Event.code == "dashboard_sign_in").count() == 0
    assert attacker.client.get("/dashboard/customers").status_code == 302  # to the sign-in page
    # And once the first failure is 15 minutes old, the right password signs in again
    clock.advance(WINDOW_S - 60)
    assert attacker.sign_in(OPERATOR, PASSWORD).status_code == 302


def test_twenty_failures_from_one_address_refuse_every_name_from_it_but_not_from_elsewhere(throttled_app, clock):
    # Given 20 failed attempts from one address, each for another name
    attacker = Browser(throttled_app, ATTACKER)
    assert {attacker.sign_in(f"user{i}", "guess").status_code for i in range(20)} == {401}

    # When the operator's own name and password are tried from it, and from the office
    from_attacker = attacker.sign_in(OPERATOR, PASSWORD)
    from_office = Browser(throttled_app, OFFICE).sign_in(OPERATOR, PASSWORD)

    # Then only the address is refused: the operator signs in from elsewhere
    assert from_attacker.status_code == 429 and "too many failed sign-ins" in from_attacker.text
    assert from_office.status_code == 302


def test_a_success_from_another_address_does_not_reset_the_count_of_a_name(throttled_app, clock):
    # Given 4 failures for the operator's name from the attacker's address
    attacker, office = Browser(throttled_app, ATTACKER), Browser(throttled_app, OFFICE)
    assert [attacker.sign_in(OPERATOR, f"guess {i}").status_code for i in range(4)] == [401] * 4

    # When the operator signs in from the office, then the attacker tries twice more
    assert office.sign_in(OPERATOR, PASSWORD).status_code == 302
    fifth, sixth = attacker.sign_in(OPERATOR, "guess 5"), attacker.sign_in(OPERATOR, "guess 6")

    # Then the office's success gave the attacker no fresh tries: the fifth fails, the sixth is refused
    assert (fifth.status_code, sixth.status_code) == (401, 429)


def test_a_redis_that_does_not_answer_refuses_sign_in_and_signs_nobody_in(sqlite_db, stub_broker, clock):
    # Given the throttle's Redis at an address where nothing listens
    throttle = SignInThrottle.from_settings(Settings(redis_url="redis://127.0.0.1:1/0"), clock=clock)
    app = app_for(redis_url="redis://127.0.0.1:1/0", sign_in_throttle=throttle)

    # When the operator signs in with the right password
    answer = Browser(app, OFFICE).sign_in(OPERATOR, PASSWORD)

    # Then sign-in is refused in one line naming REDIS_URL (fail closed), with no session
    assert answer.status_code == 503
    assert "sign-in is unavailable: cannot reach REDIS_URL; try again in a minute" in answer.text
    assert Event.select().where(Event.code == "dashboard_sign_in").count() == 0


def test_the_limits_are_settings_with_ranges():
    # Given / When the environment sets the limits, or one out of range
    settings = Settings.from_env({"DASHBOARD_SIGN_IN_FAILURES_PER_NAME": "3", "DASHBOARD_SIGN_IN_FAILURES_PER_ADDRESS": "50",
                                  "DASHBOARD_SIGN_IN_WINDOW_S": "600"})
    # Then they are read once into the settings, and a zero is one line naming it
    assert (settings.dashboard_sign_in_failures_per_name, settings.dashboard_sign_in_failures_per_address,
            settings.dashboard_sign_in_window_s) == (3, 50, 600)
    assert (Settings().dashboard_sign_in_failures_per_name, Settings().dashboard_sign_in_failures_per_address,
            Settings().dashboard_sign_in_window_s) == (5, 20, 900)
    with pytest.raises(ConfigurationError, match="DASHBOARD_SIGN_IN_FAILURES_PER_NAME=0 is out of range"):
        Settings.from_env({"DASHBOARD_SIGN_IN_FAILURES_PER_NAME": "0"})


@pytest.mark.parametrize("forwarded, remote, expected", [
    ("10.1.2.3, 203.0.113.66", "10.0.0.1", "203.0.113.66"),  # the router's own entry, last
    (None, "203.0.113.66", "203.0.113.66"),
    ("2001:db8:1:2:3:4:5:6", "10.0.0.1", "2001:db8:1:2::/64"),  # one IPv6 host holds a /64
    ("not an address", "10.0.0.1", "not an address"),
])
def test_the_client_address_is_the_one_the_router_saw(forwarded, remote, expected):
    assert client_address(forwarded, remote) == expected
