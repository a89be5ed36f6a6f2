"""Audience fan-out bench: a campaign to a tag held by 10% of the customers, against the
unfiltered fan-out of just those customers.

    python -m bench.fanout_audience [--customers 100000] [--repeat 3]

On PostgreSQL, in this process, each ``--repeat`` times:
 (a) baseline: a database holding only the tag's members (customers / 10), fanned out with
     no audience;
 (b) a database holding every customer, 10% of them tagged ``vip``, fanned out to
     ``--tag vip``.
Both record the same number of rows. Prints the medians and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from bench.common import reset_database


def _seed(count: int, *, tag_every: int | None) -> int:
    from models import Campaign, CustomerTag, database
    from tests.factories import make_campaign, make_customers

    reset_database()
    database.connect(reuse_if_open=True)
    ids = make_customers(count)
    campaign_id = make_campaign()
    if tag_every:
        from audience import Audience

        members = ids[::tag_every]
        for start in range(0, len(members), 1000):
            CustomerTag.insert_many([(cid, "vip") for cid in members[start:start + 1000]],
                                    fields=[CustomerTag.customer, CustomerTag.tag]).execute()
        Campaign.update(audience=Audience.parse(all_of=["vip"]).to_json()).where(Campaign.id == campaign_id).execute()
    return campaign_id


def _fan_out(campaign_id: int) -> tuple[float, int]:
    import fanout

    started = time.perf_counter()
    result = fanout.fan_out(campaign_id, short_url_base="https://x.test/q", batch_size=500)
    return time.perf_counter() - started, result.recorded


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    members = args.customers // 10
    bases, runs = [], []
    for _ in range(args.repeat):
        base, base_rows = _fan_out(_seed(members, tag_every=None))
        run, run_rows = _fan_out(_seed(args.customers, tag_every=10))
        assert base_rows == run_rows == members, (base_rows, run_rows)
        bases.append(base)
        runs.append(run)
    base, run = statistics.median(bases), statistics.median(runs)
    print(f"{members:,} recipients: unfiltered fan-out of them alone {base:6.2f} s; to the tag among "
          f"{args.customers:,} customers {run:6.2f} s; ratio {run / base:4.2f}x (medians of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
