"""The dashboard's sign-in throttle: failed attempts counted per user name and per client
address in Redis, shared by every web process and dyno.

- **The rule.** An attempt is refused (429, ``Retry-After``) while its user name has
  ``DASHBOARD_SIGN_IN_FAILURES_PER_NAME`` (5) failures in the last
  ``DASHBOARD_SIGN_IN_WINDOW_S`` (15 minutes), or its address
  ``DASHBOARD_SIGN_IN_FAILURES_PER_ADDRESS`` (20); a refused attempt checks no password
  and counts nothing, so the refusal lifts when the oldest failure that keeps it is a
  window old, however long the attacker goes on. The name counts whether or not an
  operator has it, and the refusal reads the same, so it tells nobody which names exist.
- **A success resets nothing.** It only takes its own attempt back: the failures of its
  name from another address stay, so signing in from the office gives an attacker at
  another address no fresh tries.
- **Counted before the password is checked.** Each attempt is first taken as a failure,
  in one Lua script that also checks both counts, and given back only if the password is
  right: concurrent attempts cannot pass the limit together, and an attempt whose process
  dies while checking counts as failed. Each attempt has a random id, so a script that
  redis-py runs again after a timeout takes nothing twice.
- **Keys.** A sorted set per name and per address (``<namespace>:dashboard-sign-in:``,
  hashed: no typed name, which may be a password typed in the wrong field, is stored),
  scored with the attempt's time in ms from the injected clock (each web process's own;
  seconds of skew move a 15-minute window by seconds), expiring with the window.
- **The address** is the last entry of ``X-Forwarded-For``, the one the router in front of
  gunicorn appended (the README requires one); the entries before it are the client's to
  write. An IPv6 client counts as its /64, which one host usually holds whole.
- **Redis down: closed.** An attempt the throttle cannot count is refused (503), no
  password checked: otherwise an outage would be unlimited guessing. Operators already
  signed in keep their sessions (cookies, no Redis), and the workers, whose broker is that
  Redis, are not sending meanwhile anyway.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import secrets
import time
from dataclasses import dataclass
from typing import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from settings import Settings

#: A sign-in answers within this even when Redis hangs (connect, then each read).
REDIS_TIMEOUT_S = 2.0

# KEYS: the name's set, the address's set. ARGV: now_ms, window_ms, the name's limit, the
# address's limit, the attempt's id. Returns 0 when the attempt is taken (added to both), or
# the ms until it could be: when the oldest failure that keeps a count at its limit ages out.
RESERVE = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local limits = {tonumber(ARGV[3]), tonumber(ARGV[4])}
for i = 1, 2 do redis.call('zremrangebyscore', KEYS[i], '-inf', now - window) end
if redis.call('zscore', KEYS[1], ARGV[5]) then return 0 end
local wait = 0
for i = 1, 2 do
  local n = redis.call('zcard', KEYS[i])
  if n >= limits[i] then
    local kept = redis.call('zrange', KEYS[i], n - limits[i], n - limits[i], 'WITHSCORES')
    wait = math.max(wait, tonumber(kept[2]) + window - now)
  end
end
if wait > 0 then return wait end
for i = 1, 2 do
  redis.call('zadd', KEYS[i], now, ARGV[5])
  redis.call('pexpire', KEYS[i], window)
end
return 0
"""


def client_address(forwarded_for: str | None, remote_addr: str | None) -> str:
    """The client's address as counted: the last ``X-Forwarded-For`` entry (else the
    socket's peer), an IPv6 one as its /64."""
    entries = [entry.strip() for entry in (forwarded_for or "").split(",") if entry.strip()]
    text = entries[-1] if entries else (remote_addr or "unknown")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text[:64]
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass(frozen=True)
class Attempt:
    """One sign-in attempt: taken (``wait_s`` 0, ``token`` its id) or refused for ``wait_s``."""

    token: str
    keys: tuple[str, str]
    wait_s: int = 0

    @property
    def refused(self) -> bool:
        return self.wait_s > 0

    def wait_text(self) -> str:
        minutes = math.ceil(self.wait_s / 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"


class SignInThrottle:
    """Counts failed sign-ins (see the module).

    Parameters:
        client: the Redis client (every web process counts in the same server).
        prefix: the keys' prefix (``<DRAMATIQ_NAMESPACE>:dashboard-sign-in``).
        failures_per_name: failures of one user name in a window that refuse the next.
        failures_per_address: the same for one client address.
        window_s: the sliding window.
        clock: epoch seconds now.
    """

    def __init__(self, *, client: redis.Redis, prefix: str, failures_per_name: int = 5,
                 failures_per_address: int = 20, window_s: float = 900, clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.prefix = prefix
        self.failures_per_name = failures_per_name
        self.failures_per_address = failures_per_address
        self.window_ms = int(window_s * 1000)
        self.clock = clock
        self._reserve = client.register_script(RESERVE)

    @classmethod
    def from_settings(cls, settings: Settings, *, client: redis.Redis | None = None,
                      clock: Callable[[], float] = time.time) -> "SignInThrottle":
        """The throttle of ``settings`` on ``client``, else on a client of its own for
        ``REDIS_URL`` with short timeouts (no connection is made until the first attempt)."""
        if client is None:
            options = {"socket_connect_timeout": REDIS_TIMEOUT_S, "socket_timeout": REDIS_TIMEOUT_S,
                       "retry": Retry(NoBackoff(), 1)}
            if settings.redis_url.startswith("rediss://"):
                options["ssl_cert_reqs"] = "required" if settings.redis_tls_verify == "on" else "none"
            client = redis.Redis.from_url(settings.redis_url, **options)
        return cls(client=client, prefix=f"{settings.dramatiq_namespace}:dashboard-sign-in",
                   failures_per_name=settings.dashboard_sign_in_failures_per_name,
                   failures_per_address=settings.dashboard_sign_in_failures_per_address,
                   window_s=settings.dashboard_sign_in_window_s, clock=clock)

    def _key(self, kind: str, value: str) -> str:
        return f"{self.prefix}:{kind}:{hashlib.sha256(value.encode('utf-8', 'replace')).hexdigest()[:32]}"

    def attempt(self, name: str, address: str) -> Attempt:
        """Take an attempt for ``name`` from ``address`` as a failure, or refuse it; raises
        ``redis.RedisError`` when Redis does not answer."""
        keys = (self._key("name", name), self._key("address", address))
        token = secrets.token_hex(12)
        wait_ms = int(self._reserve(keys=list(keys), args=[
            int(self.clock() * 1000), self.window_ms, self.failures_per_name, self.failures_per_address, token]))
        return Attempt(token, keys, wait_s=math.ceil(wait_ms / 1000) if wait_ms > 0 else 0)

    def succeeded(self, attempt: Attempt) -> None:
        """The attempt signed in: it is no failure (the others stay counted)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key in attempt.keys:
                pipe.zrem(key, attempt.token)
            pipe.execute()
