"""Campaign-level actors: the fan-out and the analytics update."""

from __future__ import annotations

import dramatiq

import campaigns
from actors.services import get_services


@dramatiq.actor(queue_name="campaigns", max_retries=5, min_backoff=5_000, time_limit=6 * 3_600_000)
def send_campaign(campaign_id: int) -> None:
    """Record every customer's outcome and enqueue one ``send_sms`` per eligible customer."""
    from actors.sms import send_sms

    services = get_services()

    def enqueue(message_ids: list[int]) -> None:
        for message_id in message_ids:
            send_sms.send(message_id)

    campaigns.fan_out(
        campaign_id,
        enqueue=enqueue,
        short_url_base=services.short_url_base,
        default_region=services.default_region,
        batch_size=services.fanout_batch_size,
    )
    request_metrics_update(campaign_id)


@dramatiq.actor(queue_name="metrics", max_retries=10, min_backoff=1_000, max_backoff=60_000)
def update_metrics(campaign_id: int) -> None:
    """Recompute the campaign's analytics from its message rows."""
    get_services().debouncer.release(campaign_id)
    campaigns.recompute_analytics(campaign_id)


def request_metrics_update(campaign_id: int) -> None:
    """Ask for an analytics update; asks within one window share one aggregation."""
    services = get_services()
    if services.debouncer.claim(campaign_id):
        update_metrics.send_with_options(args=(campaign_id,), delay=services.debouncer.delay_ms)
