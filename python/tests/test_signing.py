"""Signed models between this tool and the reference OpenSSF Model Signing implementation
(PyPI ``model-signing`` 1.1.1), in both directions, and the Python API under
``require_signature``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from crowecode_cloud import CloudManager, IntegrityError, SignatureError
from test_api import BIN, home, make_model, setup, tree  # noqa: F401  (home is a fixture)

MODEL_SIGNING = str(Path(sys.executable).parent / "model_signing")


def cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=env)


def ok(*args: str) -> str:
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def reference_verify(model_dir: str, signature: str, public_key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MODEL_SIGNING, "verify", "key", "--signature", signature, "--public_key",
                           str(public_key), model_dir], capture_output=True, text=True)


def test_what_we_sign_and_install_verifies_with_the_reference_tool(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup("--provider", "local", "--bucket", str(home / "bucket"))
    key = home / "keys" / "ci"
    ok("keygen", "--out", str(key))
    src = make_model(home / "src", "Alpha")
    (src / ".gitattributes").write_text("*.bin filter=lfs\n")
    manager = CloudManager(progress=False)
    up = manager.upload_model_to_cloud("Alpha", src, sign_key=key)
    assert up.signed_by and up.reference.startswith("Alpha@sha256:")
    monkeypatch.setenv("CROWECODE_TRUSTED_KEYS", str(key) + ".pub")
    got = CloudManager(progress=False, require_signature=True).download("Alpha")
    assert got.signature == got.path + ".sig" and got.signed_by
    assert tree(Path(got.path)) == tree(src)
    done = reference_verify(got.path, got.signature, Path(str(key) + ".pub"))
    assert done.returncode == 0, done.stdout + done.stderr
    # The reference library agrees too, and refuses a changed file.
    from model_signing import verifying
    verifying.Config().use_elliptic_key_verifier(public_key=Path(str(key) + ".pub")).verify(got.path, got.signature)
    other = home / "keys" / "other"
    ok("keygen", "--out", str(other))
    assert reference_verify(got.path, got.signature, Path(str(other) + ".pub")).returncode != 0


def test_a_signature_made_by_the_reference_tool_is_accepted_and_checked(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup("--provider", "s3", "--bucket", f"py-signed-{os.getpid()}-{os.urandom(3).hex()}", "--region", "us-east-1",
          "--endpoint", os.environ.get("CROWECODE_TEST_S3_ENDPOINT") or pytest.fail("CROWECODE_TEST_S3_ENDPOINT unset"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "moto-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto-secret")
    # The publisher's key, made with openssl's defaults (SEC1), and its signature made with the
    # reference tool over a directory named as the model.
    key, pub = home / "publisher.pem", home / "publisher.pub"
    subprocess.run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(key)], check=True)
    subprocess.run(["openssl", "ec", "-in", str(key), "-pubout", "-out", str(pub)], check=True, capture_output=True)
    src = make_model(home / "src", "Beta")
    sig = home / "model.sig"
    signed = subprocess.run([MODEL_SIGNING, "sign", "key", str(src), "--private_key", str(key), "--signature", str(sig)],
                            capture_output=True, text=True)
    assert signed.returncode == 0, signed.stdout + signed.stderr
    manager = CloudManager(progress=False)
    up = manager.upload_model_to_cloud("Beta", src, signature=sig)
    monkeypatch.setenv("CROWECODE_TRUSTED_KEYS", str(pub))
    strict = CloudManager(progress=False, require_signature=True)
    got = strict.download(up.reference)
    assert got.signed_by and str(pub) in got.signed_by
    assert reference_verify(got.path, str(got.signature), pub).returncode == 0
    # The tag was moved without a key: only the pinned reference passes.
    with pytest.raises(SignatureError) as refused:
        strict.download("Beta")
    assert "not signed" in str(refused.value) and refused.value.exit_code == 6
    # A tree changed after signing is refused before anything is uploaded.
    (src / "config.json").write_text('{"changed": true}')
    with pytest.raises(SignatureError) as mismatch:
        manager.upload_model_to_cloud("Beta", src, signature=sig)
    assert "config.json differs" in str(mismatch.value)
    assert manager.resolve("Beta") == up.reference


def test_require_signature_in_the_python_api(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup("--provider", "local", "--bucket", str(home / "bucket"))
    key = home / "k"
    ok("keygen", "--out", str(key))
    ok("upload", "Unsigned", "-q", "--from", str(make_model(home / "src", "Unsigned")))
    ok("upload", "Signed", "-q", "--from", str(make_model(home / "src", "Signed")), "--sign-key", str(key))
    monkeypatch.setenv("CROWECODE_TRUSTED_KEYS", str(key) + ".pub")
    # Without the requirement an unsigned model installs (the CLI warns).
    lenient = CloudManager(progress=False)
    assert Path(lenient.ensure_model("Unsigned")).is_dir()
    monkeypatch.setenv("CROWECODE_REQUIRE_SIGNATURE", "1")
    manager = CloudManager(progress=False)
    assert Path(manager.ensure_model("Signed")).is_dir()
    # The cached unsigned copy is not handed out either: ensure_model asks the bucket, which refuses.
    with pytest.raises(SignatureError) as refused:
        manager.ensure_model("Unsigned")
    assert isinstance(refused.value, IntegrityError) and refused.value.hint
    out = cli("verify", "Unsigned")
    assert out.returncode == 6, out.stdout + out.stderr
    listed: List[str] = [m.model for m in manager.list_cloud_models()]
    assert listed == ["Signed", "Unsigned"]
