#!/usr/bin/env bash
# The build-request benchmark: signed requests accepted per second, and their p99 latency, by
# `kiln serve` with its durable queue (each request committed to SQLite before its 202), next to
# the same server answering 202 without persisting anything (`--no-persist`), in one run.
#
#   bench/serve.sh                   # 10 s per mode, 16 connections
#   SECONDS_PER_MODE=30 CONNECTIONS=64 bench/serve.sh
#   KEEP=1 bench/serve.sh            # keep the generated directory
#
# The load is wrk (Debian's `wrk`, installed with apt-get when missing) with a Lua script that
# POSTs the seed's payload {"k8s":{"version":"1.31.4"},"provider":"capa"} to /v1/builds, signed
# with X-Hub-Signature-256, each request with its own X-GitHub-Delivery: every request passes
# authentication, is resolved against the config and, with the durable queue, writes its row
# (requests for the nodes of a queued or running build join it; when that build has finished the
# next request queues a new one, which the worker runs — all cached, since the project is built
# before). The config is four `command` cells like examples/local's, so building costs nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KILN="$ROOT/target/release/kiln"
SECS="${SECONDS_PER_MODE:-10}"
CONNS="${CONNECTIONS:-16}"
SECRET="bench-webhook-secret"

if ! command -v wrk >/dev/null 2>&1; then
    echo "== installing wrk (apt-get)"
    apt-get install -y -q wrk >/dev/null
fi

echo "== building kiln (release)"
(cd "$ROOT" && cargo build --release --quiet)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kiln-servebench.XXXXXX")"
SERVER=""
stop_server() {
    if [ -n "$SERVER" ]; then
        kill -TERM "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
        SERVER=""
    fi
}
cleanup() {
    stop_server
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "== kept $WORK"; fi
}
trap cleanup EXIT
cd "$WORK"

mkdir -p project/modules
cat > project/modules/cmd.kdl <<'EOF'
module "cmd" {
    var "image_os" "{os}"
    step "build" builder="command" {
        argv "sh" "-c" "echo image-{name} > image.qcow2"
        outputs "image.qcow2"
    }
    step "publish" builder="upload" {
        bucket "file://published/{provider}"
        object "{name}.img"
    }
}
EOF
cat > project/images.kdl <<'EOF'
import "modules/cmd.kdl"
kubernetes "1.31" {
    version "1.31.4"
    containerd "2.2.0"
}
kubernetes "1.32" {
    version "1.32.4"
    containerd "2.2.0"
}
matrix "m" {
    kubernetes "1.31" "1.32"
    provider "aws" "gcp"
    os "one"
}
provider "aws" module="cmd" {
    alias "capa"
}
provider "gcp" module="cmd" {
    alias "capg"
}
EOF
echo "== building the project once (so the server's builds are all cached)"
"$KILN" -f project/images.kdl build --progress plain -q >/dev/null

BODY='{"k8s":{"version":"1.31.4"},"provider":"capa"}'
SIG="sha256=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$SECRET" -r | cut -d' ' -f1)"
cat > load.lua <<EOF
-- Deliveries are unique across threads (tid) and runs (the prefix given after --).
local n = 0
function setup(thread)
    n = n + 1
    thread:set("tid", n)
end
function init(args)
    prefix = args[1] or "run"
end
local count = 0
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Hub-Signature-256"] = "$SIG"
function request()
    count = count + 1
    wrk.headers["X-GitHub-Delivery"] = prefix .. "-" .. tostring(tid) .. "-" .. tostring(count)
    return wrk.format(nil, "/v1/builds")
end
EOF

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# run MODE EXTRA_FLAGS…: starts the server on a copy of the built project, loads it, prints
# "MODE REQ_PER_S P99_MS NON2XX".
run() {
    local mode="$1"
    shift
    rm -rf "$mode" && cp -a project "$mode"
    local port
    port="$(free_port)"
    KILN_WEBHOOK_SECRET="$SECRET" "$KILN" -f "$mode/images.kdl" serve --listen "127.0.0.1:$port" -j 2 "$@" \
        > "$mode.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 200); do
        curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
        sleep 0.05
    done
    # A short warm-up, then the measured run.
    wrk -t 2 -c "$CONNS" -d 2s -s load.lua "http://127.0.0.1:$port" -- warmup >/dev/null
    local before=0
    if [ "$mode" = durable ]; then
        before="$(sqlite3 "$mode/cache/serve.db" 'SELECT COUNT(*) FROM requests')"
    fi
    wrk -t 2 -c "$CONNS" -d "${SECS}s" --latency -s load.lua "http://127.0.0.1:$port" -- measured > "$mode.wrk"
    # The rows the measured run wrote: one per request, committed before its 202.
    local queued=""
    if [ "$mode" = durable ]; then
        queued="$(( $(sqlite3 "$mode/cache/serve.db" 'SELECT COUNT(*) FROM requests') - before ))"
    fi
    stop_server
    python3 - "$mode" "$mode.wrk" "$queued" <<'EOF'
import re, sys
mode, path, rows = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
p99 = ms(*m.groups())
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
total = re.search(r"(\d+) requests in", text).group(1)
errors = re.search(r"Socket errors:.*", text)
print(mode, rps, p99, non2xx.group(1) if non2xx else "0", total, rows or "-", (errors.group(0) if errors else ""))
EOF
}

echo "== durable queue ($SECS s, $CONNS connections)"
DURABLE="$(run durable)"
echo "== no persistence ($SECS s, $CONNS connections)"
MEMORY="$(run memory --no-persist)"

python3 - "$DURABLE" "$MEMORY" <<'EOF'
import sys
rows = [l.split(maxsplit=6) for l in sys.argv[1:]]
print()
print(f"{'server':<28} {'accepted/s':>11} {'p99 (ms)':>9} {'non-2xx':>8} {'requests':>9} {'rows written':>13}")
names = {"durable": "kiln serve (durable queue)", "memory": "kiln serve --no-persist"}
for r in rows:
    print(f"{names[r[0]]:<28} {float(r[1]):>11.0f} {float(r[2]):>9.2f} {r[3]:>8} {r[4]:>9} {r[5]:>13}"
          + (f"   {r[6]}" if len(r) > 6 else ""))
d, m = float(rows[0][1]), float(rows[1][1])
print(f"\ndurable / no persistence: {d / m:.2f}x the requests per second (target >= 0.5x)")
EOF
