"""What one request to Twilio costs a worker process, by client: twilio's own client on
``requests`` from many threads (the baseline), the same ``Client`` on this project's
transport (``twilio_http.SignalHttpClient``, on ``urllib3``: the send path's), and twilio's
async client on ``aiohttp`` from one event loop (what Dramatiq's AsyncIO middleware with
async actors would use), all against the fake Twilio answering in 200 ms, each in a
process of its own, in turn, round after round.

    python -m bench.http_clients [--in-flight 50] [--requests 3000]

Prints requests a second and the client process's CPU time per request, each round's and
the medians, and the project's transport's median CPU as a ratio of the baseline's. (Dramatiq's async
actors do not decouple in-flight requests from threads: ``dramatiq.asyncio.EventLoopThread
.run_coroutine`` blocks the worker thread until the coroutine ends, so a process still keeps
at most ``--threads`` messages in flight; only the HTTP client's cost could differ.)
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time

from bench.common import FROM_NUMBER, spread_over_threads
from tests.fake_twilio import FakeTwilio


def _threads(base_url: str, sid: str, token: str, in_flight: int, n: int, out, kind: str = "threads") -> None:
    from requests.adapters import HTTPAdapter
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    from twilio_http import SignalHttpClient

    if kind == "project":
        http = SignalHttpClient(timeout=10, pool_maxsize=in_flight)
    else:
        http = TwilioHttpClient(timeout=10)
        http.session.mount("http://", HTTPAdapter(pool_maxsize=in_flight))
    client = Client(sid, token, http_client=http)
    client.api.base_url, client.edge, client.region = base_url, None, None
    cpu, wall = time.process_time(), time.monotonic()
    spread_over_threads(n, in_flight, lambda: client.messages.create(to="+15550100001", from_=FROM_NUMBER, body="bench"))
    out.put((n / (time.monotonic() - wall), (time.process_time() - cpu) * 1000 / n))


def _asyncio(base_url: str, sid: str, token: str, in_flight: int, n: int, out) -> None:
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.rest import Client

    async def main() -> tuple[float, float]:
        http = AsyncTwilioHttpClient(timeout=10)
        client = Client(sid, token, http_client=http)
        client.api.base_url, client.edge, client.region = base_url, None, None
        left = [n]

        async def run() -> None:
            while left[0] > 0:
                left[0] -= 1
                await client.messages.create_async(to="+15550100001", from_=FROM_NUMBER, body="bench")

        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.gather(*(run() for _ in range(in_flight)))
        result = (n / (time.monotonic() - wall), (time.process_time() - cpu) * 1000 / n)
        await http.close()
        return result

    out.put(asyncio.run(main()))


def measure(kind: str, fake: FakeTwilio, in_flight: int, n: int) -> tuple[float, float]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    args = (fake.base_url, fake.account_sid, fake.auth_token, in_flight, n, out)
    if kind == "asyncio":
        proc = ctx.Process(target=_asyncio, args=args)
    else:
        proc = ctx.Process(target=_threads, args=args + (kind,))
    proc.start()
    result = out.get(timeout=600)
    proc.join(30)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    labels = {"threads": "requests, threads", "project": "urllib3, threads", "asyncio": "aiohttp, event loop"}
    cpu: dict[str, list[float]] = {kind: [] for kind in labels}
    rates: dict[str, list[float]] = {kind: [] for kind in labels}
    with FakeTwilio(server="async", latency_s=0.2) as fake:
        for round_no in range(1, args.rounds + 1):
            for kind, label in labels.items():
                rate, cpu_ms = measure(kind, fake, args.in_flight, args.requests)
                cpu[kind].append(cpu_ms)
                rates[kind].append(rate)
                print(f"round {round_no}: {label:20} {args.in_flight} in flight: {rate:6.0f} req/s, "
                      f"{cpu_ms:.2f} ms CPU per request", flush=True)
    for kind, label in labels.items():
        print(f"median: {label:20} {statistics.median(rates[kind]):6.0f} req/s, "
              f"{statistics.median(cpu[kind]):.2f} ms CPU per request")
    ratio = statistics.median(cpu["project"]) / statistics.median(cpu["threads"])
    print(f"the project's transport: {ratio:.2f}x the CPU per request of twilio's default client (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
