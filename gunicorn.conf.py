"""gunicorn's settings for the web process (the Procfile's ``web`` line).

**gevent workers**: a connection costs a greenlet, not a thread, so clients that send their
body slowly (or never) cannot starve the webhooks: with the threaded worker this replaced
(2 processes x 4 threads), 8 connections sending a byte a second blocked every request,
inbound STOPs included. A body still arriving ``webguard.BODY_TIMEOUT_S`` after its headers
is answered 408, and headers are waited for at most ``keepalive`` seconds (gevent's
timeout around gunicorn's parser). Database work stays bounded by ``web.DB_SLOTS`` per
process, and psycopg2 waits through gevent (``post_worker_init``), so a slow query holds
its own request only.

This file imports nothing of the project: it runs in gunicorn's master, before the
workers are forked and patched by gevent, and peewee's thread-locals must be created
after the patch (in the worker, where the app is loaded) to be per-greenlet.
"""

import os
import sys

from gunicorn.http import wsgi

bind = [f"0.0.0.0:{os.environ.get('PORT', '8000')}"]
workers = 2
worker_class = "gevent"
worker_connections = 1000
#: Seconds a kept-alive connection may stay idle, and a request's headers may take.
keepalive = 2
#: Heroku sends SIGKILL 30 s after SIGTERM: requests in flight finish before that.
graceful_timeout = 20
timeout = 30
#: No access log: Heroku's router logs every request (path and status) already, and the
#: app's own lines escape what they show of a request (``webguard.printable``).
accesslog = None
#: gunicorn's control socket (``gunicornc``: worker counts, reloads) is not needed on a dyno,
#: and two gunicorns of one user (the tests, honcho) would share its default path.
control_socket_disable = True


def _without_server_header(default_headers):
    """gunicorn writes ``Server: gunicorn`` on every answer and has no setting for it (its
    maintainers declined one, benoitc/gunicorn#825): the line is left out of the headers it
    writes. tests/test_web_gunicorn.py checks it through a real gunicorn."""

    def headers(self):
        return [line for line in default_headers(self) if not line.lower().startswith("server:")]

    return headers


wsgi.Response.default_headers = _without_server_header(wsgi.Response.default_headers)


def post_worker_init(worker):
    """psycopg2 is C: without a wait callback each query would block the worker's every
    greenlet until it returns. With gevent's, a query waits like any socket does."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        return
    import psycopg2
    from psycopg2 import extensions
    from gevent.socket import wait_read, wait_write

    def wait(conn, timeout=None):
        while True:
            state = conn.poll()
            if state == extensions.POLL_OK:
                return
            if state == extensions.POLL_READ:
                wait_read(conn.fileno(), timeout=timeout)
            elif state == extensions.POLL_WRITE:
                wait_write(conn.fileno(), timeout=timeout)
            else:
                raise psycopg2.OperationalError(f"bad state from poll: {state}")

    extensions.set_wait_callback(wait)
