"""Signing in to the dashboard, its sessions and its CSRF tokens.

- **Every dashboard URL needs a signed-in operator** but the sign-in page and the
  stylesheet: anything else redirects (302) to ``/dashboard/sign-in?next=<path>``; ``next``
  is followed only to a path under ``/dashboard`` (never another host).
- **Sessions** are Flask's signed cookies (``DASHBOARD_SECRET_KEY``), ``Secure``,
  ``HttpOnly``, ``SameSite=Lax``, on the path ``/dashboard`` only, and expire 12 hours after
  sign-in (the signature carries its time, so an old cookie is refused by the server, not
  only dropped by the browser). Signing in starts a new session (no fixation).
- **CSRF**: each session holds a random token; every form carries it in ``csrf_token``, and
  every POST whose token is missing or different is 403, the sign-in form's included.
- **Throttled**: failed sign-ins are counted per user name and per client address in
  Redis (``throttle.py``); past the limits an attempt is 429 with ``Retry-After``, its
  password unchecked, and with Redis away sign-in is 503 (closed).
- Sign-ins, failed ones and sign-outs are recorded as events (``events.record_event``) with
  the operator's name; the password never is. A throttled attempt is logged, not recorded
  (an attacker's flood would fill the table).
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import secrets

import redis

from flask import Blueprint, abort, redirect, render_template, request, session, url_for

from dashboard.accounts import Accounts
from dashboard.throttle import SignInThrottle, client_address
from events import record_event
from webguard import printable

logger = logging.getLogger(__name__)

SESSION_LIFETIME = dt.timedelta(hours=12)
#: Reachable without a session.
PUBLIC_ENDPOINTS = frozenset({"dashboard.sign_in", "dashboard.static"})
CSRF_FIELD = "csrf_token"
REDIS_AWAY = "sign-in is unavailable: cannot reach REDIS_URL; try again in a minute"


def session_config() -> dict:
    """The app's cookie settings for the dashboard's sessions."""
    return dict(SESSION_COOKIE_NAME="dashboard_session", SESSION_COOKIE_PATH="/dashboard", SESSION_COOKIE_SECURE=True,
                SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax", PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME)


def operator() -> str | None:
    """The signed-in operator's name, or None."""
    return session.get("operator")


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    sent = request.form.get(CSRF_FIELD, "")
    kept = session.get("csrf", "")
    if not sent or not kept or not hmac.compare_digest(sent.encode(), kept.encode()):
        abort(403, "the form's CSRF token is missing or wrong: reload the page and try again")


def safe_next(target: str | None) -> str:
    """``target`` if it is a path of the dashboard, else the dashboard's home."""
    if target and target.startswith("/dashboard") and not target.startswith("//") and "\\" not in target:
        return target.rstrip("?")
    return url_for("dashboard.campaigns")


def install(bp: Blueprint, *, accounts: Accounts, throttle: SignInThrottle) -> None:
    """The sign-in check and the CSRF check before every request of ``bp``, and the
    sign-in and sign-out pages (attempts counted by ``throttle``)."""

    @bp.before_request
    def require_operator():
        if request.endpoint not in PUBLIC_ENDPOINTS and operator() is None:
            query = request.query_string.decode("latin-1")
            return redirect(url_for("dashboard.sign_in", next=request.path + (f"?{query}" if query else "")))
        if request.method == "POST":
            check_csrf()
        return None

    @bp.context_processor
    def template_values() -> dict:
        return {"csrf_token": csrf_token, "operator": operator()}

    def page(error: str | None, status: int, headers: dict | None = None):
        return render_template("sign_in.html", error=error, next=request.args.get("next", "")), status, headers or {}

    @bp.route("/sign-in", methods=["GET", "POST"])
    def sign_in():
        if request.method != "POST":
            return page(None, 200)
        name = (request.form.get("name") or "").strip()
        address = client_address(request.headers.get("X-Forwarded-For"), request.remote_addr)
        try:
            attempt = throttle.attempt(name, address)
        except redis.RedisError as exc:
            logger.error("sign-in refused: the throttle cannot reach REDIS_URL (%s)", type(exc).__name__)
            return page(REDIS_AWAY, 503)
        if attempt.refused:
            logger.warning("sign-in as %s from %s refused: too many failures (%s s left)", printable(name, 64),
                           printable(address, 64), attempt.wait_s)
            return page(f"too many failed sign-ins: try again in {attempt.wait_text()}", 429,
                        {"Retry-After": str(attempt.wait_s)})
        signed_in = accounts.verify(name, request.form.get("password") or "")
        if signed_in is None:
            record_event(None, "dashboard_sign_in_failed", f"failed sign-in as {printable(name, 64)}", level="warning")
            return page("wrong name or password" if accounts else "no operator accounts: set DASHBOARD_USERS", 401)
        try:
            throttle.succeeded(attempt)
        except redis.RedisError:  # the attempt stays counted as a failure until its window passes
            logger.warning("sign-in of %s: could not take the attempt back from the throttle", signed_in)
        session.clear()
        session.permanent = True
        session["operator"] = signed_in
        session["csrf"] = secrets.token_urlsafe(32)
        record_event(None, "dashboard_sign_in", f"{signed_in} signed in", level="info")
        return redirect(safe_next(request.args.get("next")))

    @bp.post("/sign-out")
    def sign_out():
        name = operator()
        session.clear()
        record_event(None, "dashboard_sign_out", f"{name} signed out", level="info")
        return redirect(url_for("dashboard.sign_in"))
