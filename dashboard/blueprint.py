"""The dashboard's blueprint on the web app: its pages, actions, sessions and headers (see
``dashboard/__init__.py``)."""


from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, abort

from actors.stops import held_ms
from dashboard import actions, auth, pages
from dashboard.accounts import Accounts
from dashboard.throttle import SignInThrottle
from settings import Settings

logger = logging.getLogger(__name__)

PREFIX = "/dashboard"
OFF = "the dashboard is off: set DASHBOARD_SECRET_KEY (at least 32 characters) to serve it"
#: The pages' own policy: their stylesheet and forms from this origin, no script at all.
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                           "base-uri 'none'; frame-ancestors 'none'")


def register(app: Flask, settings: Settings, *, sign_in_throttle: SignInThrottle | None = None) -> None:
    """Serve the dashboard on ``app`` (or, without a secret key, a 503 under its prefix).
    Sign-in attempts are counted by ``sign_in_throttle`` (default: the settings' limits on
    ``REDIS_URL``)."""
    if not settings.dashboard_secret_key:
        logger.warning("DASHBOARD_SECRET_KEY is not set: the dashboard is not served")

        def off(rest: str = ""):
            abort(503, OFF)

        app.add_url_rule(PREFIX, "dashboard_off", off, methods=["GET", "POST"])
        app.add_url_rule(PREFIX + "/", "dashboard_off_home", off, methods=["GET", "POST"])
        app.add_url_rule(PREFIX + "/<path:rest>", "dashboard_off_path", off, methods=["GET", "POST"])
        return
    accounts = Accounts(settings.dashboard_users)
    if not accounts:
        logger.warning("DASHBOARD_USERS is not set: nobody can sign in to the dashboard")
    app.secret_key = settings.dashboard_secret_key.reveal()
    app.config.update(auth.session_config())
    bp = Blueprint("dashboard", __name__, url_prefix=PREFIX, template_folder="templates", static_folder="static")
    auth.install(bp, accounts=accounts, throttle=sign_in_throttle or SignInThrottle.from_settings(settings))
    pages.install(bp, settings, held_ms=held_ms)  # Twilio's holds, from the broker's rate limiter
    actions.install(bp, settings)

    @bp.after_request
    def page_headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Robots-Tag"] = "noindex, nofollow"
        return response

    app.register_blueprint(bp)
