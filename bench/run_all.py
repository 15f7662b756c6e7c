"""`make bench`: run every benchmark in turn; each prints its table and writes bench/results/*.json.

Benchmarks measure ratios against a reference taken in the same run (raw nats-py, competing
libraries), because absolute numbers on a shared 2-core machine are noise.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SUITE = [
    ("publish", ["bench_publish.py"]),
    ("resilience", ["bench_resilience.py"]),
    ("schemas", ["bench_schemas.py"]),
    ("outbox", ["bench_outbox.py"]),
    ("gateway", ["bench_gateway.py"]),
    ("faststream comparison", ["bench_faststream.py"]),
    ("anomaly (NAB)", ["bench_anomaly.py"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="run only these (e.g. publish gateway)")
    args = parser.parse_args()
    failed = []
    for name, argv in SUITE:
        if args.names and not any(n in name for n in args.names):
            continue
        print(f"\n=== {name} " + "=" * (60 - len(name)), flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(BENCH / argv[0]), *argv[1:]])
        print(f"--- {name}: exit {code} in {time.monotonic() - started:.0f}s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    print(f"\nall results in {BENCH / 'results'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
