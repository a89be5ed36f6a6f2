"""One small error hierarchy: what the worker does next depends only on the class.

- ``PermanentError``: retrying cannot help; the message record is failed with ``reason``.
- ``TransientError``: the same request may succeed later; the message is retried with backoff.
- ``SenderError``: the sender or account is misconfigured; every further message of the
  campaign would fail the same way, so the campaign is paused with ``reason``.
- ``HoldError``: Twilio says to stop sending for a while (a daily cap); the message goes back
  to pending, unsent, and the sender's or the account's traffic is held.

An error from one of Twilio's signals (``twilio_signals.SIGNALS``) carries its ``signal``,
which ``signal_actions`` acts on beyond the one message (a hold, a pause, a slow-down).

``code`` is a short machine-readable slug (or a Twilio error code) stored beside the reason.
"""

from __future__ import annotations


class CampaignError(Exception):
    """Base class of every error this project raises on purpose."""

    def __init__(self, reason: str, *, code: str | int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = None if code is None else str(code)
        #: The ``twilio_signals.Signal`` this error is, if any (set by the classification).
        self.signal = None


class PermanentError(CampaignError):
    """Retrying cannot help: record the message as failed with the reason."""


class TemplateError(PermanentError):
    """The campaign's template is malformed or names an unknown placeholder."""


class MessageTooLong(PermanentError):
    """The rendered SMS (footer included) does not fit in one segment."""


class InvalidPhone(PermanentError):
    """The phone number is missing or is not a valid E.164 number."""


class RecipientOptedOut(PermanentError):
    """The recipient replied STOP to this sender (Twilio 21610): never text them again."""


class TransientError(CampaignError):
    """The same request may succeed later (rate limited, 5xx, connection trouble)."""

    def __init__(self, reason: str, *, code: str | int | None = None, retry_after_ms: int | None = None) -> None:
        super().__init__(reason, code=code)
        self.retry_after_ms = retry_after_ms


class MaybeSent(TransientError):
    """The request may have reached Twilio (a read timeout, a dropped connection, a 5xx):
    the message may exist even though no answer arrived."""


class SenderError(CampaignError):
    """The sender or the account is misconfigured: pause the campaign, fail nobody."""


class HoldError(CampaignError):
    """Twilio refused the message because a daily cap is reached (30027, 63038): nothing was
    sent; the message waits, unsent, until the hold ends."""


class ConfigurationError(CampaignError):
    """A setting is missing or malformed; the reason names the variable."""


class ServiceUnreachable(ConfigurationError):
    """A service a setting points at (``DATABASE_URL``, ``REDIS_URL``) does not answer at a
    worker's start; the reason names the variable, with the URL's password masked."""
