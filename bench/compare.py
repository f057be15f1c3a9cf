#!/usr/bin/env python3
"""Times the no-op `kiln plan` against the no-op `ninja -n` in a directory prepared by plan.sh
and prints a side-by-side table. The runs alternate (kiln, ninja, kiln, ...) after one warm-up of
each, so that a change in the machine's load during the measurement weighs on both tools alike;
each pair's ratio is printed too.

    python3 bench/compare.py --kiln KILN --dir DIR [--runs 5]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

TARGET_RATIO = 0.5  # kiln no-op plan <= 0.5 x ninja -n
TARGET_RSS_MB = 256


def run_once(cmd, cwd):
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def time_alternating(a, b, cwd, runs):
    run_once(a, cwd)  # warm-ups
    run_once(b, cwd)
    at, bt = [], []
    for _ in range(runs):
        at.append(run_once(a, cwd))
        bt.append(run_once(b, cwd))
    return at, bt


def peak_rss_mb(cmd, cwd):
    res = subprocess.run(
        ["/usr/bin/time", "-v", *cmd], cwd=cwd, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, check=True,
    )
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)
    return int(m.group(1)) / 1024 if m else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()

    kiln = [os.path.abspath(a.kiln), "plan"]
    ninja = ["ninja", "-n"]
    kt, nt = time_alternating(kiln, ninja, a.dir, a.runs)
    k_rss = peak_rss_mb(kiln, a.dir)
    n_rss = peak_rss_mb(ninja, a.dir)

    kmed, kmin = statistics.median(kt), min(kt)
    nmed, nmin = statistics.median(nt), min(nt)
    ratio = kmed / nmed
    ok = lambda b: "PASS" if b else "FAIL"

    print()
    print(f"no-op plan, {a.runs} alternating runs each, {os.cpu_count()} cores")
    print(f"{'':22}{'kiln plan':>12}{'ninja -n':>12}")
    print(f"{'median wall (s)':22}{kmed:12.3f}{nmed:12.3f}")
    print(f"{'min wall (s)':22}{kmin:12.3f}{nmin:12.3f}")
    print(f"{'peak RSS (MB)':22}{k_rss:12.1f}{n_rss:12.1f}")
    print(f"{'all runs (s)':22}  kiln " + " ".join(f"{t:.3f}" for t in kt))
    print(f"{'':22}  ninja " + " ".join(f"{t:.3f}" for t in nt))
    pairs = [k / n for k, n in zip(kt, nt)]
    print(f"{'kiln/ninja per pair':22}  " + " ".join(f"{r:.2f}" for r in pairs))
    print()
    print(f"kiln/ninja (median):  {ratio:.2f}x   target <= {TARGET_RATIO}x   {ok(ratio <= TARGET_RATIO)}")
    print(f"kiln peak RSS:        {k_rss:.0f} MB   target < {TARGET_RSS_MB} MB   {ok(k_rss < TARGET_RSS_MB)}")


if __name__ == "__main__":
    sys.exit(main())
