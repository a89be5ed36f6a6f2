"""Keep phone numbers out of the logs of the libraries we use.

Our own log lines mask numbers themselves (``sms.mask_phone``); peewee's SQL parameters
and urllib3's request lines (at DEBUG) would print them in full. A filter on those loggers
masks anything that looks like a phone number in the formatted line.
"""

from __future__ import annotations

import logging
import re

_PHONE = re.compile(
    r"(?:\+|%2B)\d{7,15}"  # E.164, also URL-encoded
    r"|\(?\b\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b"  # (212) 555-0103, 212.555.0103
)
LOGGERS = ("peewee", "urllib3.connectionpool", "twilio.http_client", "dramatiq", "werkzeug", "gunicorn.access")


def mask_text(text: str) -> str:
    def mask(match: re.Match) -> str:
        value = match.group(0)
        return value[:2] + "*" * max(0, len(value) - 6) + value[-4:] if len(value) > 6 else "****"

    return _PHONE.sub(mask, text)


class MaskPhoneNumbers(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a broken format string is not ours to fix
            return True
        masked = mask_text(text)
        if masked != text:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_text(logging.Formatter().formatException(record.exc_info))
        return True


def install() -> None:
    """Attach the filter to the loggers that may print numbers and to the root logger's
    handlers, which see every record, tracebacks included (idempotent). A logger's own
    filter does not apply to its children's records, hence both."""
    targets = [logging.getLogger(name) for name in LOGGERS] + list(logging.getLogger().handlers)
    for target in targets:
        if not any(isinstance(f, MaskPhoneNumbers) for f in target.filters):
            target.addFilter(MaskPhoneNumbers())
