"""Where the tests, the benches and the fault cases find PostgreSQL and Redis: one pair of
variables, ``TEST_POSTGRES_URL`` and ``TEST_REDIS_URL``, moves all of them."""

from __future__ import annotations

import os

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
