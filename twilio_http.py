"""twilio's HTTP client, as the send path uses it: twilio's own ``Client`` over a lean
transport on ``urllib3``, keeping each thread's last ``Retry-After`` (Twilio's signals).

twilio hands its HTTP client the method, the URL, the fields and the headers
(``twilio.http.HttpClient``: the documented seam for a custom client). Its default client
goes through ``requests``, which, measured with ``py-spy --gil`` on the four-dyno run of
``bench.throughput``, took about two thirds of a worker's CPU per message spent in twilio:
a ``Request`` prepared, merged with the session's settings, cookies extracted into a jar,
the environment's proxies looked up on every request. This client sends the same bytes
with ``urllib3`` (which ``requests`` itself sends with) and nothing else:
- the form and the query string encoded as ``requests`` encodes them (``form_body``), the
  headers ``requests`` adds to every request (``Accept-Encoding``, ``Connection``) added
  where twilio's do not name them;
- one ``urllib3.Timeout`` of ``timeout`` s for the connect and for each read, as
  ``requests`` applies a single number; no retries, no redirects (twilio asks for none);
- the environment's proxies (``HTTP(S)_PROXY``, ``NO_PROXY``) and CA bundle
  (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, else certifi's, as ``requests``; a file or a
  directory of hashed certificates) read once per scheme and host; a proxy used as
  ``requests`` uses it (``http://`` when its URL names no scheme, the user and password in
  its URL sent as ``Proxy-Authorization``);
- urllib3's exceptions raised as the ``requests`` exceptions that ``requests`` raises for
  them (``transport_error``), so that ``smsservice.classify_transport_error`` tells a
  request that never left from one that may have been sent, whichever client is used.
twilio's request and answer log lines are made only when its logger keeps INFO.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import threading
from urllib.parse import urlencode, urlsplit

import certifi
import requests.exceptions as rex
import urllib3
from requests.utils import (default_headers, get_auth_from_url, get_environ_proxies, prepend_scheme_if_needed,
                            select_proxy)
from twilio.http import HttpClient
from twilio.http.response import Response
from urllib3 import exceptions as u3

import twilio_signals

FORM = "application/x-www-form-urlencoded"
JSON_TYPES = ("application/json", "application/scim+json")

_logger = logging.getLogger("twilio.http_client")
#: A requests Session's own headers, which each request's own (twilio's) override.
SESSION_HEADERS = tuple(default_headers().items())


def form_body(data) -> str:
    """``data`` (a dict of fields, a value a list for a repeated field) as the
    urlencoded form ``requests`` would make of it: None values left out, text as UTF-8."""
    pairs = []
    for key, value in data.items():
        for one in value if isinstance(value, (list, tuple)) else (value,):
            if one is not None:
                pairs.append((key, one))
    return urlencode(pairs)


def with_session_headers(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` with a ``requests`` session's own added where they name none of them
    (names compared ignoring case, as ``requests`` merges them)."""
    given = {name.lower() for name in headers}
    return {**{k: v for k, v in SESSION_HEADERS if k.lower() not in given}, **headers}


def basic_auth(username: str, password: str) -> str:
    """An ``Authorization`` (or ``Proxy-Authorization``) value, as ``requests`` makes it."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode("latin-1")).decode()


def proxy_manager(proxy: str, **options) -> urllib3.ProxyManager:
    """A pool through ``proxy`` (a URL with a scheme, as ``prepend_scheme_if_needed`` makes
    it), its user and password given to the proxy as ``requests.adapters.HTTPAdapter``
    gives them (urllib3 itself would drop them). ``options``: the pools' own."""
    username, password = get_auth_from_url(proxy)
    headers = {"Proxy-Authorization": basic_auth(username, password)} if username else {}
    return urllib3.ProxyManager(proxy, proxy_headers=headers, **options)


def transport_error(exc: Exception) -> rex.RequestException:
    """The ``requests`` exception ``requests.adapters.HTTPAdapter`` raises for urllib3's
    ``exc`` (sent without retries). A refused or unresolved connection stays a
    ``ConnectionError`` naming ``NewConnectionError``; a connect timeout is
    ``ConnectTimeout``; a read timeout ``ReadTimeout``; anything else after the connect (a
    dropped connection, a broken answer) a ``ConnectionError``."""
    if isinstance(exc, u3.ProxyError):
        return rex.ProxyError(exc)
    if isinstance(exc, u3.NewConnectionError):
        return rex.ConnectionError(exc)
    if isinstance(exc, u3.ConnectTimeoutError):
        return rex.ConnectTimeout(exc)
    if isinstance(exc, u3.SSLError):
        return rex.SSLError(exc)
    if isinstance(exc, u3.ReadTimeoutError):
        return rex.ReadTimeout(exc)
    return rex.ConnectionError(exc)


class SignalHttpClient(HttpClient):
    """twilio's HTTP client on a ``urllib3`` pool, keeping each thread's last
    ``Retry-After`` header (the client's exceptions carry the status and the code, not the
    headers).

    Parameters:
        timeout: seconds for the connect and for each read (twilio's ``timeout``).
        pool_maxsize: connections kept per host; more requests at once open more
            connections, which are closed when they end.
        logger: twilio's request and answer log lines, made only when it keeps INFO.
    """

    def __init__(self, *, timeout: float | None = None, pool_maxsize: int = 32,
                 logger: logging.Logger = _logger) -> None:
        super().__init__(logger, False, timeout)
        self.pool_maxsize = pool_maxsize
        self._pools: dict[str | None, urllib3.PoolManager] = {}
        self._proxy_for: dict[str, str | None] = {}
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
        # A directory (c_rehash's layout) is ca_cert_dir, as requests.adapters.HTTPAdapter.cert_verify.
        self._trust = {"ca_cert_dir": bundle} if os.path.isdir(bundle) else {"ca_certs": bundle}
        self._lock = threading.Lock()
        self._answers = threading.local()

    def _pool(self, url: str) -> urllib3.PoolManager:
        parts = urlsplit(url)
        where = f"{parts.scheme}://{parts.netloc}"
        if where not in self._proxy_for:
            with self._lock:
                proxy = select_proxy(url, get_environ_proxies(url))
                self._proxy_for[where] = prepend_scheme_if_needed(proxy, "http") if proxy else None
        proxy = self._proxy_for[where]
        pool = self._pools.get(proxy)
        if pool is None:
            with self._lock:
                pool = self._pools.get(proxy)
                if pool is None:
                    options = {"maxsize": self.pool_maxsize, "retries": False, "cert_reqs": "CERT_REQUIRED",
                               **self._trust}
                    pool = proxy_manager(proxy, **options) if proxy else urllib3.PoolManager(**options)
                    self._pools[proxy] = pool
        return pool

    def request(self, method, url, params=None, data=None, headers=None, auth=None, timeout=None,
                allow_redirects=False) -> Response:
        if timeout is None:
            timeout = self.timeout
        elif timeout <= 0:
            raise ValueError(timeout)
        method = method.upper()
        headers = dict(headers or {})
        if self.logger.isEnabledFor(logging.INFO):
            self.log_request({"method": method, "url": url, "params": params, "headers": headers})
        if params:
            url = f"{url}{'&' if urlsplit(url).query else '?'}{form_body(params)}"
        body = None
        if data:
            if headers.get("Content-Type") in JSON_TYPES:
                body = json.dumps(data).encode()
            else:
                body = (form_body(data) if isinstance(data, dict) else data)
                body = body.encode() if isinstance(body, str) else body
        headers = with_session_headers(headers)
        if auth is not None:
            headers["Authorization"] = basic_auth(auth[0], auth[1])
        self._answers.retry_after = None
        try:
            answer = self._pool(url).request(
                method, url, body=body, headers=headers, redirect=allow_redirects,
                timeout=None if timeout is None else urllib3.Timeout(connect=timeout, read=timeout))
        except (u3.HTTPError, OSError) as exc:
            raise transport_error(exc) from exc
        self._answers.retry_after = answer.headers.get("Retry-After")
        if self.logger.isEnabledFor(logging.INFO):
            self.log_response(answer.status, answer)
        return Response(int(answer.status), _text(answer), answer.headers)

    def retry_after_s(self) -> float | None:
        """The ``Retry-After`` of this thread's last answer, in seconds (None: none)."""
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        return twilio_signals.retry_after_s(getattr(self._answers, "retry_after", None), now)


def _text(answer: urllib3.BaseHTTPResponse) -> str:
    content_type = answer.headers.get("Content-Type", "")
    charset = "utf-8"
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip('"')
    try:
        return answer.data.decode(charset, errors="replace")
    except LookupError:
        return answer.data.decode("utf-8", errors="replace")
