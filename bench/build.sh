#!/usr/bin/env bash
# The clean-build benchmark: `kiln build -j2` of ~2,000 trivial `command` nodes (argv `true`)
# vs `ninja -j2` on the same graph, both from a clean state.
#
#   bench/build.sh                          # 1 shared root + 666 cells x 3 = 1,999 nodes
#   RUNS=5 bench/build.sh                   # more repetitions (default 3)
#   JOBS=4 bench/build.sh                   # other parallelism (default 2)
#   GEN_ARGS="--ninja-rule true" bench/build.sh   # ninja runs `true` instead of `touch $out`
#   KEEP=1 bench/build.sh                   # keep the generated directory for profiling
#   BASELINE=old/kiln bench/build.sh        # also time another kiln binary in the same rounds
#
# Needs python3 and ninja; a missing ninja is installed with apt-get when it is available.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${RUNS:-3}"
JOBS="${JOBS:-2}"
GEN_ARGS="${GEN_ARGS:-}"
KILN="$ROOT/target/release/kiln"

if ! command -v ninja >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ninja-build (apt-get)"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y ninja-build >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y ninja-build >/dev/null; }
fi
command -v ninja >/dev/null 2>&1 || { echo "missing ninja (package ninja-build)" >&2; exit 1; }

echo "== building kiln (release)"
(cd "$ROOT" && cargo build --release --quiet)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kiln-buildbench.XXXXXX")"
if [ -z "${KEEP:-}" ]; then
    trap 'rm -rf "$WORK"' EXIT
else
    echo "== keeping $WORK"
fi

echo "== generating the config and build.ninja"
# shellcheck disable=SC2086
python3 "$ROOT/bench/gen_build.py" "$WORK" $GEN_ARGS
cd "$WORK"
"$KILN" check

echo "== checking the graph shape (kiln graph --format json)"
"$KILN" graph --format json > graph.json
NODES="$(python3 - graph.json build.ninja <<'EOF'
import json, re, sys
g = json.load(open(sys.argv[1]))
nodes = g["nodes"]
# The shared root has no cell values in common with anything, so its kiln id is `/patch`;
# its ninja stamp is `stamps/patch.stamp`.
norm = lambda i: i.lstrip("/")
ids = {norm(n["id"]) for n in nodes}
edges = {(norm(d), norm(n["id"])) for n in nodes for d in n.get("deps", [])}
roots = [norm(n["id"]) for n in nodes if not n.get("deps")]
# ninja: `build OUT: run | UPSTREAM`
nin_nodes, nin_edges = set(), set()
for line in open(sys.argv[2]):
    m = re.match(r"build stamps/(\S+)\.stamp: run(?: \| stamps/(\S+)\.stamp)?$", line.strip())
    if m:
        nin_nodes.add(m.group(1))
        if m.group(2):
            nin_edges.add((m.group(2), m.group(1)))
if ids != nin_nodes or edges != nin_edges:
    sys.exit(f"graphs differ: kiln {len(ids)} nodes / {len(edges)} edges, "
             f"ninja {len(nin_nodes)} nodes / {len(nin_edges)} edges")
if len(roots) != 1:
    sys.exit(f"expected one root, got {len(roots)}")
fanout = sum(1 for a, _ in edges if a == roots[0])
print(f"kiln and ninja graphs match: {len(ids)} nodes, {len(edges)} edges, "
      f"root `{roots[0]}` with {fanout} dependents", file=sys.stderr)
print(len(ids))
EOF
)"
rm graph.json

echo "== timing"
python3 "$ROOT/bench/compare_build.py" --kiln "$KILN" --dir "$WORK" --runs "$RUNS" --jobs "$JOBS" --nodes "$NODES" \
    ${BASELINE:+--baseline "$BASELINE"}
