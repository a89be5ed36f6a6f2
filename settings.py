"""Twelve-factor settings: the environment is read once into one immutable object.

Nothing here does I/O; ``get_settings()`` parses on first use and caches, so importing this
module never fails. Every setting has a stated range (``settings_checks.Range``, in the
field's metadata), checked by ``Settings.validate`` (``from_env`` calls it): a missing,
malformed or out-of-range variable raises ``ConfigurationError`` naming it and its range,
which the worker, the CLI and the demo show at start in one line. The auth token is a
``Secret``, which prints as ``***`` wherever it goes.
"""

from __future__ import annotations

import functools
import hmac
import os
from dataclasses import dataclass, field, fields
from typing import Mapping

from errors import ConfigurationError
from prices import prices_ok
from settings_checks import (
    RATE_LIMIT, Range, check, choice, dashboard_users_ok, e164_ok, mask_url, namespace_ok, number, parse_number, quiet_hours_ok,
    rate_limit_ok, region_ok, sid_ok, text, url, zone_ok,
)

DEFAULT_DATABASE_URL = "sqlite:///campaigns.db"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BROKERS = ("redis", "stub")
SMS_BACKENDS = ("twilio", "console", "null")
DATABASE_SCHEMES = ("sqlite", "postgres", "postgresql", "postgres+pool", "postgresql+pool")
__all__ = ["ConfigurationError", "Secret", "Settings", "get_settings", "mask_url", "ranges"]


class Secret:
    """A credential that cannot be printed by accident.

    Not a ``str``: ``str()``, ``repr()``, ``%s``, f-strings, ``format()`` and logging all give
    ``***`` (a traceback's locals show ``Secret('***')``), ``json.dumps`` and string
    concatenation refuse it, and the value is read only through ``reveal()`` (alias
    ``get_secret_value()``, as in pydantic), at the one place that hands it to a client.
    """

    __slots__ = ("_value",)

    def __init__(self, value: "str | Secret" = "") -> None:
        if isinstance(value, Secret):
            value = value._value
        if not isinstance(value, str):
            raise TypeError(f"a Secret holds a str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        return self._value

    get_secret_value = reveal

    def __bool__(self) -> bool:
        return bool(self._value)

    def __str__(self) -> str:
        return "***" if self._value else ""

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __eq__(self, other) -> bool:
        if isinstance(other, Secret):
            other = other._value
        if not isinstance(other, str):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))


def setting(default, rng: Range, *, repr: bool = True):
    """A field with its stated range (read by ``validate`` and by ``ranges()``)."""
    return field(default=default, repr=repr, metadata={"range": rng})


HTTP = ("http", "https")
SECONDS = "s"


@dataclass(frozen=True)
class Settings:
    database_url: str = setting(DEFAULT_DATABASE_URL, url(*DATABASE_SCHEMES, phrase="a `sqlite:///path` or `postgresql://` URL"))
    redis_url: str = setting(DEFAULT_REDIS_URL, url("redis", "rediss", "unix", phrase="a `redis://`, `rediss://` or `unix://` URL"))
    #: Check the certificate of a ``rediss://`` server (``off`` for a self-signed one, e.g. Heroku's).
    redis_tls_verify: str = setting("on", choice("on", "off"))
    broker: str = setting("redis", choice(*BROKERS))
    dramatiq_namespace: str = setting("dramatiq", text("1 to 64 letters, digits, `.`, `_`, `:` or `-`", namespace_ok))
    twilio_account_sid: str = setting("", text("`AC` and 32 hex digits", sid_ok("AC"), optional=True))
    twilio_auth_token: Secret = setting(Secret(""), Range("any text (required with `SMS_BACKEND=twilio`)"), repr=False)
    twilio_from_number: str = setting("", text("an E.164 number such as `+12125550100`", e164_ok, optional=True))
    twilio_messaging_service_sid: str = setting("", text("`MG` and 32 hex digits", sid_ok("MG"), optional=True))
    twilio_api_base_url: str = setting("", url(*HTTP, phrase="an http(s) URL", optional=True))
    twilio_status_callback_url: str = setting("", url(*HTTP, phrase="an http(s) URL", optional=True))
    twilio_timeout_s: float = setting(10.0, number(0.1, 30, SECONDS))
    #: Twilio's ``ValidityPeriod`` of every message (less when the recipient's quiet hours start sooner).
    sms_validity_period_s: int = setting(14_400, number(1, 36_000, SECONDS))
    #: A 429's ``Retry-After`` holds every send that long, at most this long.
    twilio_retry_after_max_s: int = setting(60, number(1, 3_600, SECONDS))
    #: Requests in flight to Twilio at once, across every worker process and dyno (``twilio_permits.py``).
    twilio_max_concurrent: int = setting(100, number(1, 10_000))
    #: Database connections per process, whatever its threads (a pool; threads waiting on Twilio hold none).
    database_max_connections: int = setting(8, number(1, 100))
    sms_backend: str = setting("console", choice(*SMS_BACKENDS))
    short_url_base: str = setting("http://localhost:8000/q", url(*HTTP, phrase="an http(s) URL"))
    public_base_url: str = setting("", url(*HTTP, phrase="an http(s) URL", optional=True))
    #: ``{code}`` is checked in ``validate``.
    qr_display_url: str = setting("http://localhost:8000/qr/{code}", url(*HTTP, phrase="an http(s) URL containing `{code}`"))
    default_region: str = setting("US", text("a two-letter region code phonenumbers knows, such as `US` or `GB`", region_ok))
    quiet_hours: str = setting("21:00-08:00", text("`HH:MM-HH:MM` (local time) or `off`", quiet_hours_ok))
    default_time_zone: str = setting("America/New_York", text("an IANA time zone such as `America/New_York`", zone_ok))
    sms_segment_price: float = setting(0.0079, number(0, 10))
    #: The price of a segment to other countries than the US: ``FR=0.0725,GB=0.04,*=0.05``.
    sms_prices: str = setting("", text("`COUNTRY=PRICE` entries separated by commas, e.g. `FR=0.0725,GB=0.04`",
                                       prices_ok, optional=True))
    sms_rate_limit: str = setting("10/minute", text(RATE_LIMIT, rate_limit_ok))
    email_rate_limit: str = setting("100/minute", text(RATE_LIMIT, rate_limit_ok))
    rate_limit_margin_ms: int = setting(5, number(0, 10_000, "ms"))
    #: ``fastest``: a rate-limit unit is held until a window after the request's answer less
    #: the fastest answer the process has timed (see ``ratelimit``; or ``TWILIO_TIMEOUT_S``
    #: after its slot until answered); ``answer``: a window after the answer itself;
    #: ``slot``: a window after the slot plus ``RATE_LIMIT_MARGIN_MS`` (the design before
    #: issue 18, for comparison).
    rate_limit_bound: str = setting("fastest", choice("fastest", "answer", "slot"))
    rate_limit_hold_ms: int = setting(500, number(0, 60_000, "ms"))
    rate_limit_lead_ms: int = setting(300, Range("0 to 60000 ms (used up to `RATE_LIMIT_HOLD_MS`)", low=0, high=60_000))
    worker_max_retries: int = setting(5, number(0, 100))
    reconcile_after_s: float = setting(30.0, Range("2 × `TWILIO_TIMEOUT_S` to 86400 s", low=0.2, high=86_400))
    requeue_after_s: float = setting(1200.0, number(1, 86_400, SECONDS))
    sweep_interval_s: float = setting(60.0, number(1, 3_600, SECONDS))
    sweep_stale_after_s: float = setting(60.0, number(1, 86_400, SECONDS))
    sms_max_retries: int = setting(10, number(1, 100))
    sms_min_backoff_ms: int = setting(5_000, number(100, 900_000, "ms"))
    error_storm_window: int = setting(50, number(1, 10_000))
    error_storm_min_attempts: int = setting(20, Range("1 to `ERROR_STORM_WINDOW`", low=1, high=10_000))
    error_storm_ratio: float = setting(0.8, Range("above 0, up to 1", low=0, high=1))
    #: A spike of carrier filtering (30007) pauses the campaign: at least ``FILTERING_STORM_RATIO``
    #: of its last ``FILTERING_STORM_WINDOW`` outcomes (delivery reports and refusals), once
    #: ``FILTERING_STORM_MIN_OUTCOMES`` are in.
    filtering_storm_window: int = setting(50, number(1, 10_000))
    filtering_storm_min_outcomes: int = setting(20, Range("1 to `FILTERING_STORM_WINDOW`", low=1, high=10_000))
    filtering_storm_ratio: float = setting(0.2, Range("above 0, up to 1", low=0, high=1))
    prometheus: str = setting("off", choice("on", "off"))
    dramatiq_heartbeat_timeout_ms: int = setting(60_000, number(1_000, 3_600_000, "ms"))
    dramatiq_maintenance_chance: int = setting(1000, number(1, 1_000_000))
    metrics_delay_ms: int = setting(1000, number(10, 600_000, "ms"))
    #: Skip numbers any other campaign texted in the last this many hours (0: no cap); a
    #: campaign's own ``--frequency-cap`` wins.
    frequency_cap_h: int = setting(0, number(0, 8_760, "h"))
    fanout_batch_size: int = setting(500, number(1, 2_000))
    #: The answer to HELP / INFO / AIDE when Twilio's Advanced Opt-Out does not answer them;
    #: empty: the language's own (``languages.py``).
    sms_help_reply: str = setting("", text("1 to 320 characters (empty: the language's own reply)",
                                           lambda v: 0 < len(v) <= 320, optional=True))
    #: The dashboard's operators (``dashboard/accounts.py``): ``name:<hash>`` entries separated by
    #: commas, each hash made by ``python -m cli dashboard hash-password``.
    dashboard_users: str = setting("", text("`name:<hash>` entries separated by commas (see `cli dashboard hash-password`)",
                                            dashboard_users_ok, optional=True, hidden=True), repr=False)
    #: Signs the dashboard's session cookies; without it the dashboard is not served.
    dashboard_secret_key: Secret = setting(Secret(""), Range("at least 32 characters (empty: no dashboard)"), repr=False)
    #: Failed sign-ins within ``DASHBOARD_SIGN_IN_WINDOW_S`` after which further attempts for
    #: that user name, or from that client address, are refused (``dashboard/throttle.py``).
    dashboard_sign_in_failures_per_name: int = setting(5, number(1, 1_000))
    dashboard_sign_in_failures_per_address: int = setting(20, number(1, 100_000))
    dashboard_sign_in_window_s: int = setting(900, number(1, 86_400, SECONDS))

    def __post_init__(self) -> None:
        for name in ("twilio_auth_token", "dashboard_secret_key"):
            if not isinstance(getattr(self, name), Secret):
                object.__setattr__(self, name, Secret(getattr(self, name)))

    @property
    def rate_limits(self) -> dict[str, str]:
        return {"sms": self.sms_rate_limit, "email": self.email_rate_limit}

    @property
    def twilio_sender(self) -> dict[str, str]:
        """The one sender field Twilio accepts: a messaging service wins over a number."""
        if self.twilio_messaging_service_sid:
            return {"messaging_service_sid": self.twilio_messaging_service_sid}
        return {"from_": self.twilio_from_number}

    @property
    def sender(self) -> str | None:
        """The default sender of a new campaign (``senders.py``): a messaging service wins
        over a number; None when neither is set."""
        return self.twilio_messaging_service_sid or self.twilio_from_number or None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _convert(f.name.upper(), raw.strip(), f)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Every setting within its range, then the rules that tie two settings together."""
        for f in fields(self):
            check(f.name.upper(), f.type, getattr(self, f.name), f.metadata["range"])
        if "{code}" not in self.qr_display_url:
            raise ConfigurationError("QR_DISPLAY_URL must contain {code}, e.g. https://example.com/qr/{code}")
        if self.error_storm_ratio <= 0:
            raise ConfigurationError(f"ERROR_STORM_RATIO={self.error_storm_ratio!r} is out of range: must be above 0, up to 1")
        if self.reconcile_after_s < 2 * self.twilio_timeout_s:
            raise ConfigurationError(
                "RECONCILE_AFTER_S must be at least twice TWILIO_TIMEOUT_S (the timeout bounds the connect and each "
                "read separately), or a request still in flight could be sent twice"
            )
        if self.error_storm_min_attempts > self.error_storm_window:
            raise ConfigurationError(
                f"ERROR_STORM_MIN_ATTEMPTS={self.error_storm_min_attempts} is out of range: must be at most "
                f"ERROR_STORM_WINDOW ({self.error_storm_window}), or the auto-pause could never trigger"
            )
        if self.dashboard_secret_key and len(self.dashboard_secret_key.reveal()) < 32:
            raise ConfigurationError("DASHBOARD_SECRET_KEY must be at least 32 characters (e.g. python -c "
                                     "'import secrets; print(secrets.token_urlsafe(32))')")
        if self.filtering_storm_ratio <= 0:
            raise ConfigurationError(
                f"FILTERING_STORM_RATIO={self.filtering_storm_ratio!r} is out of range: must be above 0, up to 1")
        if self.filtering_storm_min_outcomes > self.filtering_storm_window:
            raise ConfigurationError(
                f"FILTERING_STORM_MIN_OUTCOMES={self.filtering_storm_min_outcomes} is out of range: must be at most "
                f"FILTERING_STORM_WINDOW ({self.filtering_storm_window}), or the auto-pause could never trigger"
            )
        if self.sms_backend == "twilio":
            self._validate_twilio()

    def _validate_twilio(self) -> None:
        if not self.twilio_account_sid:
            raise ConfigurationError("TWILIO_ACCOUNT_SID is required when SMS_BACKEND=twilio")
        if not sid_ok("AC")(self.twilio_account_sid):
            raise ConfigurationError("TWILIO_ACCOUNT_SID must look like 'AC' followed by 32 hex digits")
        if not self.twilio_auth_token:
            raise ConfigurationError("TWILIO_AUTH_TOKEN is required when SMS_BACKEND=twilio")
        if self.twilio_messaging_service_sid:
            if not sid_ok("MG")(self.twilio_messaging_service_sid):
                raise ConfigurationError("TWILIO_MESSAGING_SERVICE_SID must look like 'MG' followed by 32 hex digits")
        elif not self.twilio_from_number:
            raise ConfigurationError("TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID is required when SMS_BACKEND=twilio")
        elif not e164_ok(self.twilio_from_number):
            raise ConfigurationError("TWILIO_FROM_NUMBER must be an E.164 number such as +12125550100")


def _convert(name: str, raw: str, f):
    if f.type in ("int", "float"):
        return parse_number(name, raw, f.type, f.metadata["range"])
    if f.type == "Secret":
        return Secret(raw)
    return raw


def ranges() -> dict[str, str]:
    """Each variable's range in one phrase (the README's settings table)."""
    return {f.name.upper(): f.metadata["range"].phrase for f in fields(Settings)}


@functools.cache
def get_settings() -> Settings:
    """The process's settings, parsed from ``os.environ`` on first use."""
    return Settings.from_env()
