"""``python -m cli dashboard hash-password``: a password hash for ``DASHBOARD_USERS``."""

from __future__ import annotations

import click

from cli_checks import Text


@click.group("dashboard")
def dashboard() -> None:
    """The operators' web dashboard (/dashboard in the web process)."""


@dashboard.command("hash-password")
@click.option("--name", default=None, type=Text(), help="Print a whole DASHBOARD_USERS entry, name:<hash>.")
@click.password_option("--password", prompt="Password", help="Asked for (twice) when left out.")
def hash_password(name: str | None, password: str) -> None:
    """Print an scrypt hash of the password (werkzeug.security), for DASHBOARD_USERS."""
    from dashboard.accounts import hash_password as make_hash
    from settings_checks import OPERATOR_NAME

    if name is not None and not OPERATOR_NAME.fullmatch(name):
        raise click.ClickException("--name must be 1 to 64 letters, digits, '.', '_', '@' or '-'")
    try:
        hashed = make_hash(password)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name}:{hashed}" if name else hashed)
