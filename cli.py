"""The operator's command line: ``python -m cli --help``.

Every command is a thin wrapper over a plain function, so the same things can be done
from a Python shell.
"""

from __future__ import annotations

import json
import sys

import click

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
    from models import create_schema

    create_schema()
    click.echo("schema ready")


@main.command("seed-demo")
def seed_demo_command() -> None:
    """Add the demo customers and a draft campaign; prints the campaign id."""
    _bootstrap()
    from demo import seed_demo
    from models import connection, create_schema

    create_schema()
    with connection():
        click.echo(seed_demo())


@main.group()
def campaign() -> None:
    """Create, send and inspect campaigns."""


@campaign.command("create")
@click.option("--name", required=True)
@click.option("--template", required=True, help="Placeholders: {first_name} {last_name} {name} {short_url}.")
def campaign_create(name: str, template: str) -> None:
    """Create a draft campaign after checking its template."""
    _bootstrap()
    from campaigns import check_campaign
    from errors import MessageTooLong, TemplateError
    from models import Campaign, connection
    from settings import get_settings

    with connection():
        draft = Campaign(name=name, template=template)
        try:
            check_campaign(draft, get_settings().short_url_base)
        except (TemplateError, MessageTooLong) as exc:
            raise click.ClickException(exc.reason) from None
        draft.save()
        click.echo(draft.id)


@campaign.command("send")
@click.argument("campaign_id", type=int)
def campaign_send(campaign_id: int) -> None:
    """Enqueue the campaign's fan-out; workers do the rest."""
    actors = _bootstrap()
    actors.send_campaign.send(campaign_id)
    click.echo(f"campaign {campaign_id} enqueued")


@campaign.command("pause")
@click.argument("campaign_id", type=int)
@click.option("--reason", default="paused by an operator")
def campaign_pause(campaign_id: int, reason: str) -> None:
    """Stop new sends; pending customers stay pending."""
    _bootstrap()
    from campaigns import pause_campaign
    from models import connection

    with connection():
        if not pause_campaign(campaign_id, reason):
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


@campaign.command("status")
@click.argument("campaign_id", type=int)
def campaign_status(campaign_id: int) -> None:
    """Print the campaign's status and analytics as JSON."""
    _bootstrap()
    from campaigns import analytics_dict
    from models import Campaign, connection

    with connection():
        if Campaign.get_or_none(Campaign.id == campaign_id) is None:
            raise click.ClickException(f"campaign {campaign_id} does not exist")
        json.dump(analytics_dict(campaign_id), sys.stdout, indent=2)
        click.echo()


@main.command()
def sweep() -> None:
    """Restart stalled campaigns once (the workers also do this every SWEEP_INTERVAL_S)."""
    actors = _bootstrap()
    from models import connection

    with connection():
        result = actors.sweep()
    click.echo(f"checked {result.checked} sending campaign(s); restarted {result.restarted or 'none'}")


if __name__ == "__main__":
    main()
