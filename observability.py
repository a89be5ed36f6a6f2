"""Project counters for Prometheus, next to Dramatiq's own Prometheus middleware.

Switched on with ``PROMETHEUS=on``: the worker then exports Dramatiq's metrics and these
on ``dramatiq_prom_port`` (9191). Off, every call here is a no-op, so the hot path pays
nothing and ``prometheus_client`` need not be imported.

``campaign_sms_messages_total{campaign, outcome, reason}``: the campaign's id, for at most
``MAX_CAMPAIGN_LABELS`` campaigns per process (then ``other``), and the code of a failed or
skipped message's reason, at most ``MAX_REASON_LABELS`` distinct codes (then ``other``).
"""

from __future__ import annotations

import os
import re
import threading

from dramatiq.middleware import Middleware

#: Distinct campaigns and reasons one process labels; the ones after are counted as
#: ``other``, so a long-lived worker's series stay bounded whatever it sends.
MAX_CAMPAIGN_LABELS = 100
MAX_REASON_LABELS = 50
OTHER = "other"
#: A reason is a code (``unsubscribed``, ``21211``, ``retries_exhausted``), never free text.
_REASON = re.compile(r"[a-z0-9_]{1,32}")

_outcomes = None
_deferrals = None


class BoundedLabels:
    """The first ``limit`` distinct values seen are label values; later ones are ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


_campaign_labels = BoundedLabels(MAX_CAMPAIGN_LABELS)
_reason_labels = BoundedLabels(MAX_REASON_LABELS)


class ProjectMetrics(Middleware):
    """Creates the project's counters in each worker process, after Dramatiq's Prometheus
    middleware has set up the multiprocess directory."""

    def after_process_boot(self, broker):
        from dramatiq.middleware.prometheus import DB_PATH

        # Dramatiq emits "after" hooks in reverse order; the multiprocess directory must be
        # set before prometheus_client is first imported, whichever middleware runs first.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", DB_PATH)
        install()


def install(registry=None) -> None:
    """Create the counters (in ``registry``, default prometheus_client's own); from then on
    the ``count_*`` calls count.

    Parameters:
        registry: a ``prometheus_client.CollectorRegistry`` (tests give their own).
    """
    global _outcomes, _deferrals, _campaign_labels, _reason_labels
    import prometheus_client as prom

    options = {} if registry is None else {"registry": registry}
    _campaign_labels, _reason_labels = BoundedLabels(MAX_CAMPAIGN_LABELS), BoundedLabels(MAX_REASON_LABELS)
    _outcomes = prom.Counter("campaign_sms_messages_total", "Campaign messages handled by the send path, by campaign, "
                             "outcome and reason.", ["campaign", "outcome", "reason"], **options)
    _deferrals = prom.Counter("campaign_sms_deferrals_total", "Deferred sends by cause.", ["cause"], **options)


def uninstall() -> None:
    """Stop counting (tests that installed their own registry)."""
    global _outcomes, _deferrals
    _outcomes = _deferrals = None


def enabled() -> bool:
    return _outcomes is not None


def count_outcome(outcome: str, *, campaign_id: int | None = None, reason: str | None = None) -> None:
    """Count one message's outcome at the send (sent, failed, skipped, pending, ...) for its
    campaign, with the reason's code for a failed or skipped one."""
    if _outcomes is None:
        return
    campaign = _campaign_labels(str(campaign_id)) if campaign_id is not None else "none"
    code = str(reason).lower() if reason is not None else ""
    code = _reason_labels(code) if _REASON.fullmatch(code) else (OTHER if code else "")
    _outcomes.labels(campaign, outcome, code).inc()


def count_deferral(cause: str) -> None:
    if _deferrals is not None:
        _deferrals.labels(cause).inc()
