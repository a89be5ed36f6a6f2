"""An operator's retry (``campaign retry ID``): send once more to the customers whose send
failed for a reason a retry can cure, exactly once, never to a permanent failure, an
opt-out or a customer already sent.

What a retry takes back, by the code the send path recorded (``sending.py``):

- ``retries_exhausted`` (``sending.give_up``): every request of the message was refused
  before it reached Twilio (429s, refused connections); the row goes back to ``pending``.
- ``unknown_outcome`` (``sending._reconcile``): requests went unanswered and Twilio did not
  list the message, but it may have it after all (its list can lag). The row goes back to
  ``sending``, so that it is looked up at Twilio before anything is sent: found, it is
  recorded sent; otherwise it is sent once.
- with ``undelivered``, rows Twilio accepted and then reported ``undelivered`` or
  ``failed`` with a carrier code in ``CURABLE_CARRIER_CODES``, back to ``pending``.

Everything else stays as it is: per-recipient errors (21211, 21614, 21610, ...), rows
skipped or cancelled, customers unsubscribed since, numbers on the suppression list or
known as landlines. Each row moves by a conditional UPDATE of ``message_state``, so two
retries at once move it once, and the campaign goes back to ``sending`` in the same
transaction (``campaigns.reopen_for_retry``); the caller then starts its dispatcher.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import analytics
import campaigns
import message_state
from models import Event, utcnow, write_transaction

#: Failed rows whose last request surely did not reach Twilio: sent again.
NOT_SENT_CODES = ("retries_exhausted",)
#: Failed rows whose outcome was never known: looked up at Twilio first.
MAYBE_SENT_CODES = ("unknown_outcome",)

#: Twilio's delivery error codes (``ErrorCode`` of an ``undelivered`` or ``failed`` status
#: callback) that a later send can cure, with why. The codes left out, and why:
#: 30002 (account suspended: a sender problem, every retry fails the same way), 30004
#: (message blocked by the recipient or their carrier), 30005 (unknown handset: the number
#: is not in service), 30006 (landline or unreachable carrier: marked as a landline),
#: 30007 (filtered as spam: the same text is filtered again), 30034 (unregistered 10DLC
#: sender), 30022/30027 (the sender's registered throughput or daily cap exceeded: slow the
#: campaign first; its rows are not taken back blindly).
CURABLE_CARRIER_CODES = {
    "30001": "queue overflow: the sender's queue at Twilio was full; Twilio advises sending again after a while",
    "30003": "unreachable handset: the phone was off, out of coverage or roaming; a later send usually arrives",
    "30008": "unknown error: the carrier gave no reason; Twilio advises sending again",
    "30017": "carrier network congestion: a temporary state of the carrier's network",
    "30036": "validity period expired: the message waited too long in Twilio's queue, not the handset's fault",
}

#: An undelivered message is retried only this long after it was sent, so that the new
#: send's window at Twilio (from a minute before its claim) cannot contain it.
UNDELIVERED_MIN_AGE_S = 120


@dataclass
class RetryResult:
    campaign_id: int
    #: Rows back to ``pending`` (retries exhausted, and undelivered ones).
    pending: list[int] = field(default_factory=list)
    #: Rows back to ``sending``, to be looked up at Twilio before any resend.
    reconciling: list[int] = field(default_factory=list)
    #: (row id, the undelivered message's SID, its carrier code) of each undelivered row taken back.
    undelivered: list[tuple[int, str, str]] = field(default_factory=list)
    #: The campaign's new dispatcher token (None if nothing was retried).
    token: str | None = None

    @property
    def total(self) -> int:
        return len(self.pending) + len(self.reconciling)


def retry_campaign(campaign_id: int, *, undelivered: bool = False, now: dt.datetime | None = None) -> RetryResult:
    """Take back the campaign's rows a retry can cure (see the module) and reopen the
    campaign, in one transaction; ``campaigns.Refused`` if the campaign is not completed or
    sending (``check_action``). Returns what was taken back and the dispatcher token to
    start (the caller starts it: this module knows no broker). Nothing to retry: nothing
    changes, and the token is None."""
    now = now or utcnow()
    result = RetryResult(campaign_id)
    with write_transaction():
        campaigns.check_action(campaign_id, "retry")
        result.pending = message_state.retry_not_sent(campaign_id, NOT_SENT_CODES)
        result.reconciling = message_state.retry_maybe_sent(campaign_id, MAYBE_SENT_CODES)
        if undelivered:
            before = now - dt.timedelta(seconds=UNDELIVERED_MIN_AGE_S)
            result.undelivered = message_state.retry_undelivered(campaign_id, tuple(CURABLE_CARRIER_CODES), sent_before=before)
            result.pending = sorted(result.pending + [row[0] for row in result.undelivered])
        if result.total == 0:
            return result
        result.token = campaigns.reopen_for_retry(campaign_id)
        if result.token is None:  # paused or cancelled since the check: nothing is kept
            campaigns.check_action(campaign_id, "retry")
            raise campaigns.Refused(f"campaign {campaign_id} changed state during the retry: try again", code="campaign_state")
    detail = f"retried by an operator: {len(result.pending)} to send again, {len(result.reconciling)} to look up at Twilio first"
    if result.undelivered:
        detail += "; undelivered: " + ", ".join(f"message {i} ({code}, was {sid})" for i, sid, code in result.undelivered[:50])
    # An operator's own act, on record for the campaign; not a warning for the log.
    Event.create(campaign_id=campaign_id, code="campaign_retried", detail=detail, level="info")
    analytics.recompute_analytics(campaign_id)
    return result
