"""What the product does when Twilio signals (``twilio_signals.SIGNALS``), beyond the one
message: hold every send or a sender's sends in the rate limiter, pause the campaigns of a
sender, lower a campaign's rate. Both paths come here: the answer to a create
(``sending.py``) and a delivery report (``web.py``'s status callback).

Holds live in the rate limiter (a stop with a time to live, ``ratelimit.RateLimit.hold``),
where every send already passes, so they cost no extra round trip; a held message goes back
to pending unsent, and the dispatcher enqueues nothing of a held campaign until the hold
ends (``held_ms``). A Redis that lost the keys loses the holds: the next refusal from Twilio
sets them again. Pauses and slow-downs are on the campaign's row (``campaigns.py``), each
with an event.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Callable

import campaigns
import senders
import twilio_signals
from events import record_event
from models import Campaign, utcnow
from ratelimit import slower
from twilio_signals import Action, Signal

logger = logging.getLogger(__name__)


@dataclass
class Acted:
    """What one signal did, for the caller and the tests."""

    action: Action
    paused: list[int]
    held_until: dt.datetime | None = None
    hold_ms: int | None = None
    rate_limit: str | None = None


class SignalActions:
    """Acts on Twilio's signals.

    Parameters:
        hold: ``(group, ttl_ms) -> bool`` the rate limiter's hold (``RateLimit.hold``); True
            when the group was not held yet. None: no limiter (nothing is held).
        held_ms: ``(groups) -> int``, the longest time left of those holds.
        stop_campaign: refuses the slots of a paused campaign's messages (``actors.stops``).
        global_rate_limit: ``SMS_RATE_LIMIT``, the rate a campaign without its own goes at.
        retry_after_max_s: ``TWILIO_RETRY_AFTER_MAX_S``, the longest hold a 429 makes.
        clock: naive UTC now.
    """

    def __init__(
        self,
        *,
        hold: Callable[[str, int], bool] | None,
        held_ms: Callable[[list[str]], int] | None,
        stop_campaign: Callable[[int], None],
        global_rate_limit: str,
        retry_after_max_s: float = 60,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._hold = hold
        self._held_ms = held_ms
        self.stop_campaign = stop_campaign
        self.global_rate_limit = global_rate_limit
        self.retry_after_max_s = retry_after_max_s
        self.clock = clock

    def held_ms(self, sender: str | None) -> int:
        """How long a message from ``sender`` is still held (0: it may go)."""
        if self._held_ms is None:
            return 0
        return self._held_ms(twilio_signals.hold_groups(sender))

    def act(self, signal: Signal, *, campaign_id: int | None, sender: str | None,
            retry_after_s: float | None = None) -> Acted:
        """Do what the table says for ``signal``, seen on a message of ``campaign_id`` sent
        from ``sender``."""
        now = self.clock()
        acted = Acted(signal.action, paused=[])
        if signal.action is Action.HOLD_ALL_BRIEFLY:
            hold_s = twilio_signals.brief_hold_s(retry_after_s, max_s=self.retry_after_max_s)
            if hold_s is not None:
                acted.hold_ms = int(hold_s * 1000)
                acted.held_until = now + dt.timedelta(seconds=hold_s)
                if self._set_hold(twilio_signals.HOLD_ALL_BRIEFLY_GROUP, acted.hold_ms):
                    record_event(campaign_id, "sends_held",
                                 f"{signal.reason} with Retry-After {retry_after_s:g} s: every send held {hold_s:g} s",
                                 level="warning")
        elif signal.action is Action.PAUSE_SENDER:
            who = senders.describe(sender) if sender else "the campaign's sender"
            acted.paused = campaigns.pause_sender_campaigns(sender, f"{signal.reason} ({who})", campaign_id=campaign_id)
            for paused in acted.paused:
                self.stop_campaign(paused)
        elif signal.action in (Action.HOLD_SENDER_UNTIL_CAP_RESET, Action.HOLD_ALL_FOR_A_DAY):
            until = twilio_signals.hold_until(signal.action, now)
            acted.held_until, acted.hold_ms = until, int((until - now).total_seconds() * 1000)
            if signal.action is Action.HOLD_ALL_FOR_A_DAY:
                group, whose = twilio_signals.HOLD_ALL_DAY_GROUP, "every send"
            else:
                group, whose = twilio_signals.hold_sender_group(sender), f"the sends from {senders.describe(sender)}"
            if self._set_hold(group, acted.hold_ms):
                record_event(campaign_id, "sends_held", f"{signal.reason}: {whose} held until {until:%Y-%m-%d %H:%M} UTC",
                             level="warning")
        elif signal.action is Action.SLOW_CAMPAIGN and campaign_id is not None:
            acted.rate_limit = self._slow_down(signal, campaign_id, now)
        # COUNT_FILTERING: the campaign's metrics update counts the spike (analytics).
        return acted

    def on_delivery_report(self, campaign_id: int | None, error_code: str | None) -> Acted | None:
        """A status callback's ``ErrorCode`` on a message of ``campaign_id``: its signal, if any."""
        signal = twilio_signals.signal_for(error_code)
        if signal is None or campaign_id is None:
            return None
        campaign = Campaign.get_or_none(Campaign.id == campaign_id)
        if campaign is None:
            return None
        return self.act(signal, campaign_id=campaign_id, sender=senders.of(campaign))

    def _set_hold(self, group: str, ttl_ms: int) -> bool:
        if self._hold is None:
            logger.warning("no rate limiter to hold %s for %d ms", group, ttl_ms)
            return False
        return self._hold(group, ttl_ms)

    def _slow_down(self, signal: Signal, campaign_id: int, now: dt.datetime) -> str | None:
        campaign = Campaign.get_or_none(Campaign.id == campaign_id)
        if campaign is None:
            return None
        current = slower(self.global_rate_limit, campaign.rate_limit)
        lower = twilio_signals.halved(current)
        if lower is None or not campaigns.slow_down(campaign_id, rate_limit=lower, previous=campaign.rate_limit,
                                                    cooldown_s=twilio_signals.SLOWDOWN_COOLDOWN_S, now=now):
            return None
        record_event(campaign_id, "campaign_slowed", f"{signal.reason}: rate lowered from {current} to {lower}",
                     level="warning")
        return lower
