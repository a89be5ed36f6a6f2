"""Jitter bench: is the rate limit exact where Twilio counts when every request is delayed
on its way by a random 0-200 ms? This project's rule (``RATE_LIMIT_BOUND=fastest``: a unit
is held a window past its request's answer less the fastest answer the process has timed)
against holding it a window past the answer itself (``answer``) and the rule before both
(a window past the slot plus a fixed ``RATE_LIMIT_MARGIN_MS`` of 50 ms, ``slot``), on the
same load, in the same run.

    python -m bench.jitter [--messages 300] [--limit 20] [--window 2] [--max-delay-ms 200]

Each run: two ``dramatiq`` worker processes of 8 threads on the real Redis broker, the real
twilio client, talking to the fake Twilio (tests/fake_twilio.py) through a TCP proxy that
holds each request a random 0 to ``--max-delay-ms`` before passing it on (each request: the
first bytes after the previous answer, or of a new connection). The fake stamps a request
when it has read it, after the delay: those stamps are where the limit is judged.

Utilisation U = sent / (limit x elapsed windows), over whole windows: from the first stamp,
K = floor((last stamp - first stamp) / window) back-to-back windows are counted, and U is
the stamps inside them divided by limit x K (the last, partial window is left out). Each of
those windows may hold at most the limit, so a schedule that keeps it never scores above
100 %, and one that fills every window (L at once, or evenly spaced) scores 100 %.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import tempfile
import threading
import time

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from bench.common import REDIS_URL, Workers, delete_namespace, median, namespace, sliding_window_max, wait_until, worker_env
from tests.fake_twilio import FakeTwilio


class DelayingProxy:
    """A TCP proxy on 127.0.0.1 that holds each request a random 0..max_delay_s before
    forwarding it (and the rest of that request with it, in order); answers go back at once.

    Parameters:
      target(tuple): (host, port) of the server.
      max_delay_s(float): The longest delay.
      seed(int): Seed of the delays.
    """

    def __init__(self, target: tuple[str, int], *, max_delay_s: float, seed: int = 7) -> None:
        self.target = target
        self.max_delay_s = max_delay_s
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True, name="jitter-proxy").start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()

    def _delay(self) -> float:
        with self._rng_lock:
            return self._rng.uniform(0, self.max_delay_s)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            state = {"new_request": True}
            threading.Thread(target=self._upstream, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, state), daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket, state: dict) -> None:
        try:
            while data := client.recv(65536):
                if state["new_request"]:
                    state["new_request"] = False
                    time.sleep(self._delay())
                server.sendall(data)
        except OSError:
            pass
        finally:
            _close(server)

    def _downstream(self, server: socket.socket, client: socket.socket, state: dict) -> None:
        try:
            while data := server.recv(65536):
                state["new_request"] = True  # the client sends its next request after this answer
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def run(fake: FakeTwilio, proxy: DelayingProxy, args, tmp: str, *, bound: str) -> dict:
    from models import Campaign, CampaignStatus, Message as Row, MessageStatus, configure_database, database
    from schema import create_schema
    from tests.factories import make_campaign, make_customers

    fake.reset()
    ns = namespace(f"bench-jitter-{bound}")
    database_url = f"sqlite:///{tmp}/{ns}.db"
    configure_database(database_url)
    create_schema()
    with database.connection_context():
        make_customers(args.messages)
        campaign_id = make_campaign()
    env = worker_env(fake, ns=ns, database_url=database_url, TWILIO_API_BASE_URL=proxy.base_url,
                     SMS_RATE_LIMIT=f"{args.limit} per {args.window} seconds", RATE_LIMIT_BOUND=bound,
                     RATE_LIMIT_MARGIN_MS="50" if bound == "slot" else os.environ.get("RATE_LIMIT_MARGIN_MS", "5"))
    workers = Workers("actors", env, f"{tmp}/{ns}.log")
    client = redis.Redis.from_url(REDIS_URL)
    broker = RedisBroker(url=REDIS_URL, namespace=ns)
    try:
        time.sleep(args.warmup_s)
        # A limiter that has served for long (the epoch wait is not what is measured here).
        client.set(f"{ns}:ratelimit:epoch", 0)
        broker.enqueue(Message(queue_name="campaigns", actor_name="send_campaign", args=(campaign_id,), kwargs={}, options={}))

        def finished():
            with database.connection_context():
                return Campaign.get_by_id(campaign_id).status in CampaignStatus.FINISHED

        done = wait_until(finished, args.timeout_s, 0.2)
        with database.connection_context():
            sent = Row.select().where(Row.status == MessageStatus.SENT).count()
        stamps = sorted(m["accepted_at"] for m in fake.messages)
        return {"finished": done, "sent": sent, "stamps": stamps, "log": workers.tail()}
    finally:
        workers.stop()
        delete_namespace(client, ns)
        broker.close()


def utilisation(stamps: list[float], limit: int, window_s: float) -> float:
    """Stamps in the whole windows from the first stamp / (limit x their number)."""
    windows = int((stamps[-1] - stamps[0]) // window_s) if stamps else 0
    if windows == 0:
        return 0.0
    inside = sum(1 for t in stamps if t < stamps[0] + windows * window_s)
    return inside / (limit * windows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--window", type=int, default=2)
    parser.add_argument("--max-delay-ms", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1, help="runs of each design (medians printed)")
    parser.add_argument("--timeout-s", type=float, default=240.0)
    parser.add_argument("--warmup-s", type=float, default=3.0, help="let the workers boot before the clock starts")
    parser.add_argument("--skip-today", action="store_true", help="measure only this project's rule")
    args = parser.parse_args(argv)
    os.environ["dramatiq_worker_timeout"] = "100"  # as in the Procfile
    print(f"load: {args.messages} messages, limit {args.limit} per {args.window} s, 2 worker processes x 8 threads, "
          f"Redis broker, every request delayed 0-{args.max_delay_ms} ms before the fake stamps it")
    designs = [("fastest", "this project (held a window past the answer less the fastest answer)"),
               ("answer", "held a window past the answer")]
    if not args.skip_today:
        designs.append(("slot", "today's design (held a window past the slot + 50 ms)"))
    results: dict[str, list[tuple[int, float]]] = {bound: [] for bound, _ in designs}
    ok = True
    with tempfile.TemporaryDirectory() as tmp, FakeTwilio() as fake:
        host, port = fake.base_url.removeprefix("http://").split(":")
        proxy = DelayingProxy((host, int(port)), max_delay_s=args.max_delay_ms / 1000)
        try:
            for i in range(args.runs):
                for bound, name in designs:
                    result = run(fake, proxy, args, tmp, bound=bound)
                    most = sliding_window_max(result["stamps"], args.window)
                    used = utilisation(result["stamps"], args.limit, args.window)
                    results[bound].append((most, used))
                    print(f"run {i + 1} {name}: sent {result['sent']} of {args.messages} (fake: {len(result['stamps'])}), "
                          f"max in a {args.window} s window {most}, utilisation {used:.1%}, finished={result['finished']}")
                    if bound != "slot" and (not result["finished"] or result["sent"] != args.messages):
                        ok = False
                        print(result["log"], file=sys.stderr)
        finally:
            proxy.stop()
    for bound, name in reversed(designs):
        most = max(m for m, _u in results[bound])
        used = median([u for _m, u in results[bound]])
        label = f"jitter 0-{args.max_delay_ms} ms at {args.limit} per {args.window} s"
        prefix = {"fastest": "", "answer": "held past the answer: ", "slot": "today's design: "}[bound]
        print(f"{prefix}{label}: max in a {args.window} s window {most}, utilisation {used:.0%}"
              + (f" (median of {args.runs} runs; max over them)" if args.runs > 1 else ""))
    exact = all(max(m for m, _u in results[bound]) <= args.limit for bound in ("fastest", "answer"))
    return 0 if ok and exact else 1


if __name__ == "__main__":
    sys.exit(main())
