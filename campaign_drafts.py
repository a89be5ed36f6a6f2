"""A new draft campaign, checked before it is saved: what ``python -m cli campaign create``
and the dashboard's "new campaign" form both call, so both accept and refuse the same."""

from __future__ import annotations

from typing import Mapping, Sequence

import senders
from audience import Audience
from errors import PermanentError
from models import Campaign
from overflow import parse_overflow
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
    policy, allowed = parse_overflow(on_overflow)
    draft = Campaign(name=name, template=template, rate_limit=rate_limit, time_zone=time_zone,
                     audience=audience.to_json(), frequency_cap_h=cap_h, smart_encoding=smart_encoding,
                     on_overflow=policy if allowed == 1 else f"{policy}:{allowed}", language=language.strip().lower(),
                     **senders.columns(sender))
    check_draft(draft, settings.short_url_base, settings.sms_rate_limit, labels=labels)  # custom attributes too
    draft.save()
    return draft.id
