"""The operator's command line: ``python -m cli --help``.

Every command is a thin wrapper over a plain function, so the same things can be done
from a Python shell.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import click

from cli_campaign_ops import (CUSTOMER_ID, campaign_clone, campaign_delete, campaign_export, campaign_list,
                              campaign_retry, campaign_test)
from cli_checks import CAMPAIGN_ID, OperatorGroup, Seconds, StartTime, Text, broker_ready
from cli_customers import customers

#: The options that fill a new campaign's fields, as its checks name them.
CREATE_OPTIONS = {"name": "--name", "template": "--template", "rate_limit": "--rate-limit", "time_zone": "--time-zone"}


def _bootstrap():
    """Import the broker setup (and with it the settings) only when a command runs; a bad
    setting is a ConfigurationError, which the group shows as one line."""
    import actors

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
@click.option("--template", required=True, type=Text(), help="Placeholders: {first_name} {last_name} {name} {short_url}.")
@click.option("--rate-limit", default=None, type=Text(),
              help="One limit slower than the global SMS_RATE_LIMIT, e.g. '5/minute' or '20 per 2 hours' (at most a day's window).")
@click.option("--time-zone", default=None, type=Text(), help="Zone for quiet hours when a customer's is unknown, e.g. America/Chicago.")
@click.option("--tag", "all_tags", multiple=True, type=Text(), help="Only customers with this tag (repeat: all of them).")
@click.option("--any-tag", "any_tags", multiple=True, type=Text(), help="Only customers with at least one of these tags.")
@click.option("--exclude-tag", "none_tags", multiple=True, type=Text(), help="Never customers with this tag.")
@click.option("--frequency-cap", "cap_h", default=None, type=click.IntRange(0, 24 * 365),
              help="Skip numbers any campaign texted in the last this many hours (0: none).")
def campaign_create(name: str, template: str, rate_limit: str | None, time_zone: str | None, all_tags, any_tags,
                    none_tags, cap_h: int | None) -> None:
    """Create a draft campaign after checking it (its template, its limit, its zone, its audience)."""
    _bootstrap()
    from audience import Audience
    from rendering import check_draft
    from models import Campaign, connection
    from settings import get_settings

    settings = get_settings()
    try:
        audience = Audience.parse(all_of=all_tags, any_of=any_tags, none_of=none_tags)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    draft = Campaign(name=name, template=template, rate_limit=rate_limit, time_zone=time_zone,
                     audience=audience.to_json(), frequency_cap_h=cap_h)
    check_draft(draft, settings.short_url_base, settings.sms_rate_limit, labels=CREATE_OPTIONS)
    with connection():
        draft.save()
    click.echo(draft.id)


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
    from settings import get_settings

    settings = get_settings()
    with connection():
        check_action(campaign_id, "preview")
        result = preview(
            campaign_id, short_url_base=settings.short_url_base, default_region=settings.default_region,
            samples=samples, price_per_segment=settings.sms_segment_price, frequency_cap_h=settings.frequency_cap_h,
            customer_id=customer_id,
        )
    if customer_id is not None and result.audience == 0:
        raise click.ClickException(f"customer {customer_id} is not in campaign {campaign_id}'s audience (or does not exist)")
    click.echo(format_preview(result))


def format_preview(result) -> str:
    lines = [f"Preview of campaign {result.campaign_id} (nothing is sent)"]
    if result.template_error:
        lines.append(f"  TEMPLATE ERROR: {result.template_error}")
    for sample in result.samples:
        lines.append(f"--- to {sample['to']} ({sample['encoding']}, {sample['units']} units, 1 segment)")
        lines.extend("    " + line for line in sample["body"].splitlines())
    rows = [("audience", result.audience), ("would be sent", result.eligible)]
    rows += [(f"skipped: {reason}", count) for reason, count in sorted(result.skipped_by_reason.items())]
    rows += [("too long (would fail)", result.too_long)]
    rows += [(f"encoding {encoding}", count) for encoding, count in sorted(result.encodings.items())]
    rows += [("segments", result.segments)]
    lines += [f"{label:<26}{count:>8}" for label, count in rows]
    lines.append(f"{'estimated cost':<26}{result.estimated_cost:>8.2f}  (at {result.price_per_segment} per segment)")
    return "\n".join(lines)


@campaign.command("send")
@click.argument("campaign_id", type=CAMPAIGN_ID)
@click.option("--at", "at", default=None, type=StartTime(),
              help="Start later: ISO time, e.g. 2026-12-01T09:00:00-05:00 (naive = UTC); not in the past (a minute ago counts as now).")
def campaign_send(campaign_id: int, at: dt.datetime | None) -> None:
    """Start the campaign now (or at --at); workers do the rest."""
    actors = _bootstrap()
    from campaigns import Refused, check_action, check_send_at
    from models import connection

    with connection():
        check_action(campaign_id, "send")
        try:
            when = None if at is None else check_send_at(at)
        except Refused as exc:
            raise click.ClickException(f"--at {exc.reason}") from None
        broker_ready(actors.broker)
        when = actors.start(campaign_id, when)
    click.echo(f"campaign {campaign_id} " + (f"scheduled for {when:%Y-%m-%d %H:%M} UTC" if when else "started"))


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
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until the campaign finishes.")
@click.option("--interval", default=2.0, show_default=True, type=Seconds(0.1, 3600))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def campaign_status(campaign_id: int, watch: bool, interval: float, as_json: bool) -> None:
    """Sent, failed, skipped, pending, delivered, rate, ETA and a progress bar."""
    _bootstrap()
    from campaigns import check_action
    from reports import status_report
    from models import CampaignStatus, connection

    while True:
        with connection():
            check_action(campaign_id, "status")
            report = status_report(campaign_id)
        if as_json:
            click.echo(json.dumps(report, indent=2))
        else:
            if watch:
                click.clear()
            click.echo(format_status(report))
        if not watch or report["status"] in CampaignStatus.FINISHED:
            return
        time.sleep(interval)


def format_status(r: dict) -> str:
    eta = "-" if r["eta_seconds"] is None else str(dt.timedelta(seconds=r["eta_seconds"]))
    lines = [
        f"Campaign {r['campaign_id']} {r['name']!r}: {r['status']}" + (f" ({r['status_reason']})" if r["status_reason"] else ""),
        f"  {r['progress']}",
        f"  sent {r['sent']}  delivered {r['delivered']}  failed {r['failed']}  skipped {r['skipped']}  "
        f"cancelled {r['cancelled']}  pending {r['pending']}",
        f"  rate {r['rate_per_minute']}/min  ETA {eta}",
    ]
    if r.get("audience"):
        lines.insert(1, f"  audience: {r['audience']} ({r['targeted']} targeted)")
    if r.get("skipped_by_reason"):
        lines.append("  skipped: " + ", ".join(f"{reason} {count}" for reason, count in r["skipped_by_reason"].items()))
    return "\n".join(lines)


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
campaign.add_command(campaign_test)
campaign.add_command(campaign_retry)
campaign.add_command(campaign_export)
campaign.add_command(campaign_list)
campaign.add_command(campaign_clone)
campaign.add_command(campaign_delete)

if __name__ == "__main__":
    main(prog_name="python -m cli")
