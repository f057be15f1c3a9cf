#!/usr/bin/env bash
# The remote-cache transfer benchmark: a 1 GiB blob pushed to and pulled from an S3 bucket by
# kiln (`kiln cache push` / `kiln cache pull`), next to `aws s3 cp` up and down of the same file,
# all against one local S3 server (moto on 127.0.0.1), in one run.
#
#   bench/remote.sh                # 1 GiB
#   MIB=256 bench/remote.sh        # another size, in MiB
#   RUNS=5 bench/remote.sh         # runs of the four transfers (default 3); medians are printed
#   KILN=path/to/kiln bench/remote.sh   # another kiln binary (e.g. an older build), not built
#   KEEP=1 bench/remote.sh         # keep the generated directory (moto is stopped anyway)
#   ONLY=push bench/remote.sh      # only the two uploads (a run then takes about a minute)
#
# kiln is driven as a user drives it: a one-step config whose `command` step writes MIB MiB of
# random bytes as its output, `kiln build` (not timed), a signing key from `kiln cache keygen`,
# then `kiln cache push` with it to s3://BUCKET/cache, and `kiln cache pull` into a fresh copy of
# the project that trusts the key. Only the push and the pull are timed; the push also sends the
# step's log and its signed record, the pull fetches them. The awscli runs with its default
# transfer settings (8 MB parts and ranges, 10 requests at once). Requests are counted from
# moto's access log, which also splits each multipart upload into its parts (from the first
# part's answer to the last's) and its completion (the CompleteMultipartUpload request), at the
# log's one-second resolution. Odd runs go kiln first, even runs the awscli first, so neither
# always follows the previous run's deletes.
#
# Needs python3, moto (`pip install 'moto[server]'`) and the awscli (`pip install awscli`); both
# are installed with pip when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MIB="${MIB:-1024}"
BYTES=$((MIB << 20))
KILN="${KILN:-}"
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

if [ -z "$KILN" ]; then
    echo "== building kiln (release)"
    (cd "$ROOT" && cargo build --release --quiet)
    KILN="$ROOT/target/release/kiln"
fi

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
# The seconds, by moto's log lines from line $1 on, from the first part of a multipart upload to
# its last part ("parts") and from there to its completion ("completion"): "P C", or "- -".
phases() { # first line
    tail -n "+$1" moto.log | python3 -c '
import re, sys, datetime
t = lambda l: datetime.datetime.strptime(re.search(r"\[([^]]+)\]", l).group(1), "%d/%b/%Y %H:%M:%S")
parts = [t(l) for l in sys.stdin if "partNumber=" in l or re.search(r"\"POST [^ ]*\?uploadId=", l)]
print("- -") if len(parts) < 2 else print(int((parts[-2] - parts[0]).total_seconds()), int((parts[-1] - parts[-2]).total_seconds()))
'
}
# Runs a command; records its wall time, the requests moto logged during it and, for an upload,
# its phases.
declare -A SECS REQS PHASES
timed() { # label command...
    local label="$1"; shift
    sleep 0.5
    local r0 l0 t0 t1
    r0="$(requests)"
    l0="$(( $(wc -l < moto.log) + 1 ))"
    t0="$(now)"
    "$@"
    t1="$(now)"
    sleep 0.5
    SECS[$label]="$(python3 -c "print(f'{$t1 - $t0:.3f}')")"
    REQS[$label]="$(( $(requests) - r0 ))"
    PHASES[$label]="$(phases "$l0")"
    local split=""
    case "$label" in
        *push|*upload) split=", by moto's log: parts ${PHASES[$label]% *} s, completion ${PHASES[$label]#* } s" ;;
    esac
    echo "   $label: ${SECS[$label]} s, ${REQS[$label]} requests$split"
}

RUNS="${RUNS:-3}"
ONLY="${ONLY:-}"
case "$ONLY" in ""|push) ;; *) echo "ONLY is push or unset, not $ONLY" >&2; exit 2 ;; esac
KP=() AU=() KL=() AD=() KPR=() AUR=() KLR=() ADR=() KPP=() AUP=()
kiln_push() {
    timed "kiln push" sh -c "cd a && '$KILN' --remote-cache '$RURL' --signing-key ../bench-1.key cache push"
    KP+=("${SECS[kiln push]}") KPR+=("${REQS[kiln push]}") KPP+=("${PHASES[kiln push]/ //}")
}
aws_upload() {
    timed "aws upload" aws s3 cp --quiet "$BLOB" "s3://$BUCKET/aws/blob-$run"
    AU+=("${SECS[aws upload]}") AUR+=("${REQS[aws upload]}") AUP+=("${PHASES[aws upload]/ //}")
}
kiln_pull() {
    [ -z "$ONLY" ] || return 0
    timed "kiln pull" sh -c "cd b && KILN_TRUSTED_KEYS='$PUBLIC' '$KILN' --remote-cache '$RURL' cache pull"
    KL+=("${SECS[kiln pull]}") KLR+=("${REQS[kiln pull]}")
    cmp -s "$BLOB" "$(find b/cache/cas -type f -size "${BYTES}c" | head -n 1)" || { echo "kiln pulled other bytes" >&2; exit 1; }
}
aws_download() {
    [ -z "$ONLY" ] || return 0
    rm -f aws-down.bin
    timed "aws download" aws s3 cp --quiet "s3://$BUCKET/aws/blob-$run" aws-down.bin
    AD+=("${SECS[aws download]}") ADR+=("${REQS[aws download]}")
    cmp -s "$BLOB" aws-down.bin || { echo "aws downloaded other bytes" >&2; exit 1; }
}
for run in $(seq "$RUNS"); do
    echo "== run $run of $RUNS ($(if [ $((run % 2)) = 1 ]; then echo kiln; else echo aws; fi) first; load average $(cut -d' ' -f1-3 /proc/loadavg))"
    # A fresh prefix and a fresh downloading project each run: every push sends the blob, every
    # pull fetches it.
    RURL="$URL/run-$run"
    rm -rf b/cache
    if [ $((run % 2)) = 1 ]; then
        kiln_push; aws_upload; kiln_pull; aws_download
    else
        aws_upload; kiln_push; aws_download; kiln_pull
    fi
    # moto keeps every object in memory or temp files: drop this run's.
    aws s3 rm --quiet --recursive "s3://$BUCKET/aws/" >/dev/null
    aws s3 rm --quiet --recursive "$RURL" >/dev/null
done
[ -n "$ONLY" ] || echo "== every download is byte for byte the blob"
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

join() { local IFS=,; echo "$*"; }
python3 - "$BYTES" "$(join "${KP[@]}")" "$(join "${KPR[@]}")" "$(join "${AU[@]}")" "$(join "${AUR[@]}")" \
    "$(join "${KL[@]:-}")" "$(join "${KLR[@]:-}")" "$(join "${AD[@]:-}")" "$(join "${ADR[@]:-}")" \
    "$(join "${KPP[@]}")" "$(join "${AUP[@]}")" <<'PY'
import statistics, sys
size = int(sys.argv[1])
kp, kpr, au, aur, kl, klr, ad, adr = [[float(x) for x in a.split(",") if x] for a in sys.argv[2:10]]
kpp, aup = [a.split(",") for a in sys.argv[10:12]]
mib = size / (1 << 20)
runs = len(kp)
def row(name, secs, reqs):
    m = statistics.median(secs)
    each = " ".join(f"{s:.2f}" for s in secs)
    return f"| {name:<12} | {m:>8.2f} | {mib / m:>7.1f} | {statistics.median(reqs):>8.0f} | {each} |"
print()
print(f"{mib:.0f} MiB against moto on 127.0.0.1, median of {runs} runs (odd runs kiln first, even runs the awscli first):")
print()
print(f"| {'transfer':<12} | {'seconds':>8} | {'MiB/s':>7} | {'requests':>8} | every run (s) |")
print(f"|{'-' * 14}|{'-' * 9}:|{'-' * 8}:|{'-' * 9}:|{'-' * 15}|")
print(row("kiln push", kp, kpr))
print(row("aws upload", au, aur))
if kl:
    print(row("kiln pull", kl, klr))
    print(row("aws download", ad, adr))
print()
print("uploads by moto's log, parts/completion (s) per run: kiln push " + " ".join(kpp)
      + ", aws upload " + " ".join(aup))
up = statistics.median(au) / statistics.median(kp)
line = f"kiln / aws throughput (medians): push {up:.2f}x"
each = "per run: push " + " ".join(f"{a / k:.2f}x" for a, k in zip(au, kp))
if kl:
    line += f", pull {statistics.median(ad) / statistics.median(kl):.2f}x"
    each += ", pull " + " ".join(f"{a / k:.2f}x" for a, k in zip(ad, kl))
print(line + " (target >= 1.0x)")
print(each)
PY
