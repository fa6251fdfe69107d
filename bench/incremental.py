"""What a new version costs: a model (1 GiB by default) of four shards and a config, changed five ways in a row,
each uploaded and then fetched by a machine holding the version before; finally a fresh machine.

For each tool and step: bytes sent to the store, bytes a machine holding the previous version
fetches, how much the bucket and that machine's disk grew, requests and
wall times. crowecode-cloud keeps every version (pin, roll back); `rclone sync` and `s5cmd sync`
keep one copy of the tree and overwrite it, so they skip unchanged files and resend a changed file
whole, and the bucket holds no previous version.

Runs its own moto server behind a counting TCP proxy (byte and request counts are the point;
moto's wall times are not speeds). Started by bench/incremental.sh."""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import measure  # noqa: E402

MIB = 1 << 20


class Counter:
    """A TCP proxy in front of `upstream` that counts the bytes each way, and the HTTP requests
    (request heads in the client's stream; a body is skipped by its Content-Length)."""

    def __init__(self, upstream_port):
        self.up, self.down, self.requests = 0, 0, 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.upstream = upstream_port
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.sock.accept()
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self.pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self.pump, args=(server, client, False), daemon=True).start()

    def pump(self, src, dst, upward):
        head, body_left = b"", 0
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                requests = 0
                if upward:
                    view = data
                    while view:
                        if body_left:
                            n = min(body_left, len(view))
                            body_left, view = body_left - n, view[n:]
                            continue
                        head += view
                        view = b""
                        end = head.find(b"\r\n\r\n")
                        if end < 0:
                            break
                        requests += 1
                        m = re.search(rb"(?im)^content-length:\s*(\d+)", head[:end])
                        body_left = int(m.group(1)) if m else 0
                        view, head = head[end + 4:], b""
                with self.lock:
                    if upward:
                        self.up += len(data)
                        self.requests += requests
                    else:
                        self.down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def snapshot(self):
        with self.lock:
            return self.up, self.down, self.requests


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_model(root, shard_mib):
    os.makedirs(root, exist_ok=True)
    for i in range(4):
        with open(os.path.join(root, f"model-{i + 1:05d}-of-00004.safetensors"), "wb") as f:
            for _ in range(shard_mib):
                f.write(os.urandom(MIB))
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump({"architectures": ["BenchForCausalLM"], "hidden_size": 4096, "num_layers": 32}, f)


def edit(root, step):
    """Applies step `step` to the tree in place; returns what it did."""
    shard = os.path.join(root, "model-00002-of-00004.safetensors")
    if step == "config":
        with open(os.path.join(root, "config.json"), "w") as f:
            json.dump({"architectures": ["BenchForCausalLM"], "hidden_size": 4096, "num_layers": 33}, f)
    elif step == "overwrite":
        with open(shard, "r+b") as f:
            f.seek(os.path.getsize(shard) // 2)
            f.write(os.urandom(MIB))
    elif step == "append":
        with open(shard, "ab") as f:
            f.write(os.urandom(MIB))
    elif step == "insert":
        with open(shard, "rb") as f:
            rest = f.read()
        with open(shard, "wb") as f:
            f.write(os.urandom(4096))
            f.write(rest)


STEPS = [("config", "config.json changed (a few bytes)"), ("overwrite", "1 MiB overwritten in a shard"),
         ("append", "1 MiB appended to a shard"), ("insert", "4 KiB inserted at a shard's start")]


def du(path):
    # du counts a hard-linked inode once per invocation: what the disk really holds.
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def chunked_layout(s3):
    """(chunks, bytes of manifest and locations) of the last version crowecode-cloud uploaded."""
    objs = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket="ours")
            for o in page.get("Contents", []) if "Bench/versions/" in o["Key"]]
    versions = sorted((o for o in objs if o["Key"].endswith(".json") and not o["Key"].endswith(".loc.json")),
                      key=lambda o: o["LastModified"])
    if not versions:
        return None
    key = versions[-1]["Key"]
    body = s3.get_object(Bucket="ours", Key=key)["Body"].read()
    manifest = json.loads(body)
    chunks = sum(len(f.get("chunks", [])) for f in manifest["files"])
    loc = s3.head_object(Bucket="ours", Key=key[:-len(".json")] + ".loc.json")["ContentLength"]
    return (chunks, len(body) + loc) if chunks else None


def counted_moto(moto):
    """A work directory, a moto server on a free port behind a [`Counter`], and the environment
    the tools run in: credentials for it, rclone's remote `B:` on the counted endpoint, and no
    project or AWS variable of the caller's. Returns (work, server, port, proxy, endpoint, env)."""
    base = os.environ.get("CROWECODE_BENCH_DIR") or os.path.join(tempfile.gettempdir(), "crowecode-bench")
    os.makedirs(base, exist_ok=True)
    work = tempfile.mkdtemp(dir=base)
    port = free_port()
    server = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.1)
    proxy = Counter(port)
    ep = f"http://127.0.0.1:{proxy.port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CROWECODE_", "AWS_", "RCLONE_"))}
    env.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
                "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "RCLONE_CONFIG": "/dev/null",
                "RCLONE_CONFIG_B_TYPE": "s3", "RCLONE_CONFIG_B_PROVIDER": "Other",
                "RCLONE_CONFIG_B_ACCESS_KEY_ID": "bench", "RCLONE_CONFIG_B_SECRET_ACCESS_KEY": "bench-secret",
                "RCLONE_CONFIG_B_ENDPOINT": ep, "RCLONE_CONFIG_B_REGION": "us-east-1",
                "RCLONE_CONFIG_B_FORCE_PATH_STYLE": "true", "XDG_CONFIG_HOME": os.path.join(work, "cfg")})
    return work, server, port, proxy, ep, env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--tools", required=True, help="directory with rclone, s5cmd and python (boto3)")
    ap.add_argument("--moto", required=True, help="the moto_server executable")
    ap.add_argument("--shard-mib", type=int, default=256, help="size of each of the four shards")
    args = ap.parse_args()
    import boto3  # from the bench venv

    work, server, port, proxy, ep, env = counted_moto(args.moto)
    try:
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="bench",
                          aws_secret_access_key="bench-secret", region_name="us-east-1")

        def bucket_bytes(bucket):
            total = 0
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                total += sum(o["Size"] for o in page.get("Contents", []))
            return total

        rclone, s5cmd = os.path.join(args.tools, "rclone"), os.path.join(args.tools, "s5cmd")
        src = os.path.join(work, "src", "Bench")
        tools = {
            "crowecode-cloud": {
                "bucket": "ours",
                "upload": lambda: [args.bin, "--no-progress", "-q", "--provider", "s3", "--bucket", "ours",
                                   "--endpoint", ep, "--region", "us-east-1", "upload", "Bench", "--from", src],
                "download": lambda home: ([args.bin, "--no-progress", "-q", "--provider", "s3", "--bucket", "ours",
                                           "--endpoint", ep, "--region", "us-east-1", "--cache-dir", home,
                                           "download", "Bench"]),
            },
            "rclone sync": {
                "bucket": "rclone",
                "upload": lambda: [rclone, "sync", src, "B:rclone/Bench"],
                "download": lambda home: [rclone, "sync", "B:rclone/Bench", home],
            },
            "s5cmd sync": {
                "bucket": "s5cmd",
                "upload": lambda: [s5cmd, "--endpoint-url", ep, "sync", src + "/", "s3://s5cmd/Bench/"],
                "download": lambda home: [s5cmd, "--endpoint-url", ep, "sync", "s3://s5cmd/Bench/*", home + "/"],
            },
        }
        rows = []
        layout = None
        for name, t in tools.items():
            s3.create_bucket(Bucket=t["bucket"])
            shutil.rmtree(os.path.join(work, "src"), ignore_errors=True)
            make_model(src, args.shard_mib)
            machine = os.path.join(work, f"machine-{t['bucket']}")
            shutil.rmtree(machine, ignore_errors=True)
            os.makedirs(machine)

            def step(label, upload):
                b0, d0 = bucket_bytes(t["bucket"]), du(machine)
                up0, _, r0 = proxy.snapshot()
                uw = measure(t["upload"](), env)[0] if upload else 0.0
                up1, down1, _ = proxy.snapshot()
                dw = measure(t["download"](machine), env)[0]
                _, down2, r2 = proxy.snapshot()
                rows.append((name, label, up1 - up0, down2 - down1, bucket_bytes(t["bucket"]) - b0,
                             du(machine) - d0, r2 - r0, uw, dw))

            step("first upload, first machine", True)
            for key, label in STEPS:
                edit(src, key)
                step(label, True)
            fresh = machine
            shutil.rmtree(fresh)
            os.makedirs(fresh)
            step("a fresh machine (the last version)", False)
        layout = chunked_layout(s3)
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{4 * args.shard_mib} MiB model (4 shards of {args.shard_mib} MiB and a config), one moto server behind"
          f" a counting proxy; bytes and requests as the proxy saw them (bytes include HTTP headers). Wall times"
          f" are moto's more than the tools': it serves many ranged GETs of large objects slowly, and"
          f" that is how crowecode-cloud reads packs (bench/compare.sh measures speed)")
    head = f"{'tool':<16} {'step':<36} {'sent MiB':>9} {'fetched MiB':>11} {'bucket +MiB':>11} {'disk +MiB':>9}" \
           f" {'requests':>8} {'upload s':>8} {'fetch s':>8}"
    print(head)
    for name, label, up, down, bucket, disk, reqs, uw, dw in rows:
        print(f"{name:<16} {label:<36} {up / MIB:>9.1f} {down / MIB:>11.1f} {bucket / MIB:>11.1f} {disk / MIB:>9.1f}"
              f" {reqs:>8} {uw:>8.2f} {dw:>8.2f}")
    print("\nrclone and s5cmd keep one copy of the tree: their bucket holds no previous version to pin or roll back to.")
    if layout:
        chunks, meta = layout
        size = 60 * 10**9
        # As many as full packs of 32 MiB need, rounded up to a round of 16 in flight (src/pack.rs, pack_count).
        packs = -(-size // (32 << 20))
        packs = -(-packs // 16) * 16
        n = size // (512 << 10)
        gets = tail_reads(packs, size // packs, 512 << 10, 16)
        print(f"\nA 60 GB model in this layout: about {packs:,} packs of at most 32 MiB (the default memory"
              f" budget's, in equal shares for 16 in flight), so {packs:,} PUTs to upload it (plus one small"
              f" object per file and 4 for the version) and {gets:,} ranged GETs (one a pack, and smaller ones"
              f" at the end, 16 in flight)"
              f" for a fresh machine; about {n:,} chunks of 512 KiB on average, whose version and locations take"
              f" {meta / chunks:.0f} bytes a chunk here ({meta / chunks * n / 1e6:.1f} MB, {meta / chunks * n / size:.3%}"
              f" of the model): what an upload reads to find what it can reuse.")


def tail_reads(packs, pack, chunk, in_flight, tail=1 << 20):
    """The ranged reads of a fresh download of `packs` packs of `pack` bytes in chunks of `chunk`:
    one a pack, but towards the end each read takes at most the bytes left / reads in flight, down
    to `tail`, and a rest under `tail` goes with the read (src/pack.rs, next_read)."""
    runs = [[chunk] * (pack // chunk) for _ in range(packs)]
    left, reads = sum(map(sum, runs)), 0
    while runs:
        run = runs.pop(0)
        target = max(left // in_flight, tail)
        if sum(run) > target + tail:
            taken, n = 0, 0
            while n < len(run) and (n == 0 or taken < target):
                taken += run[n]
                n += 1
            if n < len(run):
                runs.insert(0, run[n:])
                run = run[:n]
        left -= sum(run)
        reads += 1
    return reads


if __name__ == "__main__":
    main()
