"""Copying a model (1 GiB by default, four shards and a config) out of a bucket, three ways:

1. into another bucket of the same S3 endpoint (another region's bucket, say);
2. into a local directory (a disk carried to a site without internet);
3. again into that other bucket after a new version that changed the config only.

crowecode-cloud `copy` moves the version (its packs, version object, signatures, then the tag);
`rclone copy` and `s5cmd cp` copy the objects under the model's prefix. All three copy inside the
service between two buckets of one endpoint. For each: the bytes that passed through the client
(both ways, HTTP included, counted by a TCP proxy in front of one moto server), its requests and
its wall time (median of --runs, the tools taking turns run by run). moto's wall times are not
speeds; the byte and request counts are the point, and ratios within one run. Started by
bench/copy.sh."""

import argparse
import os
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import measure  # noqa: E402
from incremental import counted_moto, make_model  # noqa: E402

MIB = 1 << 20
PREFIX = "crowecode-models/"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--tools", required=True, help="directory with rclone, s5cmd and python (boto3)")
    ap.add_argument("--moto", required=True, help="the moto_server executable")
    ap.add_argument("--shard-mib", type=int, default=256, help="size of each of the four shards")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import boto3  # from the bench venv

    work, server, port, proxy, ep, env = counted_moto(args.moto)
    env["CROWECODE_HOME"] = os.path.join(work, "cache")
    results = {}
    try:
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="bench",
                          aws_secret_access_key="bench-secret", region_name="us-east-1")
        ours = [args.bin, "--no-progress", "-q", "--provider", "s3", "--bucket", "src", "--endpoint", ep,
                "--region", "us-east-1", "--prefix", PREFIX]
        s3.create_bucket(Bucket="src")
        src = os.path.join(work, "models", "Bench")
        make_model(src, args.shard_mib)
        measure(ours + ["upload", "Bench:prod", "--from", src], env)
        rclone, s5cmd = os.path.join(args.tools, "rclone"), os.path.join(args.tools, "s5cmd")
        model = f"{PREFIX}Bench/"

        def to_bucket(b):
            return {
                "crowecode-cloud copy": ours + ["copy", "Bench:prod", "--to", f"s3://{b}-ours/", "--to-endpoint", ep],
                # The model's objects and the packs they share, as a sync tool would be told to.
                "rclone copy": [rclone, "copy", "B:src/", f"B:{b}-rclone/"],
                "s5cmd cp": [s5cmd, "--endpoint-url", ep, "cp", "s3://src/*", f"s3://{b}-s5cmd/"],
            }

        def to_dir(d):
            return {
                "crowecode-cloud copy": ours + ["copy", "Bench:prod", "--to", f"file://{d}-ours"],
                "rclone copy": [rclone, "copy", "B:src/", f"{d}-rclone"],
                "s5cmd cp": [s5cmd, "--endpoint-url", ep, "cp", "s3://src/*", f"{d}-s5cmd/"],
            }

        names = list(to_bucket("x"))

        def record(scenario, name, cmd):
            up0, down0, r0 = proxy.snapshot()
            wall = measure(cmd, env)[0]
            up1, down1, r1 = proxy.snapshot()
            results.setdefault((scenario, name), []).append((wall, up1 - up0 + down1 - down0, r1 - r0))

        for run in range(args.runs):
            order = names if run % 2 == 0 else names[::-1]
            buckets = [f"b{run}-{n}" for n in ("ours", "rclone", "s5cmd")]
            for b in buckets:
                s3.create_bucket(Bucket=b)
            for name in order:
                record("1. into another bucket (same endpoint)", name, to_bucket(f"b{run}")[name])
            for name in order:
                record("2. into a local directory", name, to_dir(os.path.join(work, f"d{run}"))[name])
            # A new version whose config changed, then the same copies again.
            with open(os.path.join(src, "config.json"), "a") as f:
                f.write(" ")
            measure(ours + ["upload", "Bench:prod", "--from", src], env)
            for name in order:
                record("3. again after a config change", name, to_bucket(f"b{run}")[name])
            for d in ("ours", "rclone", "s5cmd"):
                shutil.rmtree(os.path.join(work, f"d{run}-{d}"), ignore_errors=True)
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{4 * args.shard_mib} MiB model (4 shards of {args.shard_mib} MiB and a config) in format 3, one moto"
          f" server behind a counting proxy; medians of {args.runs} runs, the tools taking turns.")
    print(f"\n| scenario | tool | through the client | requests | wall | wall vs rclone | wall vs s5cmd |")
    print("|---|---|---:|---:|---:|---:|---:|")
    scenarios = sorted({s for s, _ in results})
    for s in scenarios:
        med = {n: tuple(statistics.median(x[i] for x in results[(s, n)]) for i in range(3)) for n in names}
        for n in names:
            wall, carried, reqs = med[n]
            print(f"| {s} | {n} | {carried / MIB:.1f} MiB | {reqs:.0f} | {wall:.2f} s | "
                  f"{wall / med['rclone copy'][0]:.2f}× | {wall / med['s5cmd cp'][0]:.2f}× |")


if __name__ == "__main__":
    main()
