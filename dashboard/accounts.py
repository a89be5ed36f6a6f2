"""The dashboard's operator accounts: ``DASHBOARD_USERS`` (``name:<hash>`` entries, hashed
by werkzeug.security with scrypt, or pbkdf2), checked in constant time whether or not the
name exists."""

from __future__ import annotations

import functools

from werkzeug.security import check_password_hash, generate_password_hash

from settings_checks import dashboard_users


@functools.cache
def _unknown() -> str:
    """Checked when the name is unknown, so that a wrong name takes as long as a wrong password."""
    return generate_password_hash("not a password of anyone", method="scrypt")


def hash_password(password: str) -> str:
    """A hash for ``DASHBOARD_USERS`` (scrypt, werkzeug's default parameters)."""
    if not password:
        raise ValueError("the password is empty")
    return generate_password_hash(password, method="scrypt")


class Accounts:
    def __init__(self, users_setting: str) -> None:
        self.users = dashboard_users(users_setting or "")

    def __bool__(self) -> bool:
        return bool(self.users)

    def verify(self, name: str, password: str) -> str | None:
        """The operator's name if ``password`` is theirs, else None."""
        hashed = self.users.get(name)
        ok = check_password_hash(hashed or _unknown(), password or "")
        return name if ok and hashed is not None else None
