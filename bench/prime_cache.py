#!/usr/bin/env python3
"""Primes a kiln cache so that `kiln plan` has nothing to do, without building anything.

    kiln plan --json > plan.json
    python3 bench/prime_cache.py plan.json CACHE_DIR [BUCKET_DIR]

For every node of the plan it writes what a successful build would leave behind:

  * an action-cache entry `CACHE_DIR/ac/<2 hex>/<64 hex key>`: a header line
    `kiln-action-v1 <blake3 hex of the body>`, then the JSON body of an `ActionResult`
    (see src/store/ac.rs and src/store/types.rs), then a newline;
  * a line `{"id": …, "key": …, "unix_ms": …} <checksum>` appended to `CACHE_DIR/records.log`
    (src/store/records.rs), so the planner also loads one record per node.

The entries carry no outputs and an empty manifest: enough for the planner, which only lists
`ac/` to decide that a key is cached, and for the store, which checks header digest and key.

With BUCKET_DIR (e.g. `out/{provider}`, relative to the config directory, as the `upload` steps'
`file://` bucket), every `upload` node is also published there: a small image
`<first cell>.qcow2` and its `.sha256`, and its result gets the facts `url`, `sha256` and `size`
a real publish records, so the plan's refresh finds every claim holding.

blake3: the `blake3` Python module if importable (`pip install blake3`), else the `b3sum` CLI.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HEADER = "kiln-action-v1"


def hasher():
    """A function: list of bytes -> list of blake3 hex digests."""
    try:
        import blake3  # type: ignore

        return lambda bodies: [blake3.blake3(b).hexdigest() for b in bodies]
    except ImportError:
        pass
    b3sum = shutil.which("b3sum")
    if b3sum is None:
        sys.exit(
            "prime_cache.py: needs blake3: `pip install blake3` or put `b3sum` on PATH"
        )

    def via_b3sum(bodies):
        out = []
        with tempfile.TemporaryDirectory() as d:
            for start in range(0, len(bodies), 2000):
                chunk = bodies[start : start + 2000]
                names = []
                for i, b in enumerate(chunk):
                    name = os.path.join(d, str(start + i))
                    with open(name, "wb") as f:
                        f.write(b)
                    names.append(name)
                res = subprocess.run(
                    [b3sum, "--no-names", *names], check=True, capture_output=True
                )
                out.extend(res.stdout.decode().split())
        return out

    return via_b3sum


def publish(node, bucket):
    """Writes the node's image and its .sha256 into the bucket; returns the facts."""
    import hashlib

    rel = bucket.format(provider=node["provider"])
    name = f"{node['cells'][0]}.qcow2"
    os.makedirs(rel, exist_ok=True)
    image = f"image of {node['id']}\n".encode()
    sha = hashlib.sha256(image).hexdigest()
    with open(os.path.join(rel, name), "wb") as f:
        f.write(image)
    with open(os.path.join(rel, name + ".sha256"), "w") as f:
        f.write(f"{sha}  {name}\n")
    return {"sha256": sha, "size": str(len(image)), "url": f"file://{rel}/{name}"}


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    plan_file, cache = sys.argv[1], sys.argv[2]
    bucket = sys.argv[3] if len(sys.argv) == 4 else None
    with open(plan_file) as f:
        plan = json.load(f)
    nodes = plan["nodes"]
    by_id = {n["id"]: n for n in nodes}
    now = int(time.time() * 1000)

    bodies = []
    for n in nodes:
        result = {
            "key": n["key"],
            "id": n["id"],
            # The recipe digest is not in the plan JSON; the planner never reads it.
            "recipe": n["key"],
            "dep_outputs": {d: by_id[d]["key"] for d in n["deps"]},
            "outputs": [],
            "facts": publish(n, bucket) if bucket and n["builder"] == "upload" else {},
            "manifest": {},
            "attempts": 1,
            "started_unix_ms": now,
            "duration_ms": 0,
            "log": None,
        }
        bodies.append(json.dumps(result, indent=2).encode())
    blake = hasher()
    digests = blake(bodies)

    ac = os.path.join(cache, "ac")
    for sub in ("cas", "ac", "logs", "tmp"):
        os.makedirs(os.path.join(cache, sub), exist_ok=True)
    made = set()
    for n, body, digest in zip(nodes, bodies, digests):
        key = n["key"]
        d = os.path.join(ac, key[:2])
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        with open(os.path.join(d, key), "wb") as f:
            f.write(f"{HEADER} {digest}\n".encode() + body + b"\n")
    # Each line: the record's JSON, a space, and the first 32 hex digits of its blake3.
    lines = [
        json.dumps({"id": n["id"], "key": n["key"], "unix_ms": now}, separators=(",", ":"))
        for n in nodes
    ]
    sums = blake([l.encode() for l in lines])
    with open(os.path.join(cache, "records.log"), "a") as f:
        for line, sum_ in zip(lines, sums):
            f.write(f"{line} {sum_[:32]}\n")
    print(f"primed {cache}: {len(nodes)} action entries and records", file=sys.stderr)


if __name__ == "__main__":
    main()
