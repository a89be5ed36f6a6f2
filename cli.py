"""The operator's command line: ``python -m cli --help``.

Every command is a thin wrapper over a plain function, so the same things can be done
from a Python shell.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time

import click

from cli_campaign_edit import campaign_edit
from cli_campaign_ops import (CUSTOMER_ID, campaign_clone, campaign_delete, campaign_export, campaign_list,
                              campaign_retry, campaign_test)
from cli_checks import CAMPAIGN_ID, OperatorGroup, Seconds, StartTime, Text, broker_ready
from cli_customers import customers
from cli_dashboard import dashboard

def _bootstrap():
    """Import the broker setup (and with it the settings) only when a command runs; a bad
    setting is a ConfigurationError, which the group shows as one line."""
    import actors
    import cli_logging

    cli_logging.configure()
    return actors


@click.group(cls=OperatorGroup)
def main() -> None:
    """Campaign SMS worker: set up the database, seed data, launch and watch campaigns."""


@main.command()
def demo() -> None:
    """Run a demo campaign end to end on a fresh SQLite database and print its analytics."""
    from demo import format_analytics, run_demo

    click.echo(format_analytics(run_demo()))


@main.command("init-db")
def init_db() -> None:
    """Create the tables, bring an earlier version's up to date, store every customer's number
    in E.164 and put earlier opt-outs on the suppression list (safe to run again)."""
    _bootstrap()
    from schema import create_schema
    from settings import get_settings

    create_schema(default_region=get_settings().default_region)
    click.echo("schema ready")


@main.command("seed-demo")
def seed_demo_command() -> None:
    """Add the demo customers and a draft campaign; prints the campaign id."""
    _bootstrap()
    from demo import seed_demo
    from models import connection
    from schema import create_schema

    create_schema()
    with connection():
        click.echo(seed_demo())


@main.group()
def campaign() -> None:
    """Create, send and inspect campaigns."""


@campaign.command("create")
@click.option("--name", required=True, type=Text())
@click.option("--template", required=True, type=Text(), help="Placeholders: {first_name} {last_name} {name} {short_url} and the custom attributes imports brought "
                   "(e.g. {store}).")
@click.option("--rate-limit", default=None, type=Text(),
              help="One limit slower than the global SMS_RATE_LIMIT, e.g. '5/minute' or '20 per 2 hours' (at most a day's window).")
@click.option("--time-zone", default=None, type=Text(), help="Zone for quiet hours when a customer's is unknown, e.g. America/Chicago.")
@click.option("--tag", "all_tags", multiple=True, type=Text(), help="Only customers with this tag (repeat: all of them).")
@click.option("--any-tag", "any_tags", multiple=True, type=Text(), help="Only customers with at least one of these tags.")
@click.option("--exclude-tag", "none_tags", multiple=True, type=Text(), help="Never customers with this tag.")
@click.option("--frequency-cap", "cap_h", default=None, type=click.IntRange(0, 24 * 365),
              help="Skip numbers any campaign texted in the last this many hours (0: none).")
@click.option("--on-overflow", default="fail", show_default=True, type=Text(),
              help="A message that does not fit one segment: fail, transliterate (ë -> e) or segments:N (2 to 10).")
@click.option("--smart-encoding/--no-smart-encoding", default=True, show_default=True,
              help="Replace curly quotes, dashes, odd spaces and the like with their GSM-7 look-alikes.")
@click.option("--from", "from_number", default=None, type=Text(),
              help="Send from this number of the Twilio account, e.g. +12125550100 (default: TWILIO_FROM_NUMBER).")
@click.option("--messaging-service", "messaging_service_sid", default=None, type=Text(),
              help="Send through this messaging service, MG followed by 32 hex digits (default: TWILIO_MESSAGING_SERVICE_SID).")
@click.option("--language", default="en", show_default=True, type=Text(),
              help="The language of the footer: en or fr (languages.py).")
def campaign_create(name: str, template: str, rate_limit: str | None, time_zone: str | None, all_tags, any_tags,
                    none_tags, cap_h: int | None, on_overflow: str, smart_encoding: bool, language: str,
                    from_number: str | None, messaging_service_sid: str | None) -> None:
    """Create a draft campaign after checking it (its template, its limit, its zone, its audience,
    its sender)."""
    _bootstrap()
    from campaign_drafts import create_draft
    from errors import PermanentError
    from models import connection
    from settings import get_settings

    with connection():  # the custom attributes imports declared are placeholders too
        try:
            campaign_id = create_draft(
                settings=get_settings(), name=name, template=template, rate_limit=rate_limit, time_zone=time_zone,
                all_tags=all_tags, any_tags=any_tags, none_tags=none_tags, cap_h=cap_h, on_overflow=on_overflow,
                smart_encoding=smart_encoding, language=language, from_number=from_number,
                messaging_service_sid=messaging_service_sid)
        except PermanentError as exc:
            raise click.ClickException(exc.reason) from None
    click.echo(campaign_id)


@campaign.command("preview")
@click.argument("campaign_id", type=CAMPAIGN_ID)
@click.option("--samples", default=3, show_default=True, type=click.IntRange(0, 100))
@click.option("--customer", "customer_id", default=None, type=CUSTOMER_ID, help="Show this customer's message only.")
def campaign_preview(campaign_id: int, samples: int, customer_id: int | None) -> None:
    """Dry run: sample messages exactly as they would go out, the audience, the cost."""
    _bootstrap()
    from campaigns import check_action
    from reports import preview
    from models import connection
    from prices import PriceTable
    from sender_check import check_sender
    from settings import get_settings

    settings = get_settings()
    with connection():
        check_action(campaign_id, "preview")
        result = preview(
            campaign_id, short_url_base=settings.short_url_base, default_region=settings.default_region,
            samples=samples, prices=PriceTable.of(settings), frequency_cap_h=settings.frequency_cap_h,
            check_sender=lambda sender: check_sender(settings, sender), customer_id=customer_id,
        )
    if customer_id is not None and result.audience == 0:
        raise click.ClickException(f"customer {customer_id} is not in campaign {campaign_id}'s audience (or does not exist)")
    from preview_text import format_preview

    click.echo(format_preview(result))


@campaign.command("send")
@click.argument("campaign_id", type=CAMPAIGN_ID)
@click.option("--at", "at", default=None, type=StartTime(),
              help="Start later: ISO time, e.g. 2026-12-01T09:00:00-05:00 (naive = UTC); not in the past (a minute ago counts as now).")
def campaign_send(campaign_id: int, at: dt.datetime | None) -> None:
    """Start the campaign now (or at --at); workers do the rest. With SMS_BACKEND=twilio, a
    sender that Twilio says it cannot send from is refused before anything starts."""
    actors = _bootstrap()
    import senders
    from campaigns import Refused, check_action, check_send_at
    from models import connection
    from sender_check import check_sender
    from settings import get_settings

    settings = get_settings()
    with connection():
        draft = check_action(campaign_id, "send")
        try:
            when = None if at is None else check_send_at(at)
        except Refused as exc:
            raise click.ClickException(f"--at {exc.reason}") from None
        broker_ready(actors.broker)
        checked = check_sender(settings, senders.of(draft)) if settings.sms_backend == "twilio" else None
        if checked is not None and checked.known is False:
            raise click.ClickException(f"campaign {campaign_id} not started: {checked.line()}")
        when = actors.start(campaign_id, when)
    note = f" ({checked.line()})" if checked is not None and checked.known is None else ""
    click.echo(f"campaign {campaign_id} " + (f"scheduled for {when:%Y-%m-%d %H:%M} UTC" if when else "started") + note)


@campaign.command("pause")
@click.argument("campaign_id", type=CAMPAIGN_ID)
@click.option("--reason", default="paused by an operator", type=Text())
def campaign_pause(campaign_id: int, reason: str) -> None:
    """Stop new sends at once; pending customers stay pending."""
    actors = _bootstrap()
    from campaigns import check_action
    from models import connection

    with connection():
        check_action(campaign_id, "pause")
        broker_ready(actors.broker)
        if not actors.pause(campaign_id, reason):
            check_action(campaign_id, "pause")  # what it became meanwhile
            raise click.ClickException(f"campaign {campaign_id} was not paused: try again")
    click.echo(f"campaign {campaign_id} paused")


@campaign.command("resume")
@click.argument("campaign_id", type=CAMPAIGN_ID)
def campaign_resume(campaign_id: int) -> None:
    """Continue a paused campaign exactly where it stopped."""
    actors = _bootstrap()
    from campaigns import check_action
    from models import connection

    with connection():
        check_action(campaign_id, "resume")
        broker_ready(actors.broker)
        if not actors.resume(campaign_id):
            check_action(campaign_id, "resume")
            raise click.ClickException(f"campaign {campaign_id} was not resumed: try again")
    click.echo(f"campaign {campaign_id} resumed")


@campaign.command("cancel")
@click.argument("campaign_id", type=CAMPAIGN_ID)
def campaign_cancel(campaign_id: int) -> None:
    """Cancel: every customer not yet sent is recorded as cancelled."""
    actors = _bootstrap()
    from campaigns import check_action
    from models import connection

    with connection():
        check_action(campaign_id, "cancel")
        broker_ready(actors.broker)
        cancelled = actors.cancel(campaign_id)
        if cancelled is None:
            check_action(campaign_id, "cancel")
            raise click.ClickException(f"campaign {campaign_id} was not cancelled: try again")
    click.echo(f"campaign {campaign_id} cancelled; {cancelled} unsent customers recorded as cancelled")


@campaign.command("status")
@click.argument("campaign_id", type=CAMPAIGN_ID)
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until the campaign finishes (redrawn in place on a terminal).")
@click.option("--interval", default=2.0, show_default=True, type=Seconds(0.1, 3600))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON (with --watch: one object a line).")
def campaign_status(campaign_id: int, watch: bool, interval: float, as_json: bool) -> None:
    """Sent, delivered, failed and skipped by reason, pending, quiet-hours holds, Twilio's holds, rate, ETA, clicks."""
    _bootstrap()
    import cli_logging
    from actors.stops import held_ms
    from campaigns import check_action, status_report
    from models import CampaignStatus, connection
    from status_screen import Screen, format_status

    def report() -> dict:
        with connection():
            check_action(campaign_id, "status")
            return status_report(campaign_id, held_ms=held_ms)

    if not watch:
        first = report()
        click.echo(json.dumps(first, indent=2) if as_json else format_status(first))
        return
    screen = Screen(sys.stdout, terminal=False if as_json else None)
    with cli_logging.held():
        try:
            while True:
                current = report()
                screen.show(json.dumps(current) if as_json else format_status(current))
                if current["status"] in CampaignStatus.FINISHED:
                    return
                time.sleep(interval)
        finally:
            screen.close()


@main.command()
def sweep() -> None:
    """Restart stalled campaigns once (the workers also do this every SWEEP_INTERVAL_S)."""
    actors = _bootstrap()
    from models import connection

    broker_ready(actors.broker)
    with connection():
        result = actors.sweep()
    click.echo(f"checked {result.checked} sending campaign(s); restarted {result.restarted or 'none'}")


main.add_command(customers)
main.add_command(dashboard)
campaign.add_command(campaign_test)
campaign.add_command(campaign_retry)
campaign.add_command(campaign_export)
campaign.add_command(campaign_list)
campaign.add_command(campaign_clone)
campaign.add_command(campaign_delete)
campaign.add_command(campaign_edit)

if __name__ == "__main__":
    main(prog_name="python -m cli")
