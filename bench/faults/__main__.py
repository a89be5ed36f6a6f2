"""Run the fault-injection suite: ``python -m bench.faults [CASE_NUMBER ...]``, or the soak:
``python -m bench.faults --soak MINUTES``.

Every case runs on loopback (Redis, PostgreSQL, worker processes, the fake Twilio), is
bounded in time, restores any service it restarted, and prints lost and duplicated counts.
"""

from __future__ import annotations

import functools
import sys
import tempfile

from bench.faults.cases import ALL
from tests.fake_twilio import FakeTwilio


def main(argv: list[str]) -> int:
    if argv[:1] == ["--soak"]:
        if len(argv) != 2:
            print("usage: python -m bench.faults --soak MINUTES", file=sys.stderr)
            return 2
        from bench.faults.soak import soak

        minutes = float(argv[1])
        chosen = [functools.partial(soak, minutes=minutes)]
        chosen[0].__doc__ = soak.__doc__
    else:
        chosen = [ALL[int(n) - 1] for n in argv] if argv else ALL
    verdicts = []
    for case in chosen:
        with FakeTwilio() as fake, tempfile.TemporaryDirectory() as tmp:
            print(f"running {case.__doc__.splitlines()[0]}", flush=True)
            try:
                verdict = case(fake, tmp)
            except Exception as exc:  # a case that cannot run is a failed case, not a crash
                print(f"  FAIL: {type(exc).__name__}: {exc}", flush=True)
                return 1
            verdicts.append(verdict)
            print(f"  lost {verdict.lost}, duplicated {verdict.duplicated}, {verdict.seconds:.1f} s, "
                  f"{'PASS' if verdict.ok else 'FAIL'}", flush=True)
            for note in verdict.notes:
                print("  " + note.replace("\n", "\n  "))
    print("\n| case | eligible | lost | duplicated | ineligible sent | analytics = DB | time | result |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for verdict in verdicts:
        print(verdict.row())
    return 0 if all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
