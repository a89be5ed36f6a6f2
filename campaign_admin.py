"""Campaign housekeeping: the list of campaigns with their state and counts, a copy of a
campaign as a new draft, and the deletion of a draft. Plain functions for the CLI and the
shell; a campaign's status changes stay in ``campaigns.py``."""

from __future__ import annotations

from typing import Iterator

from peewee import JOIN

from campaigns import Refused, check_action
from models import Campaign, CampaignAnalytics, CampaignStatus, utcnow

#: A campaign's columns that belong to its run, not its settings: a copy starts without them
#: (every other column, a setting added later included, is copied).
RUN_COLUMNS = frozenset({
    "id", "name", "status", "status_reason", "send_at", "dispatch_token", "heartbeat_at", "fanout_done_at",
    "fanout_beat_at", "zones", "started_at", "completed_at", "created_at", "slowed_at",
})

#: The figures ``list_campaigns`` gives from each campaign's analytics.
COUNTS = ("targeted", "sent", "failed", "skipped", "pending", "delivered", "unique_clicks")


def list_campaigns(*, batch_size: int = 500, before_id: int | None = None) -> Iterator[dict]:
    """Every campaign (with an id under ``before_id``, if given), newest first: id, name,
    status, created, and its targeted, sent, failed, skipped, pending, delivered and
    unique_clicks counts as its analytics last recorded them (0 before any fan-out).
    One query per batch, whatever the size of the message table."""
    last_id = before_id
    while True:
        query = (
            Campaign.select(Campaign.id, Campaign.name, Campaign.status, Campaign.created_at,
                            *(getattr(CampaignAnalytics, name) for name in COUNTS))
            .join(CampaignAnalytics, join_type=JOIN.LEFT_OUTER, on=(CampaignAnalytics.campaign == Campaign.id))
            .order_by(Campaign.id.desc())
            .limit(batch_size)
        )
        if last_id is not None:
            query = query.where(Campaign.id < last_id)
        rows = list(query.dicts())
        if not rows:
            return
        for row in rows:
            yield {
                "id": row["id"], "name": row["name"], "status": row["status"],
                "created_at": row["created_at"].isoformat(timespec="seconds") if row["created_at"] else None,
                **{name: row[name] or 0 for name in COUNTS},
            }
        last_id = rows[-1]["id"]


def clone_campaign(campaign_id: int, *, name: str | None = None) -> int:
    """A new draft with every setting of the campaign (template, limits, zone, audience,
    frequency cap, and any setting column added since); named ``name`` or "<name> (copy)".
    Returns its id."""
    source = check_action(campaign_id, "clone")
    values = {f.name: getattr(source, f.name) for f in Campaign._meta.sorted_fields if f.name not in RUN_COLUMNS}
    max_length = Campaign.name.max_length
    copy_name = name if name is not None else f"{source.name[: max_length - 7]} (copy)"
    if not copy_name.strip() or len(copy_name) > max_length:
        raise Refused(f"--name must be 1 to {max_length} characters", code="invalid_name")
    return Campaign.create(name=copy_name, status=CampaignStatus.DRAFT, created_at=utcnow(), **values).id


def delete_draft(campaign_id: int) -> None:
    """Delete a draft (it has no message rows: it never ran); ``Refused`` for any other state,
    decided by the conditional DELETE itself, so a draft started meanwhile is kept."""
    check_action(campaign_id, "delete")
    # Its analytics row, if a preview or a metrics update made one, goes with it (ON DELETE CASCADE).
    deleted = Campaign.delete().where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.DRAFT).execute()
    if not deleted:
        check_action(campaign_id, "delete")  # says what it became
        raise Refused(f"campaign {campaign_id} was not deleted: try again", code="campaign_state")
