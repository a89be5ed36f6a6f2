"""Twelve-factor settings: the environment is read once into one immutable object.

Nothing here does I/O; ``get_settings()`` parses on first use and caches, so importing this
module never fails. A missing or malformed variable raises ``ConfigurationError`` naming it,
which the worker, the CLI and the demo show at start. Secrets never appear in reprs.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field, fields
from typing import Mapping
from urllib.parse import urlsplit

from limits import parse as parse_limit

from errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///campaigns.db"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BROKERS = ("redis", "stub")
SMS_BACKENDS = ("twilio", "console", "null")
_SID = re.compile(r"^(AC|MG)[0-9a-fA-F]{32}$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class Secret(str):
    """A string that never shows itself in a repr, a log line or a traceback's locals."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    broker: str = "redis"
    dramatiq_namespace: str = "dramatiq"
    twilio_account_sid: str = ""
    twilio_auth_token: Secret = field(default=Secret(""), repr=False)
    twilio_from_number: str = ""
    twilio_messaging_service_sid: str = ""
    twilio_api_base_url: str = ""
    twilio_status_callback_url: str = ""
    twilio_timeout_s: float = 10.0
    sms_backend: str = "console"
    short_url_base: str = "http://localhost:8000/q"
    public_base_url: str = ""
    qr_display_url: str = "http://localhost:8000/qr/{code}"
    default_region: str = "US"
    quiet_hours: str = "21:00-08:00"
    default_time_zone: str = "America/New_York"
    sms_segment_price: float = 0.0079
    sms_rate_limit: str = "10/minute"
    email_rate_limit: str = "100/minute"
    rate_limit_margin_ms: int = 50
    rate_limit_hold_ms: int = 500
    rate_limit_lead_ms: int = 300
    worker_max_retries: int = 5
    reconcile_after_s: float = 30.0
    requeue_after_s: float = 1200.0
    sweep_interval_s: float = 60.0
    sweep_stale_after_s: float = 60.0
    sms_max_retries: int = 10
    sms_min_backoff_ms: int = 5_000
    error_storm_window: int = 50
    error_storm_min_attempts: int = 20
    error_storm_ratio: float = 0.8
    prometheus: str = "off"
    dramatiq_heartbeat_timeout_ms: int = 60_000
    dramatiq_maintenance_chance: int = 1000
    metrics_delay_ms: int = 1000
    fanout_batch_size: int = 500

    @property
    def rate_limits(self) -> dict[str, str]:
        return {"sms": self.sms_rate_limit, "email": self.email_rate_limit}

    @property
    def twilio_sender(self) -> dict[str, str]:
        """The one sender field Twilio accepts: a messaging service wins over a number."""
        if self.twilio_messaging_service_sid:
            return {"messaging_service_sid": self.twilio_messaging_service_sid}
        return {"from_": self.twilio_from_number}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _convert(f.name.upper(), raw.strip(), f.type)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        _check_url("DATABASE_URL", self.database_url, ("sqlite", "postgres", "postgresql", "postgres+pool", "postgresql+pool"))
        _check_url("REDIS_URL", self.redis_url, ("redis", "rediss", "unix"))
        _check_choice("BROKER", self.broker, BROKERS)
        _check_choice("SMS_BACKEND", self.sms_backend, SMS_BACKENDS)
        _check_choice("PROMETHEUS", self.prometheus, ("on", "off"))
        for name in ("SMS_RATE_LIMIT", "EMAIL_RATE_LIMIT"):
            value = getattr(self, name.lower())
            try:
                parse_limit(value)
            except ValueError:
                raise ConfigurationError(f"{name}={value!r} is not a rate limit such as '10/minute' or '20 per 2 seconds'") from None
        if self.reconcile_after_s < 2 * self.twilio_timeout_s:
            raise ConfigurationError(
                "RECONCILE_AFTER_S must be at least twice TWILIO_TIMEOUT_S (the timeout bounds the connect and each "
                "read separately), or a request still in flight could be sent twice"
            )
        if self.quiet_hours and self.quiet_hours.lower() != "off":
            from quiet import QuietHours, zone

            try:
                QuietHours.parse(self.quiet_hours)
            except ValueError:
                raise ConfigurationError(f"QUIET_HOURS={self.quiet_hours!r} must look like '21:00-08:00' (or 'off')") from None
            if zone(self.default_time_zone) is None:
                raise ConfigurationError(f"DEFAULT_TIME_ZONE={self.default_time_zone!r} is not an IANA time zone such as 'America/New_York'")
        if not 0 < self.error_storm_ratio <= 1:
            raise ConfigurationError("ERROR_STORM_RATIO must be a fraction in (0, 1]")
        if self.twilio_timeout_s <= 0:
            raise ConfigurationError("TWILIO_TIMEOUT_S must be a positive number of seconds")
        if self.twilio_api_base_url:
            _check_url("TWILIO_API_BASE_URL", self.twilio_api_base_url, ("http", "https"))
        if self.twilio_status_callback_url:
            _check_url("TWILIO_STATUS_CALLBACK_URL", self.twilio_status_callback_url, ("http", "https"))
        _check_url("SHORT_URL_BASE", self.short_url_base, ("http", "https"))
        if self.public_base_url:
            _check_url("PUBLIC_BASE_URL", self.public_base_url, ("http", "https"))
        _check_url("QR_DISPLAY_URL", self.qr_display_url, ("http", "https"))
        if "{code}" not in self.qr_display_url:
            raise ConfigurationError("QR_DISPLAY_URL must contain {code}, e.g. https://example.com/qr/{code}")
        if self.sms_backend == "twilio":
            self._validate_twilio()

    def _validate_twilio(self) -> None:
        if not self.twilio_account_sid:
            raise ConfigurationError("TWILIO_ACCOUNT_SID is required when SMS_BACKEND=twilio")
        if not _SID.match(self.twilio_account_sid) or not self.twilio_account_sid.startswith("AC"):
            raise ConfigurationError("TWILIO_ACCOUNT_SID must look like 'AC' followed by 32 hex digits")
        if not self.twilio_auth_token:
            raise ConfigurationError("TWILIO_AUTH_TOKEN is required when SMS_BACKEND=twilio")
        if self.twilio_messaging_service_sid:
            if not _SID.match(self.twilio_messaging_service_sid) or not self.twilio_messaging_service_sid.startswith("MG"):
                raise ConfigurationError("TWILIO_MESSAGING_SERVICE_SID must look like 'MG' followed by 32 hex digits")
        elif not self.twilio_from_number:
            raise ConfigurationError("TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID is required when SMS_BACKEND=twilio")
        elif not _E164.match(self.twilio_from_number):
            raise ConfigurationError("TWILIO_FROM_NUMBER must be an E.164 number such as +12125550100")


def _convert(name: str, raw: str, type_name: str):
    try:
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a valid {type_name}") from None
    if type_name == "Secret":
        return Secret(raw)
    return raw


def _check_url(name: str, value: str, schemes: tuple[str, ...]) -> None:
    scheme = urlsplit(value).scheme
    if scheme not in schemes:
        raise ConfigurationError(f"{name} must be a URL with one of the schemes {', '.join(schemes)} (got scheme {scheme!r})")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigurationError(f"{name}={value!r} must be one of {', '.join(choices)}")


@functools.cache
def get_settings() -> Settings:
    """The process's settings, parsed from ``os.environ`` on first use."""
    return Settings.from_env()
