"""Operator operations that need the broker or the rate limiter: a retry (its dispatcher
started, its maybe-sent rows sent to be looked up at Twilio) and a test send (its slot
taken in the same windows as the campaign's own sends). Plain functions for the shell."""

from __future__ import annotations

import time
from typing import Callable

import dramatiq

import message_state
import resend
import trial_send
from actors.campaigns import dispatch_campaign, enqueue_sends
from actors.services import get_services, request_metrics_update
from actors.stops import stop_campaign
from errors import PermanentError, TransientError
from models import Campaign, Message, MessageStatus, TrialSend
from ratelimit import RateLimit

#: A test send waits at most this long for its rate-limit slot, then gives up.
TEST_SLOT_WAIT_S = 120.0


def retry(campaign_id: int, *, undelivered: bool = False) -> resend.RetryResult:
    """``resend.retry_campaign``, then the campaign's new dispatcher is started and its
    maybe-sent rows go to ``send_sms``, which looks each up at Twilio before any send. If
    this process dies before, the sweeper restarts the dispatcher, which takes the rows
    left ``sending`` once they are stale."""
    result = resend.retry_campaign(campaign_id, undelivered=undelivered)
    if result.token is None:
        return result
    stop_campaign(campaign_id, stopped=False)
    dispatch_campaign.send(campaign_id, result.token)
    if result.reconciling:
        campaign = Campaign.get_by_id(campaign_id)
        still = (Message.status == MessageStatus.SENDING) & Message.queued_at.is_null()
        enqueue_sends(campaign, message_state.mark_queued(result.reconciling, still))
    request_metrics_update(campaign_id)
    return result


def slot_taker(campaign: Campaign, *, max_wait_s: float = TEST_SLOT_WAIT_S,
               sleep: Callable[[float], None] = time.sleep) -> Callable[[int], None]:
    """``acquire_slot(cost)`` for a send made outside a worker: the cost is taken from the
    same windows as the campaign's own sends (``SMS_RATE_LIMIT``'s and the campaign's own
    limit, as ``enqueue_sends`` gives them), waiting in this thread up to ``max_wait_s``;
    after that, TransientError. No stop group: a test of a paused campaign may go."""
    limiter = next((m for m in dramatiq.get_broker().middleware if isinstance(m, RateLimit)), None)
    if limiter is None:
        return lambda cost: None
    options = {"extra_rate_limit": [f"campaign:{campaign.id}", campaign.rate_limit]} if campaign.rate_limit else {}
    checks = limiter.checks_for(options, {"rate_limit": "sms"})
    windows = [(key, item.amount, limiter.window_ms(item)) for key, item in checks]

    def acquire(cost: int) -> None:
        if any(cost > item.amount for _key, item in checks):
            raise PermanentError(f"a message of {cost} segments can never fit the rate limit", code="too_costly")
        deadline = time.monotonic() + max_wait_s
        while True:
            wait_ms, _ttl = limiter.take(windows, cost, (), None)
            if wait_ms <= 0:
                return
            if time.monotonic() + wait_ms / 1000 > deadline:
                raise TransientError(f"no rate-limit slot came within {max_wait_s:g} s (the campaign's sends hold them): "
                                     "try again later", code="rate_limited")
            sleep(wait_ms / 1000)

    return acquire


def send_test_message(campaign_id: int, *, to: str, customer_id: int | None = None,
              max_wait_s: float = TEST_SLOT_WAIT_S) -> TrialSend:
    """``trial_send.send_test`` with the process's SMS backend and the campaign's slot."""
    services = get_services()
    campaign = Campaign.get_or_none(Campaign.id == campaign_id)
    return trial_send.send_test(
        campaign_id, to=to, customer_id=customer_id, backend=services.backend,
        acquire_slot=slot_taker(campaign, max_wait_s=max_wait_s) if campaign is not None else (lambda cost: None),
        short_url_base=services.short_url_base, default_region=services.default_region,
    )

