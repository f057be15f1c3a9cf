#!/usr/bin/env python3
"""Times a clean `kiln build -jN` against a clean `ninja -jN` in a directory prepared by
build.sh and prints a side-by-side table.

Every run starts from a clean state: kiln's cache directory (action cache, blobs, logs,
records.log, stat cache) is gone, and so are ninja's stamps, .ninja_log and .ninja_deps. The
clean-up is not timed, and it moves the old files into `trash/` instead of deleting them; the
trash is deleted once, after the last run. Deleting thousands of files between runs would make
the next run's file creations slower on some file systems (ext4 without a journal skips inodes
freed in the last minute or more when it allocates new ones), which would penalise whichever
tool runs next. Runs alternate between the tools (kiln, ninja, kiln, ...) so that
machine noise hits both alike. One untimed warm-up run of each comes first.

    python3 bench/compare_build.py --kiln KILN --dir DIR [--runs 3] [--jobs 2] [--baseline KILN2]

With --baseline, a second kiln binary (an older build, say) takes its turn in each round too
(kiln, ninja, baseline, ...), and the table gets a column for it.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

TARGET_RATIO = 1.2  # kiln clean build <= 1.2 x ninja


_trashed = 0


def trash(d, name):
    """Moves d/name out of the way (renames are cheap and free no inodes)."""
    global _trashed
    src = os.path.join(d, name)
    if os.path.lexists(src):
        os.makedirs(os.path.join(d, "trash"), exist_ok=True)
        _trashed += 1
        os.rename(src, os.path.join(d, "trash", f"{_trashed}-{name}"))


def clean_kiln(d):
    trash(d, "cache")


def clean_ninja(d):
    for name in ("stamps", ".ninja_log", ".ninja_deps"):
        trash(d, name)


def timed(cmd, cwd, check_out):
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    took = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-2000:]}")
    check_out(res.stdout)
    return took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--nodes", type=int, required=True, help="expected node count")
    ap.add_argument("--baseline", help="another kiln binary, timed in the same rounds")
    a = ap.parse_args()

    kiln = [os.path.abspath(a.kiln), "build", "-j", str(a.jobs), "--quiet"]
    ninja = ["ninja", "-j", str(a.jobs)]

    def check_kiln(out):
        want = f"{a.nodes} built, 0 cached"
        if want not in out:
            sys.exit(f"kiln build did not build every node (want `{want}`):\n{out[-2000:]}")

    def check_ninja(out):
        if f"[{a.nodes}/{a.nodes}]" not in out:
            sys.exit(f"ninja did not run {a.nodes} commands:\n{out[-2000:]}")

    baseline = [os.path.abspath(a.baseline)] + kiln[1:] if a.baseline else None

    kt, nt, bt = [], [], []
    for i in range(a.runs + 1):  # run 0 is the warm-up
        clean_kiln(a.dir)
        k = timed(kiln, a.dir, check_kiln)
        clean_ninja(a.dir)
        n = timed(ninja, a.dir, check_ninja)
        if baseline:
            clean_kiln(a.dir)
            b = timed(baseline, a.dir, check_kiln)
        if i > 0:
            kt.append(k)
            nt.append(n)
            line = f"run {i}: kiln {k:.3f} s, ninja {n:.3f} s"
            if baseline:
                bt.append(b)
                line += f", baseline {b:.3f} s"
            print(line, file=sys.stderr)

    shutil.rmtree(os.path.join(a.dir, "trash"), ignore_errors=True)

    kmed, kmin = statistics.median(kt), min(kt)
    nmed, nmin = statistics.median(nt), min(nt)
    ratio = kmed / nmed
    ok = lambda b: "PASS" if b else "FAIL"

    print()
    print(f"clean build of {a.nodes} `true` nodes, -j{a.jobs}, {a.runs} runs each "
          f"(+1 warm-up), {os.cpu_count()} cores")
    cols = [("kiln build", kt), ("ninja", nt)] + ([("baseline", bt)] if baseline else [])
    print(f"{'':22}" + "".join(f"{name:>12}" for name, _ in cols))
    print(f"{'median wall (s)':22}" + "".join(f"{statistics.median(t):12.3f}" for _, t in cols))
    print(f"{'min wall (s)':22}" + "".join(f"{min(t):12.3f}" for _, t in cols))
    print(f"{'per node, median (ms)':22}"
          + "".join(f"{1000 * statistics.median(t) / a.nodes:12.2f}" for _, t in cols))
    print()
    print(f"{'target':40}{'value':>10}  status")
    print(f"{'kiln clean build <= 1.2 x ninja':40}{ratio:9.2f}x  {ok(ratio <= TARGET_RATIO)}")
    print(f"{'  (min / min)':40}{kmin / nmin:9.2f}x")
    if baseline:
        print(f"{'baseline / ninja (medians)':40}{statistics.median(bt) / nmed:9.2f}x")


if __name__ == "__main__":
    main()
