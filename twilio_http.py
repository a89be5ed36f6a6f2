"""twilio's HTTP client, as the send path uses it: each thread's last ``Retry-After`` kept
(Twilio's signals), and the per-request costs of ``requests`` that do not depend on the
request paid once.

Measured with ``py-spy`` on the four-dyno run of ``bench.throughput`` and with cProfile on
one thread against the fake Twilio, the client spent much of its CPU per message on three
things: ``requests`` looks the proxies up in the environment on every request (it walks
``os.environ`` twice: a quarter of the client's time), it encodes a form given as a dict
through ``typing`` protocol checks that Python 3.11 makes slow, and twilio formats a dozen
log lines per request (the headers among them) even when its logger drops them. Here the
environment's proxies and CA bundle are read once per host (as every setting is read
once), the form is encoded here with the same rules, so ``requests`` is handed a ready
body, and the log lines are made only when the logger would keep them.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from urllib.parse import urlencode, urlsplit

from requests import Session
from twilio.http.http_client import TwilioHttpClient

import twilio_signals

FORM = "application/x-www-form-urlencoded"


class EnvironmentOnceSession(Session):
    """A ``requests`` session that reads the environment's proxies and CA bundle (and
    ``NO_PROXY``) once per scheme and host, not on every request. Settings given to the
    call itself still win, as in ``requests``."""

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[str, dict] = {}
        self._environment_lock = threading.Lock()

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        if not self.trust_env or proxies or verify not in (None, True):
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        where = f"{parts.scheme}://{parts.netloc}"
        found = self._environment.get(where)
        if found is None:
            with self._environment_lock:
                found = self._environment.setdefault(
                    where, super().merge_environment_settings(url, {}, None, None, None))
        return {**found, "proxies": dict(found["proxies"]), "stream": stream if stream is not None else found["stream"],
                "cert": cert if cert is not None else found["cert"]}


def form_body(data) -> str:
    """``data`` (a dict of fields, a value a list for a repeated field) as the
    urlencoded form ``requests`` would make of it: None values left out, text as UTF-8."""
    pairs = []
    for key, value in data.items():
        for one in value if isinstance(value, (list, tuple)) else (value,):
            if one is not None:
                pairs.append((key, one))
    return urlencode(pairs)


class SignalHttpClient(TwilioHttpClient):
    """twilio's HTTP client, keeping each thread's last ``Retry-After`` header (the client's
    exceptions carry the status and the code, not the headers), on an
    ``EnvironmentOnceSession``, with form bodies encoded before ``requests`` sees them and
    twilio's request and answer log lines made only when its logger keeps INFO."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.session = EnvironmentOnceSession()
        self._answers = threading.local()

    def request(self, method, url, params=None, data=None, headers=None, *args, **kwargs):
        if isinstance(data, dict) and headers and headers.get("Content-Type") == FORM:
            data = form_body(data)
        self._answers.retry_after = None
        response = super().request(method, url, params, data, headers, *args, **kwargs)
        answer_headers = getattr(response, "headers", None) or {}
        self._answers.retry_after = answer_headers.get("Retry-After") or answer_headers.get("retry-after")
        return response

    def log_request(self, kwargs) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            super().log_request(kwargs)

    def log_response(self, status_code, response) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            super().log_response(status_code, response)

    def retry_after_s(self) -> float | None:
        """The ``Retry-After`` of this thread's last answer, in seconds (None: none)."""
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        return twilio_signals.retry_after_s(getattr(self._answers, "retry_after", None), now)
