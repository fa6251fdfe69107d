"""Times crowecode-cloud on the local provider against `cp -r` + `sha256sum` (the machine's
reference for "copy a tree and verify it"), measuring wall time, client CPU seconds and peak RSS
of each command's whole process tree (wait4 rusage)."""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile

from common import drop_caches, measure

MIB = 1 << 20


def make_model(root, gib):
    """Mostly incompressible shards plus small text files."""
    os.makedirs(os.path.join(root, "tokenizer"))
    total = int(gib * 1024) * MIB
    shard = 512 * MIB
    chunk = os.urandom(MIB)
    n = 0
    while total > 0:
        size = min(shard, total)
        n += 1
        with open(os.path.join(root, f"model-{n:05d}.safetensors"), "wb") as f:
            left = size
            while left > 0:
                # Vary each chunk so no two blocks are equal (no dedup or compression luck).
                piece = chunk[: min(left, len(chunk))]
                f.write(piece[:8] + n.to_bytes(4, "little") + left.to_bytes(8, "little") + piece[20:])
                left -= len(piece)
        total -= size
    for name, text in [("config.json", '{"hidden_size": 4096}\n'), ("generation_config.json", "{}\n"),
                       ("tokenizer/tokenizer.json", "x" * 2_000_000), ("README.md", "# bench model\n")]:
        with open(os.path.join(root, name), "w") as f:
            f.write(text)


def own_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("sizes", nargs="*", type=float, default=[2.0])
    args = ap.parse_args()
    base = os.environ.get("CROWECODE_BENCH_DIR") or os.path.join(tempfile.gettempdir(), "crowecode-bench")
    rows = []
    for gib in args.sizes:
        work = tempfile.mkdtemp(dir=os.makedirs(base, exist_ok=True) or base)
        try:
            model = os.path.join(work, "models", "Bench")
            make_model(model, gib)
            size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(model) for f in fs)
            env = {k: v for k, v in os.environ.items() if not k.startswith("CROWECODE_")}
            env.update({"CROWECODE_HOME": os.path.join(work, "cache"), "XDG_CONFIG_HOME": os.path.join(work, "cfg")})
            bucket = os.path.join(work, "bucket")
            common = [args.bin, "--no-progress", "--provider", "local", "--bucket", bucket, "--prefix", "m/"]
            subprocess.run(common + ["setup", "--create-bucket", "--no-write"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results = {"cp -r + sha256sum": [], "upload": [], "download": []}
            cold = drop_caches()
            for _ in range(args.runs):
                dst = os.path.join(work, "copy")
                shutil.rmtree(dst, ignore_errors=True)
                drop_caches()
                results["cp -r + sha256sum"].append(measure(
                    ["bash", "-c", 'cp -r "$0" "$1" && find "$1" -type f -print0 | xargs -0 sha256sum > /dev/null', model, dst]))
                shutil.rmtree(dst, ignore_errors=True)
                drop_caches()
                results["upload"].append(measure(common + ["upload", "Bench", "--force", "--from", model], env=env))
                shutil.rmtree(os.path.join(work, "cache"), ignore_errors=True)
                drop_caches()
                results["download"].append(measure(common + ["download", "Bench"], env=env))
            for name, runs in results.items():
                wall = statistics.median(r[0] for r in runs)
                cpu = statistics.median(r[1] for r in runs)
                rss = max(r[2] for r in runs)
                rows.append((f"{gib:g} GiB", name, wall, size / MIB / wall, cpu, rss))
            ref = statistics.median(r[0] for r in results["cp -r + sha256sum"])
            for name in ("upload", "download"):
                w = statistics.median(r[0] for r in results[name])
                rows.append((f"{gib:g} GiB", f"{name} / reference", w / ref, None, None, None))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nlocal provider, medians of {args.runs} runs, page cache {'dropped before each run' if cold else 'warm (no permission to drop)'}; "
          f"peak RSS floor (this script) {own_rss_mib():.1f} MiB")
    print(f"{'model':>8}  {'command':<28} {'wall s':>8} {'MiB/s':>8} {'cpu s':>7} {'peak RSS MiB':>13}")
    for size, name, wall, rate, cpu, rss in rows:
        if rate is None:
            print(f"{size:>8}  {name:<28} {wall:>7.2f}x")
        else:
            print(f"{size:>8}  {name:<28} {wall:>8.2f} {rate:>8.0f} {cpu:>7.2f} {rss:>13.1f}")


if __name__ == "__main__":
    main()
