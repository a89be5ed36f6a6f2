"""The operators' dashboard: server-rendered pages under ``/dashboard`` in the web process
(``web.create_app`` registers it), a Flask blueprint.

- ``auth.py``: sign-in, sessions, CSRF; ``accounts.py``: ``DASHBOARD_USERS``.
- ``pages.py``: the campaigns, a campaign, a draft's preview, a customer.
- ``actions.py``: create, test send, send, schedule, pause, resume, cancel, retry, each
  through the function the CLI calls, recorded with the operator's name.
- ``figures.py``, ``charts.py``, ``reasons.py``: what the campaign page shows, its SVG
  charts (drawn on the server: no script, no library), what each code means.

``blueprint.register(app, settings)`` serves it. Without ``DASHBOARD_SECRET_KEY`` the
dashboard is not served: every ``/dashboard`` URL
answers 503 saying so, and the webhooks and short links work as before.
"""
