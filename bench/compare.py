#!/usr/bin/env python3
"""Times the no-op `kiln plan` against the no-op `ninja -n` in a directory prepared by plan.sh
and prints a side-by-side table. Uses hyperfine when installed, else a perf_counter loop.

    python3 bench/compare.py --kiln KILN --dir DIR [--runs 5]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TARGET_RATIO = 0.5  # kiln no-op plan <= 0.5 x ninja -n
TARGET_RSS_MB = 256


def time_loop(cmd, cwd, runs):
    subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, check=True)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return times


def time_hyperfine(cmd, cwd, runs):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            ["hyperfine", "--style", "none", "--warmup", "1", "--runs", str(runs), "-N",
             "--export-json", out.name, " ".join(cmd)],
            cwd=cwd, stdout=subprocess.DEVNULL, check=True,
        )
        with open(out.name) as f:
            return json.load(f)["results"][0]["times"]


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
    timer = time_hyperfine if shutil.which("hyperfine") else time_loop
    how = "hyperfine" if timer is time_hyperfine else "python perf_counter loop"

    kt = timer(kiln, a.dir, a.runs)
    nt = timer(ninja, a.dir, a.runs)
    k_rss = peak_rss_mb(kiln, a.dir)
    n_rss = peak_rss_mb(ninja, a.dir)

    kmed, kmin = statistics.median(kt), min(kt)
    nmed, nmin = statistics.median(nt), min(nt)
    ratio = kmed / nmed
    ok = lambda b: "PASS" if b else "FAIL"

    print()
    print(f"no-op plan, {a.runs} runs each ({how}), {os.cpu_count()} cores")
    print(f"{'':22}{'kiln plan':>12}{'ninja -n':>12}")
    print(f"{'median wall (s)':22}{kmed:12.3f}{nmed:12.3f}")
    print(f"{'min wall (s)':22}{kmin:12.3f}{nmin:12.3f}")
    print(f"{'peak RSS (MB)':22}{k_rss:12.1f}{n_rss:12.1f}")
    print(f"{'all runs (s)':22}  kiln " + " ".join(f"{t:.3f}" for t in kt))
    print(f"{'':22}  ninja " + " ".join(f"{t:.3f}" for t in nt))
    print()
    print(f"kiln/ninja (median):  {ratio:.2f}x   target <= {TARGET_RATIO}x   {ok(ratio <= TARGET_RATIO)}")
    print(f"kiln peak RSS:        {k_rss:.0f} MB   target < {TARGET_RSS_MB} MB   {ok(k_rss < TARGET_RSS_MB)}")


if __name__ == "__main__":
    sys.exit(main())
