"""The send path of one campaign message: claim, quiet hours, rate-limit slot, send, record,
and the reconciliation of a message whose outcome is unknown (the spec's sequence).

Actors call ``send_message`` with a message id; nothing here knows about Dramatiq. Every
change of the message's state is made by ``message_state``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Callable

from peewee import DataError, IntegrityError

import consent
import landlines
import message_state
import senders
from batching import Combiner
from claims import BatchSlots, LoadedMessage, QuietNow, QuietPolicy, claim_rendered, load_for_send
from errors import (
    HoldError, MaybeSent, MessageTooLong, PermanentError, RecipientOptedOut, SenderError, TemplateError, TransientError,
)
from events import record_event
from links import new_link_code
from message_types import SentRecord, SkipReason
from models import CampaignStatus, Message, MessageStatus, database, utcnow
from rendering import compose_message, has_values, used_attributes
from sms import mask_phone
from smsservice import SmsBackend

logger = logging.getLogger(__name__)

#: Requests a message may cost before one that Twilio never lists is given up as failed.
DEFAULT_MAX_ATTEMPTS = 10


@dataclass
class SendOutcome:
    message_id: int
    status: str
    detail: str = ""
    campaign_id: int | None = None
    #: A sender or account error: the campaign should be paused with this reason (the
    #: caller does it, with the rate limiter's stop).
    pause_reason: str | None = None
    #: The "sent" record went to ``record_sent``, whose writer asks for the metrics update
    #: once it is committed.
    written_behind: bool = False


def release_connection() -> None:
    """Close the calling thread's database connection (a writer thread that stops)."""
    if not database.is_closed():
        database.close()


def refused(exc: Exception) -> bool:
    """The database refused the rows themselves (a constraint), not the connection."""
    return isinstance(exc, (IntegrityError, DataError))


def write_sent(records: list[SentRecord]) -> None:
    """Record many accepted sends in one statement, for a writer thread: a row that is no
    longer ``sending`` (reconciled meanwhile) is left as it is. After a failure the thread's
    connection is dropped, so that the next try connects again."""
    try:
        message_state.record_sent(records)
    except Exception:
        release_connection()
        raise


def _record_sent_batch(records: list[SentRecord]) -> list[None]:
    message_state.record_sent(records)
    return [None] * len(records)


_sent_records = Combiner(_record_sent_batch)


@dataclass(frozen=True)
class _How:
    """What a ``send_message`` call was given, for the steps after the claim."""

    backend: SmsBackend
    acquire_slot: Callable[..., None] | None
    reconcile_after_s: float
    quiet: QuietPolicy | None
    record_sent: Callable[[SentRecord], None] | None
    max_attempts: int
    default_sender: str | None = None
    #: Acts on Twilio's signals beyond the one message (``signal_actions.SignalActions``).
    signals: object | None = None


def send_message(
    message_id: int,
    *,
    backend: SmsBackend,
    short_url_base: str,
    deferrals: int = 0,
    acquire_slot: Callable[[int, int], None] | BatchSlots | None = None,
    reconcile_after_s: float = 30.0,
    quiet: QuietPolicy | None = None,
    record_sent: Callable[[SentRecord], None] | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    default_sender: str | None = None,
    signals=None,
) -> SendOutcome:
    """Check, claim, send and record one message: the spec's sequence.

    The usual message was rendered at the fan-out and is claimed in one statement; one
    that was not (or whose claim finds something changed) takes the long way: load, check,
    render, claim. ``acquire_slot(segments, campaign_id)`` takes the rate-limit slot after
    the claim, just before the HTTP call (a ``BatchSlots`` makes its first try in the
    claim's shared step); if it raises (throttled, or the limiter is unreachable) the claim
    is undone and the error propagates. ``deferrals`` is how often the rate limit put this
    message back.

    A message left in ``sending`` (no answer from Twilio, or a crash) is looked up at
    Twilio once it is ``reconcile_after_s`` old, and only sent again if Twilio has none.
    Raises TransientError when a retry may help (``MaybeSent`` keeps the claim), and
    ``QuietNow`` when the recipient is inside quiet hours (checked before the slot is
    taken and again right before the send).

    ``record_sent`` takes the record of an accepted send instead of this call writing it
    (a worker's ``WriteBehind``): the row stays ``sending`` until it is written.

    A message that has cost ``max_attempts`` claims and lookups and that Twilio still does
    not list is recorded failed (``unknown_outcome``), so that its campaign can complete.

    Every send and lookup uses the campaign's sender, read with the message; a campaign
    that has none yet is given ``default_sender`` (this worker's setting) once, on its row.

    An answer that is one of Twilio's signals (``twilio_signals``) is acted on by
    ``signals`` (``signal_actions.SignalActions``) beyond this message: a hold, a pause of
    the sender's campaigns, a slower campaign. Each send tells the backend how long the
    message may wait at Twilio before the recipient's quiet hours start (``ValidityPeriod``).
    """
    how = _How(backend, acquire_slot, reconcile_after_s, quiet, record_sent, max_attempts, default_sender, signals)
    message, first = claim_rendered(message_id, deferrals, acquire_slot, quiet)
    if message is not None:
        outcome = SendOutcome(message_id, MessageStatus.SENDING, campaign_id=message.campaign.id)
        return _send_claimed(message, message.body, message.segments, outcome, how, first)
    message = load_for_send(message_id)
    if message is None:
        record_event(None, "message_not_found", f"message {message_id} does not exist")
        return SendOutcome(message_id, "not_found")
    campaign, customer = message.campaign, message.customer
    outcome = SendOutcome(message_id, message.status, campaign_id=campaign.id)
    if message.status == MessageStatus.SENDING:
        return _reconcile(message, outcome, how)
    if message.status != MessageStatus.PENDING:
        outcome.detail = "already handled"
        return outcome
    if campaign.status != CampaignStatus.SENDING:
        if campaign.status == CampaignStatus.CANCELLED:
            message_state.settle_cancelled(message_id)
        outcome.detail = f"campaign is {campaign.status}"
        return outcome
    needs = used_attributes(campaign)
    skipped = _skip_if_ineligible(message, outcome, MessageStatus.PENDING, needs)
    if skipped is not None:
        return skipped
    try:
        link_code = new_link_code()
        body, length = compose_message(campaign, customer, link_code, short_url_base, needs)
    except (TemplateError, MessageTooLong) as exc:
        message_state.fail(message_id, MessageStatus.PENDING, code=exc.code, reason=exc.reason)
        outcome.status, outcome.detail = MessageStatus.FAILED, exc.reason
        return outcome
    if quiet is not None:
        try:
            quiet.check(message)
        except QuietNow as exc:
            message_state.expect_back(message_id, at=exc.queued_at)
            raise

    # The claim also re-checks the campaign, so a pause stops every message not yet claimed.
    claimed = message_state.claim_rendering(
        message_id, campaign_id=campaign.id, body=body, encoding=length.encoding, segments=length.segments,
        link_code=link_code, deferrals=deferrals, claimed_at=utcnow(),
    )
    if not claimed:
        outcome.detail = "claimed by another worker, or the campaign stopped"
        return outcome
    return _send_claimed(message, body, length.segments, outcome, how)


def _skip_if_ineligible(message: LoadedMessage, outcome: SendOutcome, expected: str,
                        needs: frozenset[str] = frozenset()) -> SendOutcome | None:
    """Skip a message whose customer unsubscribed, whose number opted out, whose customer
    lost their QR code or a custom attribute the template uses (``needs``) since the fan-out."""
    if message.customer is None:
        code, reason = SkipReason.CUSTOMER_DELETED, "the customer was deleted before the send"
    elif not message.customer.sms_subscribed:
        code, reason = SkipReason.UNSUBSCRIBED, "customer unsubscribed before the send"
    elif message.to_phone and consent.suppressed([message.to_phone]):
        code, reason = SkipReason.SUPPRESSED, "the number opted out before the send (suppression list)"
    elif message.customer.qr is None or not message.customer.qr.code:
        code, reason = SkipReason.NO_QR_CODE, "customer's QR code was removed before the send"
    elif needs and not has_values(message.customer, needs):
        code, reason = SkipReason.MISSING_ATTRIBUTE, "customer has no value for a custom attribute the template uses"
    else:
        return None
    if message_state.skip(message.id, expected, code=code, reason=reason):
        outcome.status, outcome.detail = MessageStatus.SKIPPED, reason
    else:
        outcome.detail = "handled by another worker"
    return outcome


def _send_claimed(message, body, segments, outcome: SendOutcome, how: _How, first=None) -> SendOutcome:
    """Send a message this worker has claimed (status ``sending``) and record the result.
    ``first`` is what its batch of claims did about quiet hours and the slot, if anything."""
    message_id = message.id
    acquire_slot, quiet = how.acquire_slot, how.quiet
    if acquire_slot is not None or quiet is not None:
        try:
            if isinstance(first, Exception):
                raise first
            if quiet is not None and first is None:
                quiet.check(message)  # else its batch checked, right before trying for the slot
            if acquire_slot is not None:
                if first is not None:
                    acquire_slot(segments, message.campaign.id, first=first)
                else:
                    acquire_slot(segments, message.campaign.id)
                if quiet is not None:
                    quiet.check(message)  # the slot may have been waited for
        except BaseException as exc:
            # queued_at says when the row is next expected back: a quiet-hours deferral at the
            # window's end, a stopped campaign never (resume dispatches it), else now.
            message_state.put_back(message_id, queued_at=getattr(exc, "queued_at", utcnow()), undo_attempt=True)
            raise
    sender = _sender(message, how)
    try:
        valid_for_s = quiet.seconds_until_quiet(message) if quiet is not None else None
        sent = how.backend.send(to=message.to_phone, body=body, sender=sender, valid_for_s=valid_for_s)
    except (PermanentError, SenderError, HoldError, TransientError) as exc:
        if exc.signal is not None and how.signals is not None:
            acted = how.signals.act(exc.signal, campaign_id=message.campaign.id, sender=sender,
                                    retry_after_s=(exc.retry_after_ms / 1000) if getattr(exc, "retry_after_ms", None) else None)
            if acted.hold_ms is not None and isinstance(exc, TransientError):
                exc.retry_after_ms = acted.hold_ms  # this message comes back when the hold ends
        return _failed_send(exc, message, outcome, how)
    record = SentRecord(message_id, sent.sid, sent.segments or segments, message.campaign.id)
    if how.record_sent is None:
        _sent_records.submit(record)
    else:
        how.record_sent(record)
        outcome.written_behind = True
    outcome.status = MessageStatus.SENT
    return outcome


def _failed_send(exc: Exception, message, outcome: SendOutcome, how: _How) -> SendOutcome:
    """Record a send Twilio refused, by the error's class (``errors.py``); a transient one is
    raised again for the caller's retry."""
    message_id = message.id
    try:
        raise exc
    except RecipientOptedOut as exc:
        message_state.fail(message_id, MessageStatus.SENDING, code=exc.code, reason=exc.reason)
        consent.opt_out(message.to_phone, source=consent.Source.TWILIO_21610, reason=exc.reason)
        outcome.status, outcome.detail = MessageStatus.FAILED, exc.reason
        return outcome
    except PermanentError as exc:
        message_state.fail(message_id, MessageStatus.SENDING, code=exc.code, reason=exc.reason)
        if exc.code in landlines.CODES:
            landlines.mark(message.to_phone, code=exc.code, source="send")
        outcome.status, outcome.detail = MessageStatus.FAILED, exc.reason
        return outcome
    except SenderError as exc:
        message_state.put_back(message_id, queued_at=None, undo_attempt=False)
        outcome.pause_reason = f"sender error {exc.code}: {exc.reason}"
        outcome.status, outcome.detail = MessageStatus.PENDING, exc.reason
        return outcome
    except HoldError as exc:
        # Not sent: pending again, for the dispatcher to enqueue once the hold ends.
        message_state.put_back(message_id, queued_at=None, undo_attempt=False)
        outcome.status, outcome.detail = MessageStatus.PENDING, exc.reason
        return outcome
    except MaybeSent as exc:
        message_state.note_maybe_sent(message_id, code=exc.code, reason=exc.reason)
        logger.warning("message %s to %s: maybe sent (%s); will look it up at Twilio", message_id, mask_phone(message.to_phone), exc.reason)
        exc.retry_after_ms = int(how.reconcile_after_s * 1000) + 1000
        raise
    except TransientError as exc:
        message_state.retry_later(message_id, code=exc.code, reason=exc.reason)
        logger.warning("message %s to %s: transient error %s: %s", message_id, mask_phone(message.to_phone), exc.code, exc.reason)
        raise


def _sender(message, how: _How) -> str | None:
    """The campaign's sender; one that has none (created before senders were per campaign)
    gets this worker's default, fixed on its row for every later message."""
    sender = message.campaign.sender
    if sender is None and how.default_sender is not None:
        sender = message.campaign.sender = senders.fix_on_campaign(message.campaign.id, how.default_sender)
    return sender


def _reconcile(message, outcome: SendOutcome, how: _How) -> SendOutcome:
    """A message left in ``sending``: if it is old enough that no worker can still be
    waiting for Twilio, look it up there; record it sent if found, else send it again."""
    started = message.sending_at
    if started is not None and started > utcnow() - dt.timedelta(seconds=how.reconcile_after_s):
        # Another worker may still be waiting for Twilio; if it died, come back to look.
        wait_s = (started + dt.timedelta(seconds=how.reconcile_after_s) - utcnow()).total_seconds()
        raise TransientError("being sent by another worker", code="in_flight", retry_after_ms=int(wait_s * 1000) + 1000)
    # The take moves sending_at (the in-flight guard of the next one), never the first
    # attempt's time, where the window at Twilio starts: a take whose lookup fails, or a
    # crash, cannot push a message Twilio accepted out of the window.
    first_attempt_at = message.first_attempt_at or started or utcnow()
    taken_at = message_state.take_for_reconcile(message.id, started=started, first_attempt_at=first_attempt_at)
    if taken_at is None:
        outcome.detail = "reconciled by another worker"
        return outcome
    since = first_attempt_at - dt.timedelta(minutes=1)
    try:
        found = how.backend.find_sent(to=message.to_phone, body=message.body, since=since, sender=_sender(message, how))
    except TransientError as exc:
        message_state.undo_take(message.id, taken_at)
        # The next take must wait for the guard this one set.
        exc.retry_after_ms = max(exc.retry_after_ms or 0, int(how.reconcile_after_s * 1000) + 1000)
        raise
    if found is not None and message_state.sid_recorded_elsewhere(found.sid, message.id):
        logger.warning("message %s: Twilio's match %s is another message's; not this one", message.id, found.sid[:8])
        found = None
    if found is not None:
        message_state.record_found(message.id, sid=found.sid, segments=found.segments or message.segments or 1,
                                   reason="found at Twilio after an unanswered request")
        outcome.status, outcome.detail = MessageStatus.SENT, "reconciled"
        return outcome
    # Not sent: read the customer and the campaign again (a STOP may have come during the
    # lookup) before anything is sent.
    message = load_for_send(message.id) or message
    skipped = _skip_if_ineligible(message, outcome, MessageStatus.SENDING)
    if skipped is not None:
        return skipped
    if message.attempts - 1 >= how.max_attempts:  # less this take: requests made so far
        reason = f"no answer from Twilio after {message.attempts - 1} attempts, and Twilio lists no such message"
        if message_state.fail(message.id, MessageStatus.SENDING, code="unknown_outcome", reason=reason):
            record_event(message.campaign.id, "unknown_outcome", f"message {message.id}: {reason}", level="warning")
            outcome.status, outcome.detail = MessageStatus.FAILED, reason
        return outcome
    if message.campaign.status != CampaignStatus.SENDING:
        message_state.put_back(message.id, queued_at=None, undo_attempt=False)
        cancelled = message_state.settle_cancelled(message.id)
        outcome.status = MessageStatus.CANCELLED if cancelled else MessageStatus.PENDING
        outcome.detail = f"campaign is {message.campaign.status}"
        return outcome
    return _send_claimed(message, message.body, message.segments or 1, outcome, how)


def give_up(message_id: int, *, retries: int) -> int | None:
    """Fail a message whose transient errors outlasted its retries; returns its campaign.

    A message that may have been sent (``sending``) is not failed blind: it stays for the
    dispatcher to enqueue again once it is stale, and is then looked up at Twilio.
    """
    message = Message.get_or_none(Message.id == message_id)
    if message is None:
        return None
    reason = f"gave up after {retries} retries; last error: {message.reason or 'unknown'}"
    if message.status == MessageStatus.SENDING:
        record_event(message.campaign_id, "retries_exhausted", f"message {message_id}: {reason}; left for reconciliation", level="warning")
    elif message_state.fail(message_id, MessageStatus.PENDING, code="retries_exhausted", reason=reason):
        record_event(message.campaign_id, "retries_exhausted", f"message {message_id}: {reason}")
    return message.campaign_id

