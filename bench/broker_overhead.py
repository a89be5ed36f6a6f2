"""What Dramatiq's own machinery costs a worker process per message on the Redis broker:
fetch, decode, the worker thread's hand-off, middleware hooks and ack, with an actor that
only waits (as a send waits on Twilio), against the same waits in plain threads.

    python -m bench.broker_overhead [--messages 6000] [--threads 48] [--wait-ms 200] [--rounds 3]

Each round, in this process: (a) ``--messages`` waits of ``--wait-ms`` run by ``--threads``
plain threads (the baseline: what waiting itself costs), then (b) the same number of
messages of an actor that waits as long, enqueued ahead on a fresh namespace and run by a
``dramatiq.Worker`` of ``--threads`` threads on ``RedisBroker`` with its default
middleware. Prints the CPU time of this process per message for each, the difference
(Dramatiq's own cost), and the broker's Lua calls per message (from Redis's
``commandstats``, reset before (b): acks, fetches, the consumers' polls). The medians of
the rounds end the output.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid

import dramatiq
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker

from bench.common import REDIS_URL, spread_over_threads


def plain_threads(messages: int, threads: int, wait_s: float) -> float:
    """CPU ms per wait of ``messages`` waits run by ``threads`` threads."""
    cpu = time.process_time()
    spread_over_threads(messages, threads, lambda: time.sleep(wait_s))
    return (time.process_time() - cpu) * 1000 / messages


def dramatiq_worker(messages: int, threads: int, wait_s: float) -> tuple[float, float]:
    """(CPU ms per message, Lua calls per message) of a Dramatiq worker running them."""
    client = redis.Redis.from_url(REDIS_URL)
    broker = RedisBroker(client=client, namespace=f"bench-broker-{uuid.uuid4().hex[:8]}")

    @dramatiq.actor(broker=broker, queue_name="wait", actor_name="wait")
    def wait(n):
        time.sleep(wait_s)

    try:
        for n in range(messages):
            wait.send(n)
        client.config_resetstat()
        worker = Worker(broker, worker_threads=threads, worker_timeout=100)
        cpu = time.process_time()
        worker.start()
        broker.join("wait")
        cpu_ms = (time.process_time() - cpu) * 1000 / messages
        calls = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0) / messages
        worker.stop()
        return cpu_ms, calls
    finally:
        broker.flush_all()
        broker.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=48)
    parser.add_argument("--wait-ms", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    wait_s = args.wait_ms / 1000
    bases, runs, calls = [], [], []
    for round_no in range(1, args.rounds + 1):
        base = plain_threads(args.messages, args.threads, wait_s)
        run, lua = dramatiq_worker(args.messages, args.threads, wait_s)
        bases.append(base)
        runs.append(run)
        calls.append(lua)
        print(f"round {round_no}: plain threads {base:.3f} ms CPU per wait; Dramatiq worker {run:.3f} ms per message "
              f"({lua:.2f} Lua calls); Dramatiq's own {run - base:.3f} ms", flush=True)
    base, run = statistics.median(bases), statistics.median(runs)
    print(f"{args.messages} messages, {args.threads} threads, {args.wait_ms} ms each: plain threads {base:.3f} ms, "
          f"Dramatiq worker {run:.3f} ms CPU per message (medians of {args.rounds}), {run / base:.1f}x; "
          f"Dramatiq's own {run - base:.3f} ms; {statistics.median(calls):.2f} Lua calls per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
