"""Names with accents against the one-segment rule: the share of messages failing
``too_long`` under each overflow policy, on a generated list of a chain with stores in New
York, Chicago, Montreal and Paris, and the preview of the campaign as an operator sees it.

    python -m bench.accent_mix [--customers 4000] [--seed 7]

About a quarter of the names carry a letter GSM-7 lacks (ë, á, ï, í, Ł, ễ, ç, in the
proportions a real list showed), some a letter GSM-7 has (é, ü); the template fits one
GSM-7 segment with any ASCII name. Imports the list into a fresh SQLite database with the
project's importer, creates one campaign per policy and previews each (nothing is sent).
Prices: ``SMS_SEGMENT_PRICE`` for the US and ``SMS_PRICES`` for the others (defaults
below, for the demonstration only: use your own).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile

from bench.common import ROOT  # noqa: F401  (puts the project on the path)

#: (weight, first names): the accented ones by the letter GSM-7 lacks.
NAMES = [
    (760, ["Emma", "Olivia", "Liam", "Noah", "Ava", "Lucas", "Mia", "Ethan", "Sofia", "Jack", "Leo", "Nora"]),
    (80, ["Zoë", "Chloë", "Noël", "Joëlle"]),
    (38, ["Ángela", "Álvaro", "Adrián"]),
    (24, ["Anaïs", "Loïc", "Héloïse"]),
    (21, ["Martín", "Inés", "Ramírez"]),
    (19, ["Łukasz", "Łucja"]),
    (17, ["Nguyễn", "Trần Thị"]),
    (12, ["François", "Françoise"]),
    (29, ["Renée", "Jérôme", "Müller", "Andrés"]),  # é, ü: GSM-7 has them (ô does not)
]
STORES = [("New York", "US", "+1212{:07d}"), ("Chicago", "US", "+1312{:07d}"), ("Montreal", "CA", "+1514{:07d}"),
          ("Paris", "FR", "+336{:08d}")]
TEMPLATE = "Hi {first_name}! Your {store} store has a gift waiting for you this week, show this: {short_url}"
POLICIES = ("fail", "transliterate", "segments:2")
DEMO_PRICES = "CA=0.0079,FR=0.0725"


def write_list(path: str, count: int, rng: random.Random) -> None:
    weights = [w for w, _ in NAMES]
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["external_ref", "first_name", "last_name", "phone", "sms_opt_in", "store", "time_zone"])
        for i in range(count):
            names = rng.choices(NAMES, weights)[0][1]
            store, _, fmt = STORES[i % len(STORES)]
            zone = {"New York": "America/New_York", "Chicago": "America/Chicago", "Montreal": "America/Toronto",
                    "Paris": "Europe/Paris"}[store]
            writer.writerow([f"C{i:06d}", rng.choice(names), "Doe", fmt.format(5_550_000 + i if store != "Paris"
                                                                              else 12_000_000 + i), "yes", store, zone])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        from importer import import_customers
        from models import Campaign, configure_database, connection
        from prices import PriceTable, parse_prices
        from preview_text import format_preview
        from reports import preview
        from schema import create_schema

        configure_database(f"sqlite:///{os.path.join(tmp, 'mix.db')}")
        create_schema()
        path = os.path.join(tmp, "customers.csv")
        write_list(path, args.customers, random.Random(args.seed))
        prices = PriceTable(us=float(os.environ.get("SMS_SEGMENT_PRICE", "0.0079")),
                            others=parse_prices(os.environ.get("SMS_PRICES", DEMO_PRICES)))
        with connection():
            with open(path, newline="", encoding="utf-8") as source:
                summary = import_customers(source, default_region="US")
            print(" ".join(summary.lines()))
            print(f"template: {TEMPLATE}")
            print(f"{'policy':<16}{'would be sent':>14}{'too long':>10}{'share':>8}{'segments':>10}{'cost':>9}")
            shown = None
            for policy in POLICIES:
                campaign = Campaign.create(name=policy, template=TEMPLATE, on_overflow=policy)
                seen = preview(campaign.id, short_url_base="https://brand.example/q", prices=prices, samples=2)
                share = seen.too_long / max(1, seen.audience)
                print(f"{policy:<16}{seen.eligible:>14,}{seen.too_long:>10,}{share:>8.1%}{seen.segments:>10,}"
                      f"{seen.estimated_cost:>9.2f}")
                shown = shown or seen
        print()
        print(format_preview(shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
