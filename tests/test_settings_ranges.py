"""Issue 13, settings: every setting has a stated range, checked at start, and a value out
of it is refused with an error naming the variable and the range. Pure: no broker, no
database, except the fan-out at the largest batch size, on both databases."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest

from errors import ConfigurationError
from settings import Settings

#: The values that today's code accepted and that failed later (the issue's list).
FATAL_LATER = [
    ("FANOUT_BATCH_SIZE", "0"),  # a campaign completed with 0 recipients and no event
    ("FANOUT_BATCH_SIZE", "-1"),  # the fan-out crashed on PostgreSQL (LIMIT -1)
    ("SMS_RATE_LIMIT", "0/minute"),  # every dispatch raised ZeroDivisionError
    ("EMAIL_RATE_LIMIT", "0/minute"),
    ("TWILIO_TIMEOUT_S", "nan"),  # every send "maybe sent", nothing reached Twilio
    ("TWILIO_TIMEOUT_S", "inf"),
    ("RECONCILE_AFTER_S", "nan"),
    ("SMS_SEGMENT_PRICE", "inf"),
    ("SWEEP_INTERVAL_S", "0"),  # turned the sweeper off
    ("SMS_MAX_RETRIES", "-1"),
    ("WORKER_MAX_RETRIES", "-1"),
    ("SMS_MIN_BACKOFF_MS", "-5000"),
    ("RATE_LIMIT_MARGIN_MS", "-50"),
    ("RATE_LIMIT_HOLD_MS", "-1"),
    ("RATE_LIMIT_LEAD_MS", "-300"),
    ("METRICS_DELAY_MS", "-1000"),
    ("DRAMATIQ_HEARTBEAT_TIMEOUT_MS", "-1"),
    ("DRAMATIQ_MAINTENANCE_CHANCE", "0"),  # a dead worker's messages never came back
    ("DEFAULT_REGION", "XX"),
    ("DEFAULT_REGION", "us"),  # phonenumbers knows regions in capitals only
    ("SMS_RATE_LIMIT", "10/minute;100/hour"),  # the second limit was silently ignored
    ("ERROR_STORM_WINDOW", "0"),
    ("ERROR_STORM_MIN_ATTEMPTS", "0"),
    ("ERROR_STORM_MIN_ATTEMPTS", "51"),  # above the window of 50: the auto-pause never fired
    ("ERROR_STORM_RATIO", "nan"),
    ("DRAMATIQ_NAMESPACE", "my queues"),
    ("REDIS_TLS_VERIFY", "maybe"),
    ("TWILIO_ACCOUNT_SID", "ACnope"),  # checked whatever the backend, not only with twilio
    ("TWILIO_FROM_NUMBER", "555-0100"),
]


@pytest.mark.parametrize("variable, value", FATAL_LATER)
def test_a_value_out_of_range_is_refused_at_start_naming_the_variable_and_its_range(variable, value):
    with pytest.raises(ConfigurationError) as error:
        Settings.from_env({variable: value})
    from settings_checks import in_words

    reason = error.value.reason
    assert reason.startswith(variable + "=")
    assert in_words(_range(variable)) in reason or "must be at most ERROR_STORM_WINDOW" in reason, reason


def test_every_setting_states_its_range_in_one_short_phrase():
    from settings import ranges

    table = ranges()
    assert set(table) == {f.name.upper() for f in fields(Settings)}
    for variable, phrase in table.items():
        assert phrase and len(phrase) <= 80 and "\n" not in phrase, variable


def _range(variable: str):
    return next(f.metadata["range"] for f in fields(Settings) if f.name.upper() == variable)


def test_a_url_is_masked_only_where_it_holds_a_password():
    from settings import mask_url

    assert mask_url("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("rediss://default:hunter2@h:6380") == "rediss://default:***@h:6380"
    assert mask_url("redis://hunter2@h") == "redis://***@h"  # redis-py sends a lone user part as a credential
    assert mask_url("postgresql://app:p%40ss@db/app?sslmode=require") == "postgresql://app:***@db/app?sslmode=require"
    assert mask_url("postgresql://app@db/app?password=hunter2&sslmode=require") == "postgresql://app@db/app?password=***&sslmode=require"
    assert mask_url("postgresql://app@db/app") == "postgresql://app@db/app"
    assert mask_url("sqlite:////var/data/campaigns.db") == "sqlite:////var/data/campaigns.db"


NUMBERS = [(f.name.upper(), f.type, f.metadata.get("range")) for f in fields(Settings) if f.type in ("int", "float")]


@pytest.mark.parametrize("variable, kind, rng", NUMBERS, ids=[n for n, _k, _r in NUMBERS])
def test_each_number_is_accepted_at_both_ends_of_its_range_and_refused_just_outside(variable, kind, rng):
    # RECONCILE_AFTER_S is also held to twice TWILIO_TIMEOUT_S, and ERROR_STORM_MIN_ATTEMPTS
    # to ERROR_STORM_WINDOW: give those their partner's loosest value.
    partners = {"RECONCILE_AFTER_S": {"TWILIO_TIMEOUT_S": "0.1"}, "ERROR_STORM_MIN_ATTEMPTS": {"ERROR_STORM_WINDOW": "10000"},
                "TWILIO_TIMEOUT_S": {"RECONCILE_AFTER_S": "86400"}, "ERROR_STORM_WINDOW": {"ERROR_STORM_MIN_ATTEMPTS": "1"},
                "FILTERING_STORM_MIN_OUTCOMES": {"FILTERING_STORM_WINDOW": "10000"},
                "FILTERING_STORM_WINDOW": {"FILTERING_STORM_MIN_OUTCOMES": "1"}}
    env = partners.get(variable, {})
    step = 1 if kind == "int" else 0.001
    for value in (rng.low, rng.high):
        if variable in ("ERROR_STORM_RATIO", "FILTERING_STORM_RATIO") and value == 0:
            continue  # (0, 1]: 0 itself is out
        text = str(int(value)) if kind == "int" else repr(float(value))
        assert getattr(Settings.from_env({**env, variable: text}), variable.lower()) == value
    for value in (rng.low - step, rng.high + step) if not variable.endswith("_STORM_RATIO") else (0, 1.001):
        with pytest.raises(ConfigurationError, match=variable):
            Settings.from_env({**env, variable: str(value)})


FLOATS = [f.name.upper() for f in fields(Settings) if f.type == "float"]


@pytest.mark.parametrize("variable", FLOATS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "Infinity"])
def test_nan_and_inf_are_refused_for_every_float(variable, value):
    with pytest.raises(ConfigurationError) as error:
        Settings.from_env({variable: value})
    assert error.value.reason.startswith(variable) and "finite" in error.value.reason


def test_a_number_that_does_not_parse_names_the_variable_and_its_range():
    with pytest.raises(ConfigurationError, match=r"^FANOUT_BATCH_SIZE='1\.5' is not a whole number: must be 1 to 2000$"):
        Settings.from_env({"FANOUT_BATCH_SIZE": "1.5"})
    with pytest.raises(ConfigurationError, match=r"^TWILIO_TIMEOUT_S='soon' is not a number: must be 0\.1 to 30 s$"):
        Settings.from_env({"TWILIO_TIMEOUT_S": "soon"})


def test_the_messages_read_as_one_line_each():
    cases = {
        "FANOUT_BATCH_SIZE": ("0", "FANOUT_BATCH_SIZE=0 is out of range: must be 1 to 2000"),
        "SWEEP_INTERVAL_S": ("0", "SWEEP_INTERVAL_S=0 is out of range: must be 1 to 3600 s"),
        "TWILIO_TIMEOUT_S": ("nan", "TWILIO_TIMEOUT_S=nan is not a finite number: must be 0.1 to 30 s"),
        "DEFAULT_REGION": ("XX", "DEFAULT_REGION='XX' must be a two-letter region code phonenumbers knows, such as 'US' or 'GB'"),
    }
    for variable, (value, message) in cases.items():
        with pytest.raises(ConfigurationError) as error:
            Settings.from_env({variable: value})
        assert error.value.reason == message


@pytest.mark.parametrize("region", ["US", "GB", "DE", "FR", "IN", "BR"])
def test_a_region_that_phonenumbers_knows_is_accepted(region):
    assert Settings.from_env({"DEFAULT_REGION": region}).default_region == region


@pytest.mark.parametrize("limit", ["10/minute", "20 per 2 seconds", "1/hour", "1000000/second", "5 per minute"])
def test_rate_limits_of_at_least_one_per_period_are_accepted(limit):
    assert Settings.from_env({"SMS_RATE_LIMIT": limit, "EMAIL_RATE_LIMIT": limit}).sms_rate_limit == limit


def test_a_url_in_a_message_has_its_password_masked():
    with pytest.raises(ConfigurationError) as error:
        Settings.from_env({"DATABASE_URL": "mysql://app:hunter2@db.example.com/app"})
    assert "hunter2" not in error.value.reason and "mysql://app:***@db.example.com/app" in error.value.reason
    with pytest.raises(ConfigurationError) as error:
        Settings.from_env({"REDIS_URL": "http://:hunter2@redis.example.com"})
    assert "hunter2" not in error.value.reason


def test_validate_checks_settings_built_in_code_too():
    with pytest.raises(ConfigurationError, match="FANOUT_BATCH_SIZE"):
        Settings(fanout_batch_size=0).validate()
    with pytest.raises(ConfigurationError, match="TWILIO_TIMEOUT_S"):
        Settings(twilio_timeout_s=math.nan).validate()
    with pytest.raises(ConfigurationError, match="SMS_MAX_RETRIES"):
        Settings(sms_max_retries=True).validate()  # a bool is not a count
    Settings().validate()


def test_the_largest_fanout_batch_fits_one_insert_on_both_databases(db):
    # The bound of FANOUT_BATCH_SIZE: 15 parameters a row, within PostgreSQL's 65535 and the
    # 32766 of a default SQLite build, in one INSERT.
    import fanout
    from models import Message
    from tests.factories import make_campaign, make_customers

    largest = int(_range("FANOUT_BATCH_SIZE").high)
    make_customers(largest + 1)
    campaign_id = make_campaign()
    result = fanout.fan_out(campaign_id, short_url_base="https://x.test/q", batch_size=largest)
    assert result.recorded == largest + 1
    assert Message.select().where(Message.campaign == campaign_id).count() == largest + 1
