#!/usr/bin/env bash
# The store benchmark: how long kiln takes to store a 2 GiB step output (a reflink where the file
# system has them, else a copy, into cache/tmp; blake3 of the stored copy; link into cas/), next
# to `cp --reflink=auto` of the same file on the same file system.
#
#   bench/store.sh                 # 2 GiB, 3 runs
#   SIZE=512M RUNS=5 bench/store.sh
#   DIR=/mnt/xfs bench/store.sh    # run on another file system (default: $TMPDIR or /tmp)
#   KEEP=1 bench/store.sh          # keep the generated directory
#
# The step itself does no work: its output `big.img` is a hard link to a file of random bytes
# written beforehand, so kiln stores exactly the bytes `cp` copies. kiln's figure is the wall
# time of `kiln build` minus the step's own time (the `== succeeded in …` line of its log); it
# includes kiln's start-up, planning and the commit (a few milliseconds), and hashing the copy,
# which `cp` does not do.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${RUNS:-3}"
SIZE="${SIZE:-2G}"
KILN="$ROOT/target/release/kiln"

echo "== building kiln (release)"
(cd "$ROOT" && cargo build --release --quiet)

WORK="$(mktemp -d "${DIR:-${TMPDIR:-/tmp}}/kiln-storebench.XXXXXX")"
if [ -z "${KEEP:-}" ]; then
    trap 'rm -rf "$WORK"' EXIT
else
    echo "== keeping $WORK"
fi
cd "$WORK"

echo "== writing $SIZE of random bytes to $WORK/data.bin ($(stat -f -c %T "$WORK"))"
head -c "$SIZE" /dev/urandom > data.bin
sync

mkdir -p modules
cat > modules/store.kdl <<KDL
module "store" {
    step "build" builder="command" {
        argv "ln" "$WORK/data.bin" "big.img"
        outputs "big.img"
    }
}
KDL
cat > images.kdl <<'KDL'
import "modules/store.kdl"
kubernetes "1.31" { version "1.31.4"; }
matrix "m" { kubernetes "1.31"; provider "p"; os "x"; }
provider "p" module="store"
KDL
"$KILN" check

now() { date +%s.%N; }
kiln_s=()
cp_s=()
for i in $(seq "$RUNS"); do
    rm -rf cache copy.bin
    sync
    t0="$(now)"
    "$KILN" build --quiet >/dev/null
    t1="$(now)"
    step="$("$KILN" logs p/x/1.31/build | sed -n 's/.*== succeeded in \([0-9.]*\)s.*/\1/p')"
    kiln_s+=("$(python3 -c "print(f'{$t1 - $t0 - $step:.3f}')")")

    sync
    t0="$(now)"
    cp --reflink=auto data.bin copy.bin
    t1="$(now)"
    cp_s+=("$(python3 -c "print(f'{$t1 - $t0:.3f}')")")
    cmp -s copy.bin "$(find cache/cas -type f -size +1M | head -n 1)" || { echo "stored bytes differ" >&2; exit 1; }
    echo "run $i: kiln store ${kiln_s[-1]}s, cp --reflink=auto ${cp_s[-1]}s"
done

python3 - "${kiln_s[*]}" "${cp_s[*]}" "$SIZE" <<'PY'
import statistics, sys
k = [float(x) for x in sys.argv[1].split()]
c = [float(x) for x in sys.argv[2].split()]
print(f"median of {len(k)} runs storing {sys.argv[3]}: "
      f"kiln {statistics.median(k):.3f}s, cp --reflink=auto {statistics.median(c):.3f}s")
PY
