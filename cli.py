"""The operator's command line: ``python -m cli --help``.

Every command is a thin wrapper over a plain function, so the same things can be done
from a Python shell.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import click

from cli_customers import customers
from errors import ConfigurationError


def _bootstrap():
    """Import the broker setup (and with it the settings) only when a command runs."""
    try:
        import actors
    except ConfigurationError as exc:
        raise click.ClickException(f"configuration error: {exc.reason}") from None
    return actors


@click.group()
def main() -> None:
    """Campaign SMS worker: set up the database, seed data, launch and watch campaigns."""


@main.command()
def demo() -> None:
    """Run a demo campaign end to end on a fresh SQLite database and print its analytics."""
    from demo import format_analytics, run_demo

    try:
        data = run_demo()
    except ConfigurationError as exc:
        raise click.ClickException(f"configuration error: {exc.reason}") from None
    click.echo(format_analytics(data))


@main.command("init-db")
def init_db() -> None:
    """Create the tables (safe to run again)."""
    _bootstrap()
    from schema import create_schema

    create_schema()
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
@click.option("--name", required=True)
@click.option("--template", required=True, help="Placeholders: {first_name} {last_name} {name} {short_url}.")
@click.option("--rate-limit", default=None, help="A limit slower than the global one, e.g. '5/minute'.")
@click.option("--time-zone", default=None, help="Zone for quiet hours when a customer's is unknown, e.g. America/Chicago.")
def campaign_create(name: str, template: str, rate_limit: str | None, time_zone: str | None) -> None:
    """Create a draft campaign after checking its template."""
    _bootstrap()
    from rendering import check_campaign
    from errors import PermanentError
    from models import Campaign, connection
    from quiet import zone
    from settings import get_settings

    with connection():
        draft = Campaign(name=name, template=template, rate_limit=rate_limit, time_zone=time_zone)
        try:
            check_campaign(draft, get_settings().short_url_base)
        except PermanentError as exc:
            raise click.ClickException(exc.reason) from None
        if time_zone and zone(time_zone) is None:
            raise click.ClickException(f"--time-zone {time_zone!r} is not an IANA time zone")
        draft.save()
        click.echo(draft.id)


@campaign.command("preview")
@click.argument("campaign_id", type=int)
@click.option("--samples", default=3, show_default=True)
def campaign_preview(campaign_id: int, samples: int) -> None:
    """Dry run: sample messages exactly as they would go out, the audience, the cost."""
    _bootstrap()
    from reports import preview
    from models import Campaign, connection
    from settings import get_settings

    settings = get_settings()
    with connection():
        if Campaign.get_or_none(Campaign.id == campaign_id) is None:
            raise click.ClickException(f"campaign {campaign_id} does not exist")
        result = preview(
            campaign_id, short_url_base=settings.short_url_base, default_region=settings.default_region,
            samples=samples, price_per_segment=settings.sms_segment_price,
        )
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
@click.argument("campaign_id", type=int)
@click.option("--at", "at", default=None, help="Start later: ISO time, e.g. 2026-12-01T09:00:00-05:00 (naive = UTC).")
def campaign_send(campaign_id: int, at: str | None) -> None:
    """Start the campaign now (or at --at); workers do the rest."""
    actors = _bootstrap()
    from models import connection

    when = None
    if at:
        try:
            parsed = dt.datetime.fromisoformat(at)
        except ValueError:
            raise click.ClickException(f"--at {at!r} is not an ISO date and time") from None
        when = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None) if parsed.tzinfo else parsed
    with connection():
        try:
            actors.start(campaign_id, when)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"campaign {campaign_id} " + (f"scheduled for {when:%Y-%m-%d %H:%M} UTC" if when else "started"))


@campaign.command("pause")
@click.argument("campaign_id", type=int)
@click.option("--reason", default="paused by an operator")
def campaign_pause(campaign_id: int, reason: str) -> None:
    """Stop new sends at once; pending customers stay pending."""
    actors = _bootstrap()
    from models import connection

    with connection():
        if not actors.pause(campaign_id, reason):
            raise click.ClickException(f"campaign {campaign_id} is not sending")
    click.echo(f"campaign {campaign_id} paused")


@campaign.command("resume")
@click.argument("campaign_id", type=int)
def campaign_resume(campaign_id: int) -> None:
    """Continue a paused campaign exactly where it stopped."""
    actors = _bootstrap()
    from models import connection

    with connection():
        if not actors.resume(campaign_id):
            raise click.ClickException(f"campaign {campaign_id} is not paused")
    click.echo(f"campaign {campaign_id} resumed")


@campaign.command("cancel")
@click.argument("campaign_id", type=int)
def campaign_cancel(campaign_id: int) -> None:
    """Cancel: every customer not yet sent is recorded as cancelled."""
    actors = _bootstrap()
    from models import connection

    with connection():
        cancelled = actors.cancel(campaign_id)
    if cancelled is None:
        raise click.ClickException(f"campaign {campaign_id} is already finished")
    click.echo(f"campaign {campaign_id} cancelled; {cancelled} unsent customers recorded as cancelled")


@campaign.command("status")
@click.argument("campaign_id", type=int)
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until the campaign finishes.")
@click.option("--interval", default=2.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def campaign_status(campaign_id: int, watch: bool, interval: float, as_json: bool) -> None:
    """Sent, failed, skipped, pending, delivered, rate, ETA and a progress bar."""
    _bootstrap()
    from reports import status_report
    from models import Campaign, CampaignStatus, connection

    while True:
        with connection():
            if Campaign.get_or_none(Campaign.id == campaign_id) is None:
                raise click.ClickException(f"campaign {campaign_id} does not exist")
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
    return "\n".join(lines)


@main.command()
def sweep() -> None:
    """Restart stalled campaigns once (the workers also do this every SWEEP_INTERVAL_S)."""
    actors = _bootstrap()
    from models import connection

    with connection():
        result = actors.sweep()
    click.echo(f"checked {result.checked} sending campaign(s); restarted {result.restarted or 'none'}")


main.add_command(customers)

if __name__ == "__main__":
    main()
