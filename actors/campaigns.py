"""Campaign-level actors: the fan-out, the paced dispatcher and the analytics update."""

from __future__ import annotations

import logging

import dramatiq

import analytics
import campaigns
import delivery
import dispatch
import fanout
import senders
import twilio_signals
from actors.services import get_services, request_metrics_update
from actors.sms import send_sms
from actors.stops import stop_campaign, stop_group
from events import record_event
from models import Campaign, utcnow
from ratelimit import pacing, slower

logger = logging.getLogger(__name__)

#: While every row left waits for quiet hours, the dispatcher looks again this often at most
#: (and at least three times per sweeper's stale cut-off, so it is not taken for stalled).
QUIET_RECHECK_MS = 30_000
#: While the fan-out has recorded nothing the dispatcher could enqueue yet, it looks again this soon.
FANOUT_RECHECK_MS = 1_000


@dramatiq.actor(queue_name="campaigns", max_retries=5, min_backoff=5_000, time_limit=6 * 3_600_000)
def send_campaign(campaign_id: int, token: str | None = None) -> None:
    """Check the campaign, start its dispatcher, and record every customer's outcome row.
    ``token``: the dispatch token of a start or restart that the sweeper made.

    An id that cannot be a campaign's (not an int, or beyond ``campaigns.MAX_ID``: no query
    could take it on both databases) ends here, recorded once, never retried."""
    if not campaigns.is_campaign_id(campaign_id):
        shown = repr(campaign_id)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        record_event(None, "campaign_not_found",
                     f"campaign id {shown} is not an id (an integer from 1 to {campaigns.MAX_ID}): nothing to send")
        return
    services = get_services()
    result = fanout.fan_out(
        campaign_id,
        short_url_base=services.short_url_base,
        default_region=services.default_region,
        default_time_zone=services.default_time_zone,
        batch_size=services.fanout_batch_size,
        frequency_cap_h=services.frequency_cap_h,
        default_sender=services.default_sender,
        on_started=lambda started: dispatch_campaign.send(campaign_id, started),
        token=token,
    )
    if result.status != "not_found":
        request_metrics_update(campaign_id)


@dramatiq.actor(queue_name="campaigns", max_retries=20, min_backoff=1_000, max_backoff=60_000)
def dispatch_campaign(campaign_id: int, token: str) -> None:
    """Keep about two rate-limit windows of the campaign's sends in the broker, then run
    again; stops by itself when the campaign has nothing left, is paused or is superseded."""
    services = get_services()
    campaign = Campaign.get_or_none(Campaign.id == campaign_id)
    if campaign is None:
        return
    max_inflight, again_ms = pacing(slower(services.sms_rate_limit, campaign.rate_limit))
    quiet = services.quiet
    held_ms = services.signals.held_ms(senders.of(campaign)) if services.signals is not None else 0
    result = dispatch.dispatch(
        campaign_id, token, enqueue=enqueue_sends, max_inflight=max_inflight,
        requeue_after_s=max(services.requeue_after_s, 6 * again_ms / 1000),
        quiet_hours=quiet.hours if quiet else None, clock=quiet.clock if quiet else utcnow,
        held_ms=held_ms,
    )
    if not result.again:
        return
    delay_ms = again_ms
    if result.enqueued == 0 and result.inflight == 0 and result.quiet_until is None and campaign.fanout_done_at is None:
        # Started before the fan-out's first rows were committed: look again soon, not a
        # whole half window later (30 s at 1/minute).
        delay_ms = min(again_ms, FANOUT_RECHECK_MS)
    if result.enqueued == 0 and result.inflight == 0 and result.quiet_until is not None:
        # Everything left waits for quiet hours to end: look again then, but often enough
        # that the heartbeat stays fresh for the sweeper.
        until_ms = (result.quiet_until - (quiet.clock() if quiet else utcnow())).total_seconds() * 1000
        recheck_ms = min(QUIET_RECHECK_MS, services.sweep_stale_after_s * 1000 / 3)
        delay_ms = int(max(again_ms, min(recheck_ms, until_ms)))
    dispatch_campaign.send_with_options(args=(campaign_id, token), delay=delay_ms)


@dramatiq.actor(queue_name="metrics", priority=-10, max_retries=10, min_backoff=1_000, max_backoff=60_000)
def update_metrics(campaign_id: int) -> None:
    """Recompute the campaign's analytics from its message rows (after applying delivery
    reports that overtook their SIDs); pause it on an error storm."""
    services = get_services()
    services.debouncer.release(campaign_id)
    try:
        for other in delivery.apply_early_statuses(signals=services.signals) - {campaign_id}:
            request_metrics_update(other)
    except Exception:
        logger.exception("applying early delivery reports failed; the next update tries again")
    analytics.recompute_analytics(campaign_id)
    storm = services.error_storm
    if analytics.check_error_storm(campaign_id, window=storm[0], min_attempts=storm[1], ratio=storm[2]):
        stop_campaign(campaign_id)
    filtering = services.filtering_storm
    if analytics.check_filtering_storm(campaign_id, window=filtering[0], min_outcomes=filtering[1], ratio=filtering[2]):
        stop_campaign(campaign_id)


def sweep() -> campaigns.SweepResult:
    """Restart stalled campaigns (see ``campaigns.sweep``); run by the Sweeper middleware
    in every worker process and by ``python -m cli sweep``."""
    services = get_services()

    def stale_after_s(campaign: Campaign) -> float:
        _inflight, again_ms = pacing(slower(services.sms_rate_limit, campaign.rate_limit))
        return max(services.sweep_stale_after_s, 3 * again_ms / 1000)

    for campaign_id, token in campaigns.start_due_campaigns():
        send_campaign.send(campaign_id, token)
    return campaigns.sweep(
        stale_after_s=stale_after_s,
        restart_fan_out=lambda campaign_id, token: send_campaign.send(campaign_id, token),
        restart_dispatch=lambda campaign_id, token: dispatch_campaign.send(campaign_id, token),
        request_metrics=request_metrics_update,
        reconcile=enqueue_sends,
        stuck_after_s=services.requeue_after_s,
    )


def enqueue_sends(campaign: Campaign, message_ids: list[int]) -> None:
    """One ``send_sms`` per message, with the campaign's stop group, the holds of its sender
    (``twilio_signals.hold_groups``) and its own rate limit."""
    options = {"stop_group": stop_group(campaign.id), "hold_groups": twilio_signals.hold_groups(senders.of(campaign))}
    if campaign.rate_limit:
        options["extra_rate_limit"] = [f"campaign:{campaign.id}", campaign.rate_limit]
    for message_id in message_ids:
        send_sms.send_with_options(args=(message_id,), **options)
