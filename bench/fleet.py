"""Bucket egress and requests per model for a fleet: 1 and 8 machines downloading one model at
once, straight from the bucket and through the nginx mirror of scripts/emulators.sh (moto behind
it). Counts, not times: what the bucket serves is counted on its side (nginx's log of bytes
received from the origin) plus every read the clients made of the bucket directly (their
`download --json` traffic). Each case gets a fresh bucket, so the mirror's cache starts cold."""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import subprocess
import tempfile
from pathlib import Path


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"{name} is not set: run bench/fleet.sh, which starts the test servers")
    return value


def origin(log: Path, bucket: str) -> tuple[int, int]:
    """Bytes and requests nginx sent to the origin for `bucket` (cache misses only)."""
    total, requests = 0, 0
    for line in log.read_text().splitlines() if log.exists() else []:
        first = line.split(" ", 1)[0]
        if bucket in line and first.isdigit():
            total += int(first)
            requests += 1
    return total, requests


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--mib", type=int, default=256)
    args = ap.parse_args()
    endpoint, mirror = env("CROWECODE_TEST_S3_ENDPOINT"), env("CROWECODE_TEST_MIRROR_S3")
    log = Path(env("CROWECODE_TEST_MIRROR_LOG_DIR")) / "origin-s3.log"
    work = Path(tempfile.mkdtemp(prefix="crowecode-fleet-"))
    model = work / "src" / "Fleet"
    model.mkdir(parents=True)
    with open(model / "model.safetensors", "wb") as f:
        for _ in range(args.mib):
            f.write(os.urandom(1 << 20))
    (model / "config.json").write_text("{}")
    base_env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    for k in ("CROWECODE_MIRROR", "CROWECODE_DATA_PROXY", "HTTP_PROXY", "http_proxy"):
        base_env.pop(k, None)
    rows = []
    for machines in (1, 8):
        for via_mirror in (False, True):
            bucket = f"fleet-{machines}-{int(via_mirror)}-{random.randrange(1 << 32):08x}"
            cfg = {"enabled": True, "provider": "s3",
                   "config": {"bucket": bucket, "endpoint": endpoint, "region": "us-east-1"}}
            e = dict(base_env, CROWECODE_CLOUD_CONFIG_B64=base64.b64encode(json.dumps(cfg).encode()).decode())
            e["CROWECODE_HOME"] = str(work / f"publisher-{bucket}")
            for step in (["setup", "--no-write", "--create-bucket", "-q"], ["upload", "Fleet", "-q", "--from", str(model)]):
                subprocess.run([args.bin, *step], env=e, check=True, stdout=subprocess.DEVNULL)
            before = origin(log, bucket)
            procs = []
            for i in range(machines):
                m = dict(e, CROWECODE_HOME=str(work / f"m{i}-{bucket}"))
                if via_mirror:
                    m["CROWECODE_MIRROR"] = mirror
                procs.append(subprocess.Popen([args.bin, "download", "Fleet", "--json", "--no-progress"], env=m,
                                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
            traffic = []
            for p in procs:
                out, _ = p.communicate()
                if p.returncode != 0:
                    raise SystemExit(f"a download failed: {out.decode()}")
                d = json.loads(out)["models"][0]
                traffic.append(d["traffic"])
                archive = d["size"]
            after = origin(log, bucket)
            bucket_bytes = sum(t["bucket_bytes"] for t in traffic) + after[0] - before[0]
            bucket_gets = sum(t["bucket_requests"] for t in traffic) + after[1] - before[1]
            control = sum(t["control_requests"] for t in traffic)
            from_mirror = sum(t["mirror_bytes"] for t in traffic)
            rows.append((machines, "nginx" if via_mirror else "none", bucket_bytes, bucket_bytes / archive,
                         bucket_gets, control, from_mirror))
    print(f"\nmodel: {args.mib} MiB in one archive; downloads at once; the bucket is moto, the mirror nginx (slice 8m)\n")
    print("| machines | mirror | bucket egress | × model | archive GETs at the bucket | other requests | bytes from the mirror |")
    print("|---|---|---|---|---|---|---|")
    for machines, via, b, x, gets, control, fm in rows:
        print(f"| {machines} | {via} | {b / (1 << 20):.1f} MiB | {x:.2f} | {gets} | {control} | {fm / (1 << 20):.1f} MiB |")


if __name__ == "__main__":
    main()
