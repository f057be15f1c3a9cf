#!/usr/bin/env bash
# The remote-cache transfer benchmark: a 1 GiB blob pushed to and pulled from an S3 bucket by
# kiln (`kiln cache push` / `kiln cache pull`), next to `aws s3 cp` up and down of the same file,
# all against one local S3 server (moto on 127.0.0.1), in one run.
#
#   bench/remote.sh                # 1 GiB
#   MIB=256 bench/remote.sh        # another size, in MiB
#   KEEP=1 bench/remote.sh         # keep the generated directory (moto is stopped anyway)
#
# kiln is driven as a user drives it: a one-step config whose `command` step writes MIB MiB of
# random bytes as its output, `kiln build` (not timed), a signing key from `kiln cache keygen`,
# then `kiln cache push` with it to s3://BUCKET/cache, and `kiln cache pull` into a fresh copy of
# the project that trusts the key. Only the push and the pull are timed; the push also sends the
# step's log and its signed record, the pull fetches them. The awscli runs with its default
# transfer settings (8 MB parts and ranges, 10 requests at once). Requests are counted from
# moto's access log.
#
# Needs python3, moto (`pip install 'moto[server]'`) and the awscli (`pip install awscli`); both
# are installed with pip when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MIB="${MIB:-1024}"
BYTES=$((MIB << 20))
KILN="$ROOT/target/release/kiln"
BUCKET="kiln-bench"

if ! command -v moto_server >/dev/null 2>&1 && ! python3 -c 'import moto.server' 2>/dev/null; then
    echo "== installing moto (pip)"
    python3 -m pip install --quiet 'moto[server]'
fi
if ! command -v aws >/dev/null 2>&1; then
    echo "== installing the awscli (pip)"
    python3 -m pip install --quiet awscli
fi
command -v aws >/dev/null 2>&1 || { echo "missing the aws command" >&2; exit 1; }

echo "== building kiln (release)"
(cd "$ROOT" && cargo build --release --quiet)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kiln-remotebench.XXXXXX")"
MOTO_PID=""
cleanup() {
    if [ -n "$MOTO_PID" ]; then
        kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
    fi
    if [ -z "${KEEP:-}" ]; then
        rm -rf "$WORK"
    else
        echo "== kept $WORK"
    fi
}
trap cleanup EXIT
cd "$WORK"

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
echo "== starting moto on 127.0.0.1:$PORT"
if command -v moto_server >/dev/null 2>&1; then
    moto_server -H 127.0.0.1 -p "$PORT" > moto.log 2>&1 &
else
    python3 -m moto.server -H 127.0.0.1 -p "$PORT" > moto.log 2>&1 &
fi
MOTO_PID=$!
for _ in $(seq 600); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break
    kill -0 "$MOTO_PID" 2>/dev/null || { cat moto.log >&2; echo "moto exited" >&2; exit 1; }
    sleep 0.1
done

export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT"
export AWS_ACCESS_KEY_ID="kilnbench" AWS_SECRET_ACCESS_KEY="kilnbench"
export AWS_REGION="us-east-1" AWS_DEFAULT_REGION="us-east-1"
unset KILN_REMOTE_CACHE KILN_SIGNING_KEY KILN_TRUSTED_KEYS AWS_PROFILE
aws s3 mb "s3://$BUCKET" >/dev/null
URL="s3://$BUCKET/cache"

write_project() { # dir
    mkdir -p "$1/modules"
    cat > "$1/modules/big.kdl" <<KDL
module "big" {
    step "build" builder="command" {
        argv "sh" "-c" "head -c $BYTES /dev/urandom > big.img"
        outputs "big.img"
    }
}
KDL
    cat > "$1/images.kdl" <<'KDL'
import "modules/big.kdl"
kubernetes "1.31" { version "1.31.4"; }
matrix "m" { kubernetes "1.31"; provider "p"; os "x"; }
provider "p" module="big"
KDL
}

echo "== building the $MIB MiB blob with kiln (not timed)"
write_project a
write_project b
(cd a && "$KILN" build --quiet >/dev/null)
BLOB="$(find a/cache/cas -type f -size "${BYTES}c" | head -n 1)"
[ -n "$BLOB" ] || { echo "no $MIB MiB blob in the cache" >&2; exit 1; }
PUBLIC="$(cd a && "$KILN" cache keygen bench-1 -o ../bench-1.key)"
sync

now() { date +%s.%N; }
requests() { grep -cE '" [0-9]{3} ' moto.log || true; }
# Runs a command; records its wall time and the requests moto logged during it.
declare -A SECS REQS
timed() { # label command...
    local label="$1"; shift
    sleep 0.5
    local r0 t0 t1
    r0="$(requests)"
    t0="$(now)"
    "$@"
    t1="$(now)"
    sleep 0.5
    SECS[$label]="$(python3 -c "print(f'{$t1 - $t0:.3f}')")"
    REQS[$label]="$(( $(requests) - r0 ))"
    echo "   $label: ${SECS[$label]} s, ${REQS[$label]} requests"
}

echo "== kiln cache push"
timed "kiln push" sh -c "cd a && '$KILN' --remote-cache '$URL' --signing-key ../bench-1.key cache push"
echo "== aws s3 cp (upload)"
timed "aws upload" aws s3 cp --quiet "$BLOB" "s3://$BUCKET/aws/blob"
echo "== kiln cache pull"
timed "kiln pull" sh -c "cd b && KILN_TRUSTED_KEYS='$PUBLIC' '$KILN' --remote-cache '$URL' cache pull"
echo "== aws s3 cp (download)"
timed "aws download" aws s3 cp --quiet "s3://$BUCKET/aws/blob" aws-down.bin

cmp -s "$BLOB" "$(find b/cache/cas -type f -size "${BYTES}c" | head -n 1)" || { echo "kiln pulled other bytes" >&2; exit 1; }
cmp -s "$BLOB" aws-down.bin || { echo "aws downloaded other bytes" >&2; exit 1; }
echo "== both downloads are byte for byte the blob"

python3 - "$BYTES" \
    "${SECS[kiln push]}" "${REQS[kiln push]}" "${SECS[aws upload]}" "${REQS[aws upload]}" \
    "${SECS[kiln pull]}" "${REQS[kiln pull]}" "${SECS[aws download]}" "${REQS[aws download]}" <<'PY'
import sys
size = int(sys.argv[1])
kp, kpr, au, aur, kl, klr, ad, adr = sys.argv[2:]
mib = size / (1 << 20)
def row(name, secs, reqs):
    s = float(secs)
    return f"| {name:<12} | {s:>8.2f} | {mib / s:>7.1f} | {reqs:>8} |"
print()
print(f"{mib:.0f} MiB against moto on 127.0.0.1:")
print()
print(f"| {'transfer':<12} | {'seconds':>8} | {'MiB/s':>7} | {'requests':>8} |")
print(f"|{'-' * 14}|{'-' * 9}:|{'-' * 8}:|{'-' * 9}:|")
print(row("kiln push", kp, kpr))
print(row("aws upload", au, aur))
print(row("kiln pull", kl, klr))
print(row("aws download", ad, adr))
print()
up, down = float(au) / float(kp), float(ad) / float(kl)
print(f"kiln / aws throughput: push {up:.2f}x, pull {down:.2f}x (target >= 1.0x)")
PY
