#!/usr/bin/env bash
# The no-op plan benchmark: `kiln plan` with every node cached vs `ninja -n` on the same graph.
#
#   bench/plan.sh                     # 100 series x 20 providers x 10 OSes = 80,000 nodes
#   RUNS=10 bench/plan.sh             # more repetitions
#   GEN_ARGS="--series 10" bench/plan.sh   # a smaller graph (args of gen_plan.py)
#   KEEP=1 bench/plan.sh              # keep the generated directory
#
# Needs python3, ninja, GNU time (/usr/bin/time) and blake3 for Python (or b3sum); missing ninja
# or time are installed with apt-get when it is available, blake3 with pip.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${RUNS:-5}"
GEN_ARGS="${GEN_ARGS:-}"
KILN="$ROOT/target/release/kiln"

need_apt() { # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    if command -v apt-get >/dev/null 2>&1; then
        echo "== installing $2 (apt-get)"
        SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get install -y "$2" >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y "$2" >/dev/null; }
    fi
    command -v "$1" >/dev/null 2>&1 || { echo "missing $1 (package $2)" >&2; exit 1; }
}
need_apt ninja ninja-build
need_apt /usr/bin/time time
if ! python3 -c 'import blake3' 2>/dev/null && ! command -v b3sum >/dev/null 2>&1; then
    echo "== installing blake3 for Python (pip)"
    python3 -m pip install --quiet blake3
fi

echo "== building kiln (release)"
(cd "$ROOT" && cargo build --release --quiet)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench.XXXXXX")"
if [ -z "${KEEP:-}" ]; then
    trap 'rm -rf "$WORK"' EXIT
else
    echo "== keeping $WORK"
fi

echo "== generating the config and build.ninja"
# shellcheck disable=SC2086
python3 "$ROOT/bench/gen_plan.py" "$WORK" $GEN_ARGS
cd "$WORK"
"$KILN" check

echo "== priming kiln's cache (one action entry and one record per node)"
"$KILN" plan --json > plan.json           # no cache yet: every node is new
python3 "$ROOT/bench/prime_cache.py" plan.json cache 'out/{provider}'
rm plan.json
"$KILN" plan > plan.txt                    # warms the stat cache
summary="$(tail -n 1 plan.txt)"
echo "$summary"
case "$summary" in
    "No changes. "*" nodes cached.") ;;
    *) echo "kiln plan is not a no-op after priming" >&2; exit 1 ;;
esac

echo "== priming ninja (one build of every stamp)"
ninja -j "$(( $(nproc) * 4 ))" > ninja-first.log
out="$(ninja -n)"
echo "$out"
[ "$out" = "ninja: no work to do." ] || { echo "ninja -n is not a no-op" >&2; exit 1; }

echo "== timing"
python3 "$ROOT/bench/compare.py" --kiln "$KILN" --dir "$WORK" --runs "$RUNS"
