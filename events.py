"""Operator-visible records of what happened outside a message row (a campaign paused, a
message id that does not exist), written to the ``event`` table and the log."""

from __future__ import annotations

import logging

from models import Event

logger = logging.getLogger(__name__)


def record_event(campaign_id: int | None, code: str, detail: str, level: str = "error") -> None:
    """Record ``detail`` under ``code``; ``level`` is error, warning or info (an operator's
    action on the dashboard, with their name)."""
    log = {"error": logger.error, "warning": logger.warning}.get(level, logger.info)
    log("campaign %s: %s: %s", campaign_id, code, detail)
    Event.create(campaign_id=campaign_id, code=code, detail=detail, level=level)
