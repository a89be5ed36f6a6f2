"""What the web process checks before it believes a request, and what it sends with every
answer (``web.create_app`` installs it first, ahead of any database work).

- **Size.** A body over ``MAX_BODY_BYTES`` (64 KiB) is 413 before it is read: Twilio's
  status callbacks and inbound messages are 1-3 KB of form fields; the largest, an inbound
  MMS or WhatsApp message, adds up to 10 media URLs and content types, and a 1,600-character
  body of 4-byte characters percent-encodes to under 20 KB. Werkzeug does not cap a
  urlencoded body by itself (``MAX_FORM_MEMORY_SIZE`` and ``MAX_FORM_PARTS`` apply to
  multipart only), so the cap is Flask's ``MAX_CONTENT_LENGTH``: a Content-Length over it
  is refused unread, and a chunked body (no Content-Length) is read no further than the
  limit, then refused.
- **Fields.** At most ``MAX_FORM_FIELDS`` (200), counted on the raw bytes before anything
  is parsed: Twilio sends about 20 for an SMS and under 70 for the richest inbound message
  (media and WhatsApp fields). A body that is not a urlencoded form is 415, and a field
  named twice is 400: the signature covers both values in either order, so the request
  would mean whichever value the code happened to read.
- **Time.** Under gunicorn's gevent worker (the Procfile's), a body that has not fully
  arrived ``BODY_TIMEOUT_S`` after the app starts reading it (just after the headers) is
  408, so a client trickling its body holds one greenlet for at most that long, and never
  a database connection (the body is read before one is taken).
- **Shape.** A short link's code or a Twilio SID outside its alphabet or longer than its
  column is refused before any query (``SHORT_CODE``, ``TWILIO_SID``, ``ERROR_CODE``).
- **Logs.** Nothing from a request goes into a log line except through ``printable``
  (escaped, cut short), Flask's own "Exception on <path>" line included.
- **Answers.** Errors are one line of plain text saying what was wrong; every answer
  carries ``SECURITY_HEADERS`` (no caching, no sniffing, no referrer, no framing). URLs with
  doubled slashes are not redirected (Werkzeug's ``merge_slashes`` builds the redirect from
  the Host header: an open redirect).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections import Counter

from flask import Flask, Response, abort, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

MAX_BODY_BYTES = 64 * 1024
MAX_FORM_FIELDS = 200
BODY_TIMEOUT_S = 10.0

#: A short link's code: a message's link code (``links.py``: 8 characters of Crockford's
#: base 32) or a customer's QR code (8 characters, digits and capitals, in the demo; the
#: ``qrcode`` column holds up to 32).
SHORT_CODE = re.compile(r"[0-9A-Z]{8,32}")
#: A Twilio SID as the ``message_sid`` / ``sid`` columns hold it (Twilio's are 34: a
#: two-letter prefix and 32 hex digits).
TWILIO_SID = re.compile(r"[0-9A-Za-z]{2,40}")
#: Twilio's error codes are numbers; the column holds 16 characters.
ERROR_CODE = re.compile(r"[0-9]{1,16}")

FORM_TYPE = "application/x-www-form-urlencoded"
TOO_LARGE = f"the body is over {MAX_BODY_BYTES} bytes"

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}


def printable(value: object, limit: int = 80) -> str:
    """A log-safe form of request data: quoted, every control and non-ASCII character
    escaped (a newline cannot start a forged log line), at most ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    shown = ascii(text[:limit])
    return shown + "..." if len(text) > limit else shown


class WebFlask(Flask):
    def log_exception(self, exc_info) -> None:
        """Flask's own line ("Exception on <path> [<method>]") with the path escaped."""
        self.logger.error("Exception on %s [%s]", printable(request.path, 200), printable(request.method, 20),
                          exc_info=exc_info)


def body_deadline(seconds: float):
    """A context that ends a read still blocked ``seconds`` after it began (gevent.Timeout,
    when gevent runs the process); elsewhere (threads, the test client) none."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        return contextlib.nullcontext()
    import gevent

    return gevent.Timeout(seconds)


def read_body() -> None:
    """Read the request's body once, within the limits above, or abort saying which one it
    broke. The form is then parsed from the cached bytes."""
    deadline = body_deadline(BODY_TIMEOUT_S)
    try:
        with deadline:
            data = request.get_data(cache=True)
    except RequestEntityTooLarge:  # from the Content-Length alone
        abort(413, TOO_LARGE)
    except BaseException as exc:
        if exc is deadline:
            abort(408, f"the body did not arrive within {BODY_TIMEOUT_S:g} seconds")
        raise
    if request.content_length is None and len(data) >= MAX_BODY_BYTES:
        # Chunked: Werkzeug stops reading at MAX_CONTENT_LENGTH and returns what it read.
        abort(413, TOO_LARGE)
    if not data:
        return
    if request.mimetype != FORM_TYPE:
        abort(415, f"the body must be {FORM_TYPE}")
    if data.count(b"&") >= MAX_FORM_FIELDS:
        abort(413, f"more than {MAX_FORM_FIELDS} form fields")
    counts = Counter(key for key, _ in request.form.items(multi=True))
    repeated = [key for key, count in counts.items() if count > 1]
    if repeated:
        abort(400, f"repeated form field {printable(repeated[0], 40)}")


def plain_error(exc: HTTPException) -> Response:
    """Every error as one line of text ("400 Bad Request: repeated form field 'From'")."""
    response = exc.get_response()
    response.set_data(f"{exc.code} {exc.name}: {exc.description}\n")
    response.mimetype = "text/plain"
    return response


def install(app: Flask) -> None:
    """Set the limits and hooks on ``app``: call it before any other ``before_request``
    (the body is read and checked before a database connection is taken)."""
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_BODY_BYTES,
        MAX_FORM_PARTS=MAX_FORM_FIELDS,
    )
    app.url_map.merge_slashes = False
    app.register_error_handler(HTTPException, plain_error)

    @app.before_request
    def check_body() -> None:
        if request.method in ("POST", "PUT", "PATCH"):
            read_body()
        elif (request.content_length or 0) > MAX_BODY_BYTES:
            abort(413, TOO_LARGE)

    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
