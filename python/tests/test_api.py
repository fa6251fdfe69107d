"""The Python API against the installed package: the seed's snippet, every exception from a real
failure, Ctrl-C mid-download, a forked child, and eight threads on one model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterator

import pytest

import crowecode_cloud
from crowecode_cloud import (CloudError, CloudManager, ConflictError, CredentialsError, IntegrityError,
                             ModelNotFoundError, NetworkError, NotConfiguredError, UsageError)

BIN = crowecode_cloud._binary()


def _require(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the suite with scripts/test.sh, which starts the test servers")
    return value


@pytest.fixture()
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh home, cache and config, as a new machine has."""
    d = Path(tempfile.mkdtemp(prefix="crowecode-py-"))
    for k in ("CROWECODE_CLOUD_CONFIG_B64", "CROWECODE_CONFIG", "CROWECODE_HOME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(d / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(d / "cfg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(d / "cache"))
    monkeypatch.setenv("CROWECODE_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("CROWECODE_RETRY_BACKOFF", "0.05")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def make_model(root: Path, name: str, size: int = 300_000) -> Path:
    d = root / name
    (d / "tokenizer").mkdir(parents=True)
    (d / "weights.bin").write_bytes(bytes((i * 31 + len(name)) % 256 for i in range(size)))
    (d / "config.json").write_text(json.dumps({"name": name}))
    (d / "tokenizer" / "tokenizer.json").write_text("{}")
    return d


def tree(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def setup(*args: str) -> None:
    out = subprocess.run([BIN, "setup", *args, "--create-bucket", "-q"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def seed_snippet(model_dir: Path) -> None:
    # Alpha is in the bucket already (CI uploaded it); then the seed's snippet, verbatim but for the
    # import line and a real directory in place of "/path/to/local/model".
    out = subprocess.run([BIN, "upload", "Alpha", "-q", "--from", str(model_dir)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    from crowecode_cloud import get_cloud_manager, get_cloud_config
    cloud_manager = get_cloud_manager()            # None when cloud storage is not configured
    local_path = cloud_manager.download_model_from_cloud("Alpha")
    cloud_manager.upload_model_to_cloud("Alpha", str(model_dir))
    models = cloud_manager.list_cloud_models()
    print(get_cloud_config())
    assert tree(Path(local_path)) == tree(model_dir)
    assert [m.model for m in models] == ["Alpha"]


def test_not_configured_is_none_not_an_exception(home: Path) -> None:
    assert crowecode_cloud.get_cloud_manager() is None
    assert crowecode_cloud.get_cloud_config() is None


def test_the_seed_snippet_on_the_local_provider(home: Path) -> None:
    setup("--provider", "local", "--bucket", str(home / "bucket"))
    seed_snippet(make_model(home / "src", "Alpha"))
    config = crowecode_cloud.get_cloud_config()
    assert config is not None and config["provider"] == "local"
    assert config["config"]["prefix"] == "crowecode-models/"


def test_the_seed_snippet_on_moto(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = _require("CROWECODE_TEST_S3_ENDPOINT")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "moto-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto-secret")
    bucket = f"py-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    setup("--provider", "s3", "--bucket", bucket, "--region", "us-east-1", "--endpoint", endpoint)
    seed_snippet(make_model(home / "src", "Alpha"))


def test_references_pathlib_and_results(home: Path) -> None:
    setup("--provider", "local", "--bucket", str(home / "bucket"))
    mgr = CloudManager(progress=False)
    src = make_model(home / "src", "Beta")
    up = mgr.upload_model_to_cloud("Beta:prod", src)
    assert up.reference.startswith("Beta@sha256:") and "prod" in up.tags
    assert mgr.resolve("Beta:prod") == up.reference
    d = mgr.download(up.reference)
    assert d.status == "downloaded" and d.version == up.version
    assert mgr.ensure_model("Beta:prod") == d.path
    assert mgr.download("Beta", only=["*.json"]).files == 2


def test_each_exception_comes_from_a_real_failure(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup("--provider", "local", "--bucket", str(home / "bucket"))
    mgr = CloudManager(progress=False)
    with pytest.raises(UsageError) as usage:
        mgr.download_model_from_cloud("bad!")
    assert usage.value.exit_code == 2 and usage.value.hint
    with pytest.raises(ModelNotFoundError) as missing:
        mgr.download_model_from_cloud("Gamma")
    assert isinstance(missing.value, FileNotFoundError) and isinstance(missing.value, CloudError)
    assert "list" in (missing.value.hint or "")
    src = make_model(home / "src", "Alpha")
    mgr.upload_model_to_cloud("Alpha", src)
    pack = next((home / "bucket" / "crowecode-models" / "_pieces" / "packs").rglob("*.pack"))
    data = bytearray(pack.read_bytes())
    data[600] ^= 0x20
    pack.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        mgr.download_model_from_cloud("Alpha")
    # Hints name the CLI's flags, and from Python the keyword arguments they stand for.
    with pytest.raises(UsageError) as contradiction:
        mgr.upload_model_to_cloud("Alpha", src, tags=["latest"], no_latest=True)
    assert "--no-latest" in (contradiction.value.hint or "")
    assert "[from Python: no_latest=True]" in (contradiction.value.hint or "")
    cfg = home / "cfg" / "crowecode" / "cloud.json"
    cfg.write_text("{")
    with pytest.raises(NotConfiguredError):
        crowecode_cloud.get_cloud_config()
    cfg.unlink()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("CROWECODE_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("CROWECODE_CLOUD_CONFIG_B64", _b64({"enabled": True, "provider": "s3", "config": {
        "bucket": "nowhere", "region": "us-east-1", "endpoint": "http://127.0.0.1:9"}}))
    with pytest.raises(NetworkError):
        CloudManager(progress=False).download_model_from_cloud("Alpha")
    endpoint = _require("CROWECODE_TEST_S3_RCLONE_ENDPOINT")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", _require("CROWECODE_TEST_S3_RCLONE_KEY"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    monkeypatch.setenv("CROWECODE_CLOUD_CONFIG_B64", _b64({"enabled": True, "provider": "s3", "config": {
        "bucket": "any", "region": "us-east-1", "endpoint": endpoint}}))
    with pytest.raises(CredentialsError) as denied:
        CloudManager(progress=False).download_model_from_cloud("Alpha")
    assert "not-the-secret" not in str(denied.value)
    # rclone ignores conditional writes, so an upload (it moves latest) is refused there.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", _require("CROWECODE_TEST_S3_RCLONE_SECRET"))
    bucket = f"pyc-{os.getpid()}"
    monkeypatch.delenv("CROWECODE_CLOUD_CONFIG_B64")
    setup("--provider", "s3", "--bucket", bucket, "--region", "us-east-1", "--endpoint", endpoint, "--no-write")
    monkeypatch.setenv("CROWECODE_CLOUD_CONFIG_B64", _b64({"enabled": True, "provider": "s3", "config": {
        "bucket": bucket, "region": "us-east-1", "endpoint": endpoint}}))
    with pytest.raises(ConflictError) as conflict:
        CloudManager(progress=False).upload_model_to_cloud("Alpha", src)
    assert "CROWECODE_UNSAFE_TAG_MOVES" in (conflict.value.hint or "")


def _b64(doc: object) -> str:
    import base64
    return base64.b64encode(json.dumps(doc).encode()).decode()


def test_eight_threads_share_one_transfer(home: Path) -> None:
    setup("--provider", "local", "--bucket", str(home / "bucket"))
    mgr = CloudManager(progress=False)
    mgr.upload_model_to_cloud("Alpha", make_model(home / "src", "Alpha", 3_000_000))
    results = []
    lock = threading.Lock()

    def one() -> None:
        d = mgr.download("Alpha")
        with lock:
            results.append(d)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len({r.path for r in results}) == 1
    assert [r.status for r in results].count("downloaded") == 1, [r.status for r in results]


def test_a_forked_child_downloads_after_its_parent(home: Path) -> None:
    setup("--provider", "local", "--bucket", str(home / "bucket"))
    mgr = CloudManager(progress=False)
    mgr.upload_model_to_cloud("Alpha", make_model(home / "src", "Alpha"))
    path = mgr.ensure_model("Alpha")
    pid = os.fork()
    if pid == 0:  # the child: the same manager, in a forked process
        try:
            ok = CloudManager(progress=False).download_model_from_cloud("Alpha") == path and mgr.ensure_model("Alpha") == path
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_ctrl_c_stops_a_download_cleanly_and_raises_keyboard_interrupt(home: Path) -> None:
    setup("--provider", "local", "--bucket", str(home / "bucket"))
    CloudManager(progress=False).upload_model_to_cloud("Alpha", make_model(home / "src", "Alpha", 12_000_000))
    script = (
        "import crowecode_cloud,sys\n"
        "try:\n"
        "    crowecode_cloud.CloudManager(progress=False).download_model_from_cloud('Alpha')\n"
        "except KeyboardInterrupt:\n"
        "    print('KeyboardInterrupt'); sys.exit(130)\n"
    )
    env = dict(os.environ, CROWECODE_LIMIT_RATE="2M")
    # A suite started with SIGINT ignored (nohup, some CI runners) would pass that on: the child
    # gets the default disposition back, as an interactive user's process has it.
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Interrupt once the download is under way: bytes are arriving in its staging directory.
    staging = home / "cache" / "crowecode" / ".staging"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if staging.is_dir() and any(f.is_file() and f.stat().st_size > 0 for f in staging.rglob("*")):
            break
        time.sleep(0.05)
    else:
        child.kill()
        raise AssertionError("the download never started writing")
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 130 and "KeyboardInterrupt" in out
    cache = home / "cache" / "crowecode"
    assert not (cache / "models" / "Alpha").exists(), "nothing installed"
    assert not any((cache / ".staging").iterdir()), "staging removed"


def _prune_max_size_zero() -> "subprocess.CompletedProcess[str]":
    return subprocess.run([BIN, "--json", "prune", "--max-size", "0"], capture_output=True, text=True)


def test_use_holds_the_version_against_prune_for_the_block(home: Path) -> None:
    setup("--provider", "local", "--bucket", str(home / "bucket"))
    mgr = CloudManager(progress=False)
    src = make_model(home / "src", "Gamma")
    mgr.upload_model_to_cloud("Gamma:prod", src)
    with mgr.use("Gamma:prod") as path:
        assert tree(Path(path)) == tree(src)
        held = _prune_max_size_zero()
        assert held.returncode == 8, held.stderr
        report = json.loads(held.stdout)
        assert [h["path"] for h in report["held"]] == [path]
        assert report["held"][0]["holders"], "the holding process is named"
        # Still whole after the prune: every file reads as uploaded.
        assert tree(Path(path)) == tree(src)
    freed = _prune_max_size_zero()
    assert freed.returncode == 0, freed.stderr
    assert [p["path"] for p in json.loads(freed.stdout)["local"]] == [path]
    assert not Path(path).exists()
    # A failure inside the block ends the hold too; a missing model raises before it.
    with pytest.raises(RuntimeError):
        with mgr.use("Gamma:prod") as again:
            raise RuntimeError(again)
    assert _prune_max_size_zero().returncode == 0
    with pytest.raises(ModelNotFoundError):
        with mgr.use("Nobody"):
            pass
