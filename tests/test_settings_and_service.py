"""Settings parsing and the Twilio error mapping: pure, no broker, no database."""

from __future__ import annotations

import logging

import pytest
import requests

from actors import redis_pool
from errors import ConfigurationError, MaybeSent, PermanentError, RecipientOptedOut, SenderError, TransientError
from settings import Settings
from smsservice import classify_transport_error, classify_twilio_error, make_twilio_client

SID = "AC" + "a" * 32
TWILIO_ENV = {"SMS_BACKEND": "twilio", "TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": "s3cr3t-token", "TWILIO_FROM_NUMBER": "+12125550100"}


def test_defaults_need_no_environment():
    settings = Settings.from_env({})
    assert settings.database_url.startswith("sqlite:///")
    assert settings.sms_rate_limit == "10/minute" and settings.email_rate_limit == "100/minute"
    assert settings.rate_limits == {"sms": "10/minute", "email": "100/minute"}


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"SMS_RATE_LIMIT": "ten a minute"}, "SMS_RATE_LIMIT"),
        ({"EMAIL_RATE_LIMIT": "100/fortnight"}, "EMAIL_RATE_LIMIT"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
        ({"TWILIO_TIMEOUT_S": "soon"}, "TWILIO_TIMEOUT_S"),
        ({"TWILIO_TIMEOUT_S": "0"}, "TWILIO_TIMEOUT_S"),
        ({"SMS_BACKEND": "carrier-pigeon"}, "SMS_BACKEND"),
        ({"BROKER": "kafka"}, "BROKER"),
        ({"SHORT_URL_BASE": "example.com/q"}, "SHORT_URL_BASE"),
        ({**TWILIO_ENV, "TWILIO_ACCOUNT_SID": ""}, "TWILIO_ACCOUNT_SID"),
        ({**TWILIO_ENV, "TWILIO_ACCOUNT_SID": "ACnope"}, "TWILIO_ACCOUNT_SID"),
        ({**TWILIO_ENV, "TWILIO_AUTH_TOKEN": ""}, "TWILIO_AUTH_TOKEN"),
        ({**TWILIO_ENV, "TWILIO_FROM_NUMBER": ""}, "TWILIO_FROM_NUMBER"),
        ({**TWILIO_ENV, "TWILIO_FROM_NUMBER": "555-0100"}, "TWILIO_FROM_NUMBER"),
        ({**TWILIO_ENV, "TWILIO_MESSAGING_SERVICE_SID": "MG123"}, "TWILIO_MESSAGING_SERVICE_SID"),
        ({**TWILIO_ENV, "TWILIO_API_BASE_URL": "localhost:8080"}, "TWILIO_API_BASE_URL"),
    ],
)
def test_a_bad_setting_fails_naming_the_variable(env, variable):
    with pytest.raises(ConfigurationError) as error:
        Settings.from_env(env)
    assert variable in error.value.reason


def test_secrets_never_appear_in_reprs():
    settings = Settings.from_env(TWILIO_ENV)
    assert settings.twilio_auth_token.reveal() == "s3cr3t-token"
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(settings)
    assert "s3cr3t" not in repr(settings.twilio_auth_token)


def test_messaging_service_wins_over_from_number():
    settings = Settings.from_env({**TWILIO_ENV, "TWILIO_MESSAGING_SERVICE_SID": "MG" + "b" * 32})
    assert settings.twilio_sender == {"messaging_service_sid": "MG" + "b" * 32}
    assert Settings.from_env(TWILIO_ENV).twilio_sender == {"from_": "+12125550100"}


def test_a_rediss_url_checks_the_certificate_unless_told_not_to():
    # (tests/test_settings_tls.py makes the handshakes with a self-signed server)
    assert redis_pool("rediss://:pw@redis.example.com:6380/0").connection_kwargs["ssl_cert_reqs"] == "required"
    assert redis_pool("rediss://:pw@redis.example.com:6380/0", verify=False).connection_kwargs["ssl_cert_reqs"] == "none"
    assert "ssl_cert_reqs" not in redis_pool("redis://127.0.0.1:6379/0").connection_kwargs


def test_twilio_client_honours_the_local_base_url_despite_edge_and_region(monkeypatch):
    # Given TWILIO_EDGE and TWILIO_REGION in the environment, which rewrite hostnames
    monkeypatch.setenv("TWILIO_EDGE", "sydney")
    monkeypatch.setenv("TWILIO_REGION", "au1")
    settings = Settings(sms_backend="twilio", twilio_account_sid=SID, twilio_auth_token="t",
                        twilio_from_number="+12125550100", twilio_api_base_url="http://127.0.0.1:9/", twilio_timeout_s=2.5)
    client = make_twilio_client(settings)
    # Then the local URL is left as it is, and the timeout is explicit
    assert client.get_hostname("http://127.0.0.1:9/2010-04-01/x") == "http://127.0.0.1:9/2010-04-01/x"
    assert client.api.base_url == "http://127.0.0.1:9"
    assert client.http_client.timeout == 2.5
    assert client.password == "t"  # the token itself, not its '***'
    assert logging.getLogger("twilio.http_client").level >= logging.WARNING


@pytest.mark.parametrize(
    "status, code, kind",
    [
        (400, 21211, PermanentError),
        (400, 21614, PermanentError),
        (400, 21612, PermanentError),
        (400, 21408, PermanentError),
        (400, 21610, RecipientOptedOut),
        (400, 21606, SenderError),
        (400, 21659, SenderError),
        (400, 21212, SenderError),
        (401, 20003, SenderError),
        (429, 20429, TransientError),
        (503, None, MaybeSent),
        (500, 20500, MaybeSent),
        (400, 99999, PermanentError),
    ],
)
def test_twilio_errors_are_mapped_in_one_place(status, code, kind):
    error = classify_twilio_error(status, code, "message")
    assert type(error) is kind
    assert error.code == str(code or status)


def test_transport_errors_separate_never_sent_from_maybe_sent():
    refused = requests.exceptions.ConnectionError("HTTPConnectionPool: Max retries exceeded (NewConnectionError: Connection refused)")
    assert type(classify_transport_error(refused)) is TransientError
    assert type(classify_transport_error(requests.exceptions.ConnectTimeout())) is TransientError
    assert type(classify_transport_error(requests.exceptions.ReadTimeout())) is MaybeSent
    assert type(classify_transport_error(requests.exceptions.ConnectionError("RemoteDisconnected"))) is MaybeSent
