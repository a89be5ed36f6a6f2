"""Project counters for Prometheus, next to Dramatiq's own Prometheus middleware.

Switched on with ``PROMETHEUS=on``: the worker then exports Dramatiq's metrics and these
on ``dramatiq_prom_port`` (9191). Off, every call here is a no-op, so the hot path pays
nothing and ``prometheus_client`` need not be imported.
"""

from __future__ import annotations

import os

from dramatiq.middleware import Middleware

_outcomes = None
_deferrals = None


class ProjectMetrics(Middleware):
    """Creates the project's counters in each worker process, after Dramatiq's Prometheus
    middleware has set up the multiprocess directory."""

    def after_process_boot(self, broker):
        global _outcomes, _deferrals
        from dramatiq.middleware.prometheus import DB_PATH

        # Dramatiq emits "after" hooks in reverse order; the multiprocess directory must be
        # set before prometheus_client is first imported, whichever middleware runs first.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", DB_PATH)
        import prometheus_client as prom

        _outcomes = prom.Counter("campaign_sms_messages_total", "Campaign messages by outcome.", ["outcome"])
        _deferrals = prom.Counter("campaign_sms_deferrals_total", "Deferred sends by cause.", ["cause"])


def count_outcome(outcome: str) -> None:
    if _outcomes is not None:
        _outcomes.labels(outcome).inc()


def count_deferral(cause: str) -> None:
    if _deferrals is not None:
        _deferrals.labels(cause).inc()
