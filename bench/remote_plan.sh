#!/usr/bin/env bash
# The fresh-runner plan benchmark: a runner with an empty cache plans the 80,000-node benchmark
# graph whose results another runner pushed to a shared S3 cache (moto on 127.0.0.1), against
# `ninja -n` on the same graph. Prints the times, and the requests and bytes the plan made.
#
#   bench/remote_plan.sh                       # 100 series x 20 providers x 10 OSes = 80,000 nodes
#   RUNS=10 bench/remote_plan.sh               # more repetitions (default 5)
#   GEN_ARGS="--series 10" bench/remote_plan.sh    # a smaller graph (args of gen_plan.py)
#   KEEP=1 bench/remote_plan.sh                # keep the generated directory
#
# Runner A primes its cache as bench/plan.sh does and runs `kiln cache push` to a file:// remote
# (moto would take minutes to receive 80,000 records one by one); the pack that push writes is
# then copied into the moto bucket with the awscli, and runner B plans against moto. B's plan
# reads only the pack, so it sees exactly what it would see had A pushed to moto directly.
#
# Needs python3, ninja, blake3 for Python (or b3sum), moto (`pip install 'moto[server]'`) and the
# awscli (`pip install awscli`); missing ones are installed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${RUNS:-5}"
GEN_ARGS="${GEN_ARGS:-}"
KILN="$ROOT/target/release/kiln"

command -v ninja >/dev/null 2>&1 || apt-get install -y ninja-build >/dev/null
if ! python3 -c 'import blake3' 2>/dev/null && ! command -v b3sum >/dev/null 2>&1; then
    python3 -m pip install --quiet blake3
fi
python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install --quiet 'moto[server]'
command -v aws >/dev/null 2>&1 || python3 -m pip install --quiet awscli

echo "== building kiln (release)"
(cd "$ROOT" && cargo build --release --quiet)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-remote.XXXXXX")"
MOTO_PID=""
cleanup() {
    [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null || true
    [ -z "${KEEP:-}" ] && rm -rf "$WORK"
}
trap cleanup EXIT
[ -n "${KEEP:-}" ] && echo "== keeping $WORK"

echo "== runner A: generate, prime, push"
# shellcheck disable=SC2086
python3 "$ROOT/bench/gen_plan.py" "$WORK/a" $GEN_ARGS
cd "$WORK/a"
"$KILN" plan --json > plan.json
python3 "$ROOT/bench/prime_cache.py" plan.json cache 'out/{provider}'
rm plan.json
"$KILN" plan | tail -n 1
"$KILN" cache keygen ci-1 -o "$WORK/ci-1.key" > "$WORK/ci-1.pub"
t0=$(date +%s.%N)
"$KILN" --remote-cache "file://$WORK/remote" --signing-key "$WORK/ci-1.key" cache push
t1=$(date +%s.%N)
echo "push to file://: $(python3 -c "print(f'{$t1 - $t0:.1f}')") s"
ninja -j "$(( $(nproc) * 4 ))" > /dev/null
[ "$(ninja -n)" = "ninja: no work to do." ] || { echo "ninja -n is not a no-op" >&2; exit 1; }

echo "== moto on 127.0.0.1, the pack copied into its bucket"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
python3 -m moto.server -H 127.0.0.1 -p "$PORT" > "$WORK/moto.log" 2>&1 &
MOTO_PID=$!
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
for _ in $(seq 100); do
    aws s3api list-buckets >/dev/null 2>&1 && break
    sleep 0.2
done
aws s3api create-bucket --bucket bench >/dev/null
aws s3 cp --quiet --recursive "$WORK/remote/packs" s3://bench/cache/packs
ls -l "$WORK/remote/packs"

echo "== runner B: the same config, an empty cache, the published bucket directories"
mkdir -p "$WORK/b"
(cd "$WORK/a" && tar cf - --exclude=./cache --exclude=./.ninja_log --exclude=./.ninja_deps --exclude=./stamps .) | (cd "$WORK/b" && tar xf -)
cd "$WORK/b"
export KILN_REMOTE_CACHE=s3://bench/cache KILN_TRUSTED_KEYS="$(cat "$WORK/ci-1.pub")"
rm -rf cache
"$KILN" plan --json > plan.json
python3 - plan.json <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))
s, r = p["summary"], p["remote"]
print(f"B's plan: {s['cached']} cached ({s['remote']} remote), {s['new']} new, {s['rebuild']} rebuild")
print(f"requests: {r['requests']}, bytes fetched: {r['bytes_fetched']:,}")
assert s["new"] + s["rebuild"] + s["maybe"] == 0, "B's plan is not a no-op"
EOF

echo "== timing ($RUNS runs each; B's cache is removed before every run)"
python3 - "$KILN" "$WORK/a" "$WORK/b" "$RUNS" <<'EOF'
import shutil, statistics, subprocess, sys, time
kiln, a, b, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def timed(cmd, cwd, prepare=None):
    out = []
    for i in range(runs + 1):
        if prepare:
            prepare()
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
        if i:  # the first run warms the page cache
            out.append(time.perf_counter() - t0)
    return statistics.median(out), min(out)
fresh = lambda: shutil.rmtree(f"{b}/cache", ignore_errors=True)
k = timed([kiln, "plan"], b, fresh)
n = timed(["ninja", "-n"], a)
print(f"{'':34} {'median s':>9} {'min s':>7}")
print(f"{'kiln plan (fresh runner, remote)':34} {k[0]:9.3f} {k[1]:7.3f}")
print(f"{'ninja -n (primed)':34} {n[0]:9.3f} {n[1]:7.3f}")
ratio = k[0] / n[0]
print(f"ratio: {ratio:.2f}x ninja (target <= 3x: {'ok' if ratio <= 3 else 'FAIL'})")
EOF
