"""A draft campaign, checked before it is saved: what ``python -m cli campaign create``
and the dashboard's "new campaign" form both call, so both accept and refuse the same;
and a draft changed later (``campaign edit``), checked the same way."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import senders
from audience import Audience
from campaigns import Refused, check_action
from errors import PermanentError
from events import record_event
from models import Campaign, CampaignStatus, write_transaction
from overflow import overflow_column
from rendering import check_draft
from settings import Settings

#: The CLI's option names for a campaign's fields, as its refusals name them.
CREATE_OPTIONS = {"name": "--name", "template": "--template", "rate_limit": "--rate-limit", "time_zone": "--time-zone",
                  "language": "--language"}


def create_draft(
    *, settings: Settings, name: str, template: str, rate_limit: str | None = None, time_zone: str | None = None,
    all_tags: Sequence[str] = (), any_tags: Sequence[str] = (), none_tags: Sequence[str] = (),
    cap_h: int | None = None, on_overflow: str = "fail", smart_encoding: bool = True, language: str = "en",
    from_number: str | None = None, messaging_service_sid: str | None = None,
    labels: Mapping[str, str] = CREATE_OPTIONS,
) -> int:
    """Check and save a draft; returns its id. ``PermanentError`` (one line, its ``reason``)
    for anything refused: its template, its limit, its zone, its audience, its sender.

    Parameters:
        settings: the short-link base, the global limit and the default sender.
        labels: how the refusals name the fields (the CLI's options by default).
    """
    try:
        audience = Audience.parse(all_of=all_tags, any_of=any_tags, none_of=none_tags)
        sender = senders.check(from_number=from_number, messaging_service_sid=messaging_service_sid) or settings.sender
    except ValueError as exc:
        raise PermanentError(str(exc), code="invalid_draft") from None
    draft = Campaign(name=name, template=template, rate_limit=rate_limit, time_zone=time_zone,
                     audience=audience.to_json(), frequency_cap_h=cap_h, smart_encoding=smart_encoding,
                     on_overflow=overflow_column(on_overflow), language=language.strip().lower(),
                     **senders.columns(sender))
    check_draft(draft, settings.short_url_base, settings.sms_rate_limit, labels=labels)  # custom attributes too
    draft.save()
    return draft.id


def edit_draft(
    campaign_id: int, *, settings: Settings, changes: Mapping[str, Any], audience: Audience | None = None,
    labels: Mapping[str, str] = CREATE_OPTIONS,
) -> list[str]:
    """Change a draft's fields (``changes``: a column of ``Campaign`` and its new value) and,
    if given, its audience (``Audience()`` is every customer); the whole draft is checked as
    ``create_draft`` checks a new one. Returns the names of the fields that changed (none:
    nothing written). ``Refused`` for a campaign that is not a draft, ``PermanentError`` for
    a change refused; either way nothing changes. An ``event`` records each edit."""
    with write_transaction():
        campaign = check_action(campaign_id, "edit")
        changed = []
        for name, value in changes.items():
            if getattr(campaign, name) != value:
                setattr(campaign, name, value)
                changed.append(name)
        if audience is not None and campaign.audience != audience.to_json():
            campaign.audience = audience.to_json()
            changed.append("audience")
        if not changed:
            return []
        check_draft(campaign, settings.short_url_base, settings.sms_rate_limit, labels=labels)
        updated = (Campaign.update({name: getattr(campaign, name) for name in changed})
                   .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.DRAFT).execute())
        if not updated:  # started meanwhile (a SQLite write lock or a PostgreSQL race)
            check_action(campaign_id, "edit")
            raise Refused(f"campaign {campaign_id} was not edited: try again", code="campaign_state")
        record_event(campaign_id, "campaign_edited", "changed " + ", ".join(changed), level="info")
    return changed


def draft_changes(*, name: str | None = None, template: str | None = None, rate_limit: str | None = None,
                  time_zone: str | None = None, cap_h: int | None = None, on_overflow: str | None = None,
                  smart_encoding: bool | None = None, language: str | None = None, from_number: str | None = None,
                  messaging_service_sid: str | None = None) -> dict[str, Any]:
    """The columns an edit's options set (None: not given; ``"none"`` clears a rate limit
    or a zone); ValueError for a sender or an overflow rule that cannot be read."""
    changes: dict[str, Any] = {}
    for column, value in (("name", name), ("template", template)):
        if value is not None:
            changes[column] = value
    for column, value in (("rate_limit", rate_limit), ("time_zone", time_zone)):
        if value is not None:
            changes[column] = None if value.strip().lower() == "none" else value
    if cap_h is not None:
        changes["frequency_cap_h"] = cap_h
    if on_overflow is not None:
        changes["on_overflow"] = overflow_column(on_overflow)
    if smart_encoding is not None:
        changes["smart_encoding"] = smart_encoding
    if language is not None:
        changes["language"] = language.strip().lower()
    if from_number is not None or messaging_service_sid is not None:
        changes.update(senders.columns(senders.check(from_number=from_number,
                                                     messaging_service_sid=messaging_service_sid)))
    return changes
