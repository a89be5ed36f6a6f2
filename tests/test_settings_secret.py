"""Issue 13, settings: the auth token cannot be printed by accident. ``settings.Secret`` is
not a ``str``; every way of turning it into text gives ``***``, and the value is read only
through ``reveal()``."""

from __future__ import annotations

import json
import logging
import sys
import traceback

import pytest

from settings import Secret, Settings

TOKEN = "s3cr3t-token-0123456789abcdef"
SID = "AC" + "a" * 32


@pytest.fixture
def token() -> Secret:
    return Settings.from_env({"SMS_BACKEND": "twilio", "TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN,
                              "TWILIO_FROM_NUMBER": "+12125550100"}).twilio_auth_token


def test_the_token_is_a_secret_not_a_string(token):
    assert isinstance(token, Secret) and not isinstance(token, str)
    assert token.reveal() == TOKEN and token.get_secret_value() == TOKEN


def test_str_repr_percent_format_and_fstrings_give_stars(token):
    shown = [str(token), repr(token), "%s" % token, "%r" % (token,), f"{token}", f"{token!s}", f"{token!r}",
             f"{token:>40}", format(token), format(token, "s"), "{}".format(token), "{0!r}".format(token),
             str([token]), str({"token": token}), repr(Settings(twilio_auth_token=TOKEN))]
    for text in shown:
        assert TOKEN not in text and "s3cr3t" not in text, text
    assert str(token) == "***" and repr(token) == "Secret('***')" and f"{token}" == "***"


def test_it_cannot_be_joined_into_text_or_serialised(token):
    with pytest.raises(TypeError):
        "token: " + token  # noqa: B018
    with pytest.raises(TypeError):
        "".join([token])
    with pytest.raises(TypeError):
        json.dumps({"token": token})
    with pytest.raises(AttributeError):
        token.encode()  # what a client would call on a str: hand it ``reveal()``


def test_logging_shows_stars(token, caplog):
    logger = logging.getLogger("test.secret")
    with caplog.at_level(logging.DEBUG, logger="test.secret"):
        logger.info("token %s", token)
        logger.info("token %r", token)
        logger.info("settings %s", Settings(twilio_auth_token=TOKEN))
        logger.info(f"token {token}")
        logger.info("token %(token)s", {"token": token})
        try:
            raise RuntimeError(f"failed with {token}")
        except RuntimeError:
            logger.exception("boom")
    assert len(caplog.records) == 6
    assert TOKEN not in caplog.text and "s3cr3t" not in caplog.text


def test_a_traceback_with_locals_shows_stars(token):
    def fails(auth_token, settings):
        raise ValueError("bad")

    try:
        fails(token, Settings(twilio_auth_token=TOKEN))
    except ValueError:
        text = "".join(traceback.TracebackException(*sys.exc_info(), capture_locals=True).format())
    assert "auth_token = Secret('***')" in text
    assert TOKEN not in text and "s3cr3t" not in text


def test_equality_truth_and_hashing_still_work():
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b") and Secret("a") == "a"
    assert not Secret("") and Secret("x")
    assert str(Secret("")) == "" and repr(Secret("")) == "Secret('')"
    assert hash(Secret("a")) == hash(Secret("a"))
    assert Settings(twilio_auth_token="a") == Settings(twilio_auth_token=Secret("a"))
    assert isinstance(Settings(twilio_auth_token="a").twilio_auth_token, Secret)  # a str given in code is wrapped
    with pytest.raises(TypeError):
        Secret(123)
