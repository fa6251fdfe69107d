"""Side by side on one local S3 server: crowecode-cloud against `rclone copy`, `s5cmd cp`, the AWS CLI with
tar and sha256sum, and a boto3 + tarfile + hashlib script. Prints wall time, client CPU seconds
(user + sys of the whole client process tree) and peak RSS, as medians, and ratios ours/theirs.

Run through bench/compare.sh, which builds the binary, installs the other tools and starts the
servers. Downloads use rclone `serve s3` (the fastest server that serves every client), uploads
s3s-fs (the fastest here that accepts every client's multipart uploads: about 1.8x moto for
`rclone copy`), or moto when s3s-fs is not installed."""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from common import drop_caches, measure

MIB = 1 << 20
BUCKET_DL = "bench-dl"
BUCKET_UL = "bench-ul"


def run(cmd, env):
    if isinstance(cmd, str):
        cmd = ["bash", "-o", "pipefail", "-c", cmd]
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{p.stderr.decode(errors='replace')[-3000:]}")
    return p.stdout.decode()


def make_model(root, mib):
    """Two large incompressible shards (most of the bytes), several small ones, text files."""
    os.makedirs(os.path.join(root, "tokenizer"))
    small = [4 * MIB, 2 * MIB, 1 * MIB, 512 << 10, 64 << 10]
    big = (mib * MIB - sum(small)) // 2
    sizes = [("model-00001-of-00002.safetensors", big), ("model-00002-of-00002.safetensors", big)]
    sizes += [(f"adapter-{i}.bin", s) for i, s in enumerate(small)]
    for name, size in sizes:
        with open(os.path.join(root, name), "wb") as f:
            left = size
            while left > 0:
                n = min(left, 8 * MIB)
                f.write(os.urandom(n))
                left -= n
    for name, text in [("config.json", '{"hidden_size": 4096}\n'), ("generation_config.json", "{}\n"),
                       ("tokenizer/tokenizer.json", '{"vocab": "' + "x" * 2_000_000 + '"}\n'),
                       ("README.md", "# bench model\n")]:
        with open(os.path.join(root, name), "w") as f:
            f.write(text)


def tree_digest(root):
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                while chunk := fh.read(8 * MIB):
                    h.update(chunk)
            out[os.path.relpath(p, root)] = h.hexdigest()
    return out


SEED_DOWNLOAD = r'''
import boto3, hashlib, os, sys, tarfile
from boto3.s3.transfer import TransferConfig
bucket, key, sums_key, dest, endpoint = sys.argv[1:6]
s3 = boto3.client("s3", endpoint_url=endpoint)
tmp = dest + ".tar"
s3.download_file(bucket, key, tmp, Config=TransferConfig(max_concurrency=8))
with tarfile.open(tmp) as t:
    t.extractall(dest, filter="data")
os.remove(tmp)
sums = s3.get_object(Bucket=bucket, Key=sums_key)["Body"].read().decode()
for line in sums.splitlines():
    digest, name = line.split("  ", 1)
    h = hashlib.sha256()
    with open(os.path.join(dest, name), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    if h.hexdigest() != digest:
        sys.exit(f"checksum mismatch: {name}")
'''

SEED_UPLOAD = r'''
import boto3, hashlib, os, sys, tarfile
from boto3.s3.transfer import TransferConfig
src, bucket, key, endpoint = sys.argv[1:5]
lines = []
for d, _, fs in sorted(os.walk(src)):
    for f in sorted(fs):
        p = os.path.join(d, f)
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        lines.append(f"{h.hexdigest()}  {os.path.relpath(p, src)}")
tmp = src.rstrip("/") + ".upload.tar"
with tarfile.open(tmp, "w") as t:
    t.add(src, arcname=".")
s3 = boto3.client("s3", endpoint_url=endpoint)
s3.upload_file(tmp, bucket, key, Config=TransferConfig(max_concurrency=8))
s3.put_object(Bucket=bucket, Key=key + ".sha256", Body="\n".join(lines).encode())
os.remove(tmp)
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--tools", required=True, help="directory with rclone, aws and python (boto3)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=2048)
    ap.add_argument("--only", choices=["download", "upload", "all"], default="all")
    ap.add_argument("--shape", help="conn=RATE,total=RATE,rtt=MS: every connection to the servers goes through "
                    "the shaping proxy (examples/shaper.rs), e.g. conn=12.5M,total=200M,rtt=20")
    ap.add_argument("--shaper", help="the shaping proxy's binary (with --shape)")
    args = ap.parse_args()

    rclone_ep = os.environ["CROWECODE_TEST_S3_RCLONE_ENDPOINT"]
    ul_ep = os.environ.get("CROWECODE_BENCH_UPLOAD_ENDPOINT") or os.environ["CROWECODE_TEST_S3_ENDPOINT"]
    shape = dict(kv.split("=", 1) for kv in args.shape.split(",")) if args.shape else None
    shapers = []
    if shape:
        def shaped(ep):
            p = subprocess.Popen([args.shaper, "--listen", "127.0.0.1:0", "--upstream", ep.removeprefix("http://"),
                                  "--conn-rate", shape["conn"], "--total-rate", shape["total"],
                                  "--rtt-ms", shape["rtt"]], stdout=subprocess.PIPE, text=True)
            shapers.append(p)
            line = p.stdout.readline().strip()
            return "http://" + line.removeprefix("listening on ")
        rclone_ep, ul_ep = shaped(rclone_ep), shaped(ul_ep)
    ul_server = os.environ.get("CROWECODE_BENCH_UPLOAD_SERVER", "moto")
    key, secret = os.environ["CROWECODE_TEST_S3_RCLONE_KEY"], os.environ["CROWECODE_TEST_S3_RCLONE_SECRET"]
    tools = args.tools
    rclone, aws, py = os.path.join(tools, "rclone"), os.path.join(tools, "aws"), os.path.join(tools, "python")
    s5cmd = os.path.join(tools, "s5cmd")

    base = os.environ.get("CROWECODE_BENCH_DIR") or os.path.join(tempfile.gettempdir(), "crowecode-bench")
    os.makedirs(base, exist_ok=True)
    work = tempfile.mkdtemp(dir=base)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CROWECODE_", "AWS_", "RCLONE_"))}
    env.update({
        "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "CROWECODE_HOME": os.path.join(work, "cache"), "XDG_CONFIG_HOME": os.path.join(work, "cfg"),
        "RCLONE_CONFIG": "/dev/null",
    })
    for name, ep in [("DL", rclone_ep), ("UL", ul_ep)]:
        env.update({f"RCLONE_CONFIG_{name}_TYPE": "s3", f"RCLONE_CONFIG_{name}_PROVIDER": "Other",
                    f"RCLONE_CONFIG_{name}_ACCESS_KEY_ID": key, f"RCLONE_CONFIG_{name}_SECRET_ACCESS_KEY": secret,
                    f"RCLONE_CONFIG_{name}_ENDPOINT": ep, f"RCLONE_CONFIG_{name}_REGION": "us-east-1",
                    f"RCLONE_CONFIG_{name}_FORCE_PATH_STYLE": "true"})

    def ours(ep, bucket):
        return [args.bin, "--no-progress", "--provider", "s3", "--bucket", bucket, "--endpoint", ep,
                "--region", "us-east-1", "--prefix", "m/"]

    try:
        model = os.path.join(work, "src", "Bench")
        make_model(model, args.mib)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(model) for f in fs)
        want = tree_digest(model)
        sums = os.path.join(work, "SHA256SUMS")
        with open(sums, "w") as f:
            f.write("".join(f"{d}  {p}\n" for p, d in sorted(want.items())))
        tarball = os.path.join(work, "Bench.tar")
        run(["tar", "-cf", tarball, "-C", model, "."], env)

        results = {}

        def record(name, m):
            results.setdefault(name, []).append(m)

        def check(dest):
            got = tree_digest(dest)
            got.pop("SHA256SUMS", None)
            if got != want:
                sys.exit(f"{dest}: the downloaded tree differs from the model")

        if args.only in ("download", "all"):
            # Seed the download bucket in every tool's format.
            # rclone serve s3 answers CreateMultipartUpload with a root element aws-sdk-s3 does not
            # accept, so our archive goes there through a local bucket and the AWS CLI.
            run(ours(rclone_ep, BUCKET_DL) + ["setup", "--create-bucket", "--no-write"], env)
            seed = os.path.join(work, "seed-bucket")
            scmd = [args.bin, "--no-progress", "--provider", "local", "--bucket", seed, "--prefix", "m/"]
            run(scmd + ["setup", "--create-bucket", "--no-write"], env)
            run(scmd + ["upload", "Bench", "--from", model], env)
            run([aws, "--endpoint-url", rclone_ep, "s3", "cp", "--recursive", os.path.join(seed, "m"), f"s3://{BUCKET_DL}/m/"], env)
            run([rclone, "copy", model, f"DL:{BUCKET_DL}/files/Bench"], env)
            run([aws, "--endpoint-url", rclone_ep, "s3", "cp", tarball, f"s3://{BUCKET_DL}/tar/Bench.tar"], env)
            run([aws, "--endpoint-url", rclone_ep, "s3", "cp", sums, f"s3://{BUCKET_DL}/tar/Bench.tar.sha256"], env)
            # The ceilings read the model's bytes as one object: the tarball (bucket format 2 has
            # no archive; its packs hold the same bytes).
            archive_key, archive_size = "tar/Bench.tar", os.path.getsize(tarball)

            for i in range(args.runs):
                dests = {n: os.path.join(work, f"dl-{n}") for n in ("rclone", "s5cmd", "aws", "seed")}
                for d in dests.values():
                    shutil.rmtree(d, ignore_errors=True)
                shutil.rmtree(env["CROWECODE_HOME"], ignore_errors=True)
                if shape:
                    # The shaper itself, checked: one connection, then 32 at once.
                    url = f"{rclone_ep}/{BUCKET_DL}/{archive_key}"
                    curl = f'curl -sf -o /dev/null --aws-sigv4 aws:amz:us-east-1:s3 --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY"'
                    one = min(archive_size, 64 * MIB)
                    record("shaper check: 1 connection, 64 MiB", measure(f"{curl} -r 0-{one - 1} {url}", env))
                    part = -(-archive_size // 32)
                    ranges = " ".join(f"{s}-{min(s + part, archive_size) - 1}" for s in range(0, archive_size, part))
                    record("shaper check: 32 connections", measure(f"for r in {ranges}; do {curl} -r $r {url} & done; wait", env))
                # The ceiling: the same archive fetched by 8 parallel ranged GETs into /dev/null.
                part = -(-archive_size // 8)
                ranges = " ".join(f"{s}-{min(s + part, archive_size) - 1}" for s in range(0, archive_size, part))
                url = f"{rclone_ep}/{BUCKET_DL}/{archive_key}"
                drop_caches()
                record("ceiling: 8 ranged curl GETs" + (" (shaped)" if shape else ""), measure(
                    f'for r in {ranges}; do curl -sf -o /dev/null --aws-sigv4 aws:amz:us-east-1:s3 --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" -r $r {url} & done; wait', env))
                drop_caches()
                record("download: crowecode-cloud", measure(ours(rclone_ep, BUCKET_DL) + ["download", "Bench"], env))
                drop_caches()
                record("download: rclone copy", measure([rclone, "copy", f"DL:{BUCKET_DL}/files/Bench", dests["rclone"]], env))
                drop_caches()
                # s5cmd verifies nothing: it writes what the server sends, with every core.
                record("download: s5cmd cp", measure(
                    [s5cmd, "--endpoint-url", rclone_ep, "cp", f"s3://{BUCKET_DL}/files/Bench/*", dests["s5cmd"] + "/"], env))
                drop_caches()
                record("download: aws s3 cp + tar -x + sha256sum -c", measure(
                    f'mkdir -p {dests["aws"]} && cd {dests["aws"]} && {aws} --endpoint-url {rclone_ep} s3 cp s3://{BUCKET_DL}/tar/Bench.tar - | tar -x '
                    f'&& {aws} --endpoint-url {rclone_ep} s3 cp s3://{BUCKET_DL}/tar/Bench.tar.sha256 SHA256SUMS && sha256sum -c --quiet SHA256SUMS', env))
                drop_caches()
                record("download: boto3 + tarfile + hashlib", measure(
                    [py, "-c", SEED_DOWNLOAD, BUCKET_DL, "tar/Bench.tar", "tar/Bench.tar.sha256", dests["seed"], rclone_ep], env))
                if i == 0:
                    for n, d in dests.items():
                        check(d)
                    check(os.path.join(env["CROWECODE_HOME"], "models", "Bench"))
                # The client's CPU floor, in parts: receiving the bytes is the ceiling row; add one
                # sha256 pass over them (from memory) and writing them into new files.
                subprocess.run(["cat", tarball], stdout=subprocess.DEVNULL, check=True)
                # Python's hashlib is OpenSSL's sha256 (SHA-NI where the CPU has it); coreutils'
                # sha256sum is not. A buffer in memory hashed over and over: hashing cost only.
                record("floor: sha256 of as many bytes (in memory)", measure(
                    [sys.executable, "-c", "import hashlib,sys; n=int(sys.argv[1]); b=bytes(64<<20); h=hashlib.sha256()\n"
                     "for _ in range(-(-n // len(b))): h.update(b)", str(archive_size)], env))
                scratch = os.path.join(work, "floor-write")
                drop_caches()
                record("floor: write as many bytes to a new file", measure(
                    ["dd", "if=/dev/zero", f"of={scratch}", "bs=4M", f"count={-(-archive_size // (4 * MIB))}", "status=none"], env))
                os.remove(scratch)
                # Already cached: one manifest GET and nothing else. The binary is paged in first
                # (the page cache was dropped since it last ran): that is not the command's cost.
                run([args.bin, "--version"], env)
                record("download again (cached)", measure(ours(rclone_ep, BUCKET_DL) + ["download", "Bench"], env))

            # The local provider against tar -x + sha256sum -c of the same data (this machine's limit).
            local = os.path.join(work, "bucket")
            if shape:
                args.runs_local = 0
            lcmd = [args.bin, "--no-progress", "--provider", "local", "--bucket", local, "--prefix", "m/"]
            run(lcmd + ["setup", "--create-bucket", "--no-write"], env)
            run(lcmd + ["upload", "Bench", "--from", model], env)
            for _ in range(getattr(args, "runs_local", args.runs)):
                shutil.rmtree(env["CROWECODE_HOME"], ignore_errors=True)
                x = os.path.join(work, "x")
                shutil.rmtree(x, ignore_errors=True)
                drop_caches()
                record("local: tar -x + sha256sum -c", measure(
                    f"mkdir -p {x} && cd {x} && tar -xf {tarball} && sha256sum -c --quiet {sums}", env))
                drop_caches()
                record("local: crowecode-cloud download", measure(lcmd + ["download", "Bench"], env))

        if args.only in ("upload", "all"):
            run(ours(ul_ep, BUCKET_UL) + ["setup", "--create-bucket", "--no-write"], env)
            for i in range(args.runs):
                drop_caches()
                record("upload: crowecode-cloud", measure(ours(ul_ep, BUCKET_UL) + ["upload", "Bench", "--force", "--from", model], env))
                drop_caches()
                record("upload: rclone copy", measure([rclone, "copy", model, f"UL:{BUCKET_UL}/files/Bench-{i}"], env))
                drop_caches()
                record("upload: s5cmd cp", measure(
                    [s5cmd, "--endpoint-url", ul_ep, "cp", model + "/", f"s3://{BUCKET_UL}/s5cmd/Bench-{i}/"], env))
                drop_caches()
                record("upload: tar | aws s3 cp", measure(
                    f"tar -cf - -C {model} . | {aws} --endpoint-url {ul_ep} s3 cp - s3://{BUCKET_UL}/tar/Bench-{i}.tar", env))
                drop_caches()
                record("upload: hashlib + tarfile + boto3", measure(
                    [py, "-c", SEED_UPLOAD, model, BUCKET_UL, f"seed/Bench-{i}.tar", ul_ep], env))
                record("upload again (unchanged)", measure(ours(ul_ep, BUCKET_UL) + ["upload", "Bench", "--from", model], env))
                # Each run leaves 4 copies of the model on the server: free the disk for the next.
                run([aws, "--endpoint-url", ul_ep, "s3", "rm", "--quiet", "--recursive", f"s3://{BUCKET_UL}/"], env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for p in shapers:
            p.kill()

    med = {n: tuple(statistics.median(r[k] for r in rs) for k in range(3)) for n, rs in results.items()}
    peak = {n: max(r[2] for r in rs) for n, rs in results.items()}
    if shape:
        print(f"\nshaped: each connection {shape['conn']}B/s, all together {shape['total']}B/s, {shape['rtt']} ms round trip")
    print(f"\n{size / MIB:.0f} MiB model, medians of {args.runs} runs; downloads from rclone serve s3, uploads to {ul_server};"
          f" page cache {'dropped before each run' if drop_caches() else 'warm (no permission to drop it)'}")
    print(f"{'':<46} {'wall s':>8} {'MiB/s':>8} {'cpu s':>7} {'peak MiB':>9}")
    for n, (w, c, _) in med.items():
        print(f"{n:<46} {w:>8.2f} {size / MIB / w:>8.0f} {c:>7.2f} {peak[n]:>9.1f}")

    def ratios(ours_name, prefix):
        if ours_name not in med:
            return
        w0, c0, _ = med[ours_name]
        print(f"\n{ours_name} / other, same run (below 1 means ours is faster or leaner):")
        for n, (w, c, _) in med.items():
            if n != ours_name and n.startswith(prefix):
                print(f"  vs {n:<42} wall {w0 / w:>5.2f}x   cpu {c0 / c:>5.2f}x")

    if shape:
        cap = float(shape["total"].rstrip("MmBb")) * (1e6 if shape["total"][-1] in "Mm" else 1)
        print("\nshare of the aggregate cap (model bytes / wall time / cap):")
        for n, (w, _, _) in med.items():
            if n.startswith(("download:", "upload:")):
                print(f"  {n:<46} {size / w / cap:>6.0%}")
    ratios("download: crowecode-cloud", ("download:", "ceiling"))
    ratios("upload: crowecode-cloud", "upload:")
    ratios("local: crowecode-cloud download", "local:")
    parts = ["ceiling: 8 ranged curl GETs", "floor: sha256 of as many bytes (in memory)",
             "floor: write as many bytes to a new file"]
    if all(p in med for p in parts) and "download: rclone copy" in med:
        floor = sum(med[p][1] for p in parts)
        print(f"\nclient CPU floor of a verified download (receive + one sha256 pass + write): {floor:.2f} s"
              f" = {floor / med['download: rclone copy'][1]:.2f}x rclone's CPU;"
              f" crowecode-cloud uses {med['download: crowecode-cloud'][1] / floor:.2f}x the floor")
    if "ceiling: 8 ranged curl GETs" in med and "download: crowecode-cloud" in med:
        share = med["ceiling: 8 ranged curl GETs"][0] / med["download: crowecode-cloud"][0]
        print(f"\ndownload speed as a share of the ceiling: {share:.0%}")
        if "download: rclone copy" in med:
            c = med["ceiling: 8 ranged curl GETs"][0] / med["download: rclone copy"][0]
            print(f"the ceiling's wall time is {c:.2f}x rclone's: no client can be faster than that here")


if __name__ == "__main__":
    main()
