"""The crowecode-cloud Python API: the names existing deployments call, over the bundled binary.

Every call runs the ``crowecode-cloud`` binary shipped in this package with ``--json`` and reads its
answer. A process per call makes ``fork`` (multiprocessing, gunicorn ``--preload``, celery), threads
and signals non-issues: nothing of a runtime lives in the Python process. Concurrent calls for one
model on one machine share one transfer (the binary's per-model lock).

References are the CLI's: ``"Alpha"`` (= ``"Alpha:latest"``), ``"Alpha:prod"``, ``"Alpha@sha256:…"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, NoReturn, Optional, Sequence, Union

__all__ = [
    "CloudError",
    "UsageError",
    "NotConfiguredError",
    "CredentialsError",
    "ModelNotFoundError",
    "IntegrityError",
    "SignatureError",
    "NetworkError",
    "ConflictError",
    "CloudManager",
    "Downloaded",
    "Uploaded",
    "RemoteModel",
    "get_cloud_manager",
    "get_cloud_config",
]

PathLike = Union[str, "os.PathLike[str]"]


class CloudError(Exception):
    """A failed call: the message and the hint the CLI prints, and its exit code."""

    exit_code: int = 1

    def __init__(self, message: str, hint: Optional[str] = None, exit_code: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class UsageError(CloudError, ValueError):
    """Exit 2: a bad request (invalid model name or reference, bad option)."""

    exit_code = 2


class NotConfiguredError(CloudError):
    """Exit 3: no usable configuration, or the bucket does not exist."""

    exit_code = 3


class CredentialsError(CloudError, PermissionError):
    """Exit 4: credentials missing or rejected, or permission denied."""

    exit_code = 4


class ModelNotFoundError(CloudError, FileNotFoundError):
    """Exit 5: the model (or tag, or version) is not in the bucket."""

    exit_code = 5


class IntegrityError(CloudError):
    """Exit 6: bytes did not match what the manifest promised; nothing was installed."""

    exit_code = 6


class SignatureError(IntegrityError):
    """Exit 6: signatures are required and no trusted key signed this version (or its tag), or a
    signature does not match it; nothing was installed."""


class NetworkError(CloudError, ConnectionError):
    """Exit 7: the network was still failing after retries."""

    exit_code = 7


class ConflictError(CloudError):
    """Exit 8: a tag moved meanwhile (compare-and-swap lost), or the storage cannot move tags."""

    exit_code = 8


_BY_CODE = {c.exit_code: c for c in (UsageError, NotConfiguredError, CredentialsError, ModelNotFoundError,
                                     IntegrityError, NetworkError, ConflictError)}


# The CLI's hints name its flags; from Python the same choice is a keyword argument.
_KEYWORDS = (
    ("--require-signature", "require_signature=True"),
    ("--no-latest", "no_latest=True"),
    ("--sign-key", "sign_key=..."),
    ("--signature", "signature=..."),
    ("--concurrency", "concurrency=..."),
    ("--offline", "offline=True"),
    ("--force", "force=True"),
    ("--only", "only=[...]"),
    ("--tag", "tags=[...]"),
    ("--format", "format=..."),
)


def _python_hint(hint: Optional[str]) -> Optional[str]:
    """``hint`` with the keyword arguments its flags stand for, when it names any."""
    if not hint:
        return hint
    seen = []
    for flag, keyword in _KEYWORDS:
        if re.search(re.escape(flag) + r"(?![\w-])", hint) and keyword not in seen:
            seen.append(keyword)
    if not seen:
        return hint
    return f"{hint} [from Python: {', '.join(seen)}]"


def _error(obj: Mapping[str, Any], code: int) -> CloudError:
    message = str(obj.get("error", "crowecode-cloud failed"))
    cls = _BY_CODE.get(code, CloudError)
    if code == IntegrityError.exit_code and "signature check failed" in message:
        cls = SignatureError
    return cls(message, _python_hint(obj.get("hint")), code)


@dataclass(frozen=True)
class Downloaded:
    """One ready model: ``path`` is the verified, immutable version directory."""

    model: str
    path: str
    status: str
    sha256: str
    size: int
    files: int
    transferred: int
    seconds: float
    version: Optional[str] = None
    tag: Optional[str] = None
    #: The OMS signature installed beside ``path`` (``model_signing verify`` takes it), if any.
    signature: Optional[str] = None
    #: The trusted key that signed it, when trusted keys are configured.
    signed_by: Optional[str] = None


@dataclass(frozen=True)
class Uploaded:
    """One upload: ``reference`` is the pinned ``Model@sha256:…`` to hand to a deploy."""

    model: str
    status: str
    version: str
    reference: str
    sha256: str
    size: int
    files: int
    tags: List[str] = field(default_factory=list)
    #: Short ids of the keys whose signatures were stored with it.
    signed_by: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class RemoteModel:
    """One model in the bucket."""

    model: str
    version: Optional[str]
    size: Optional[int]
    files: Optional[int]
    uploaded_at: Optional[str]
    tags: Dict[str, str]
    cached: Optional[str]
    cached_current: bool
    error: Optional[str]


def _binary() -> str:
    found = os.environ.get("CROWECODE_CLOUD_BIN")
    if found:
        return found
    scripts = Path(sysconfig.get_path("scripts")) / "crowecode-cloud"
    if scripts.is_file():
        return str(scripts)
    on_path = shutil.which("crowecode-cloud")
    if on_path:
        return on_path
    raise CloudError("the crowecode-cloud binary is not installed next to this package",
                     "reinstall the package (pip install ./python), or set CROWECODE_CLOUD_BIN")


def _run(args: Sequence[str], *, progress: bool = True, env: Optional[Mapping[str, str]] = None) -> Any:
    """Runs the binary with --json; returns its JSON answer or raises the error it reports."""
    cmd = [_binary(), "--json"] + ([] if progress else ["--no-progress"]) + list(args)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            stderr=None if progress else subprocess.DEVNULL,
                            env=dict(env) if env is not None else None)
    try:
        out, _ = proc.communicate()
    except KeyboardInterrupt:
        # The child stops cleanly on SIGINT (staging removed, uploads aborted); wait for it.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    text = out.decode("utf-8", "replace").strip()
    try:
        answer = json.loads(text) if text else {}
    except json.JSONDecodeError:
        answer = {"error": text or "crowecode-cloud printed no answer"}
    if proc.returncode != 0:
        _raise_for(answer if isinstance(answer, dict) else {}, proc.returncode)
    return answer


def _read_json(proc: "subprocess.Popen[bytes]") -> Any:
    """The one JSON object ``proc`` prints on stdout, read as it arrives (the process goes on);
    ``None`` if stdout ends first."""
    assert proc.stdout is not None
    text = b""
    for line in proc.stdout:
        text += line
        try:
            return json.loads(text.decode("utf-8", "replace"))
        except json.JSONDecodeError:
            continue
    return None


def _raise_for(answer: Mapping[str, Any], code: int) -> NoReturn:
    """Raises the error a failed command reported (its first model's, when it names one)."""
    if code in (130, 143):
        raise KeyboardInterrupt
    errors = answer.get("errors")
    if errors:
        first = errors[0]
        raise _error({"error": f"{first.get('model')}: {first.get('error')}", "hint": first.get("hint")},
                     int(first.get("exit_code", code)))
    raise _error(answer, code)


def _end(proc: "subprocess.Popen[bytes]") -> None:
    """Ends a ``run`` holding a version: its stdin closes, and it exits."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _downloaded(d: Mapping[str, Any]) -> Downloaded:
    return Downloaded(model=d["model"], path=d["path"], status=d["status"], sha256=d["sha256"], size=d["size"],
                      files=d["files"], transferred=d["transferred"], seconds=d["seconds"],
                      version=d.get("version"), tag=d.get("tag"), signature=d.get("signature"),
                      signed_by=d.get("signed_by"))


class CloudManager:
    """The seed's cloud manager: download, upload and list models in the configured bucket.

    Options given here apply to every call; most calls take them as keywords too.
    """

    def __init__(self, *, concurrency: Optional[int] = None, progress: bool = True,
                 env: Optional[Mapping[str, str]] = None, require_signature: bool = False) -> None:
        self.concurrency = concurrency
        self.progress = progress
        self.env = dict(env) if env is not None else None
        #: Refuse what no trusted key signed (also CROWECODE_REQUIRE_SIGNATURE=1 or the config's
        #: require_signature); trusted keys come from the config or CROWECODE_TRUSTED_KEYS.
        self.require_signature = require_signature

    def _call(self, args: List[str], progress: Optional[bool] = None) -> Any:
        return _run(args, progress=self.progress if progress is None else progress, env=self.env)

    def download(self, reference: str, *, only: Sequence[str] = (), concurrency: Optional[int] = None,
                 progress: Optional[bool] = None, force: bool = False, offline: bool = False,
                 require_signature: Optional[bool] = None) -> Downloaded:
        """Makes the version ``reference`` names ready and verified; returns what happened."""
        args = ["download", reference]
        if self.require_signature if require_signature is None else require_signature:
            args.append("--require-signature")
        for pattern in only:
            args += ["--only", pattern]
        n = concurrency or self.concurrency
        if n:
            args += ["--concurrency", str(n)]
        if force:
            args.append("--force")
        if offline:
            args.append("--offline")
        answer = self._call(args, progress)
        return _downloaded(answer["models"][0])

    @contextlib.contextmanager
    def use(self, reference: str, *, offline: bool = False, progress: Optional[bool] = None,
            require_signature: Optional[bool] = None) -> Iterator[str]:
        """Makes the version ``reference`` names ready, and holds it in use for the ``with`` block:
        no ``prune`` on this machine removes it meanwhile. Yields its directory::

            with manager.use("Alpha:prod") as path:
                serve(path)

        The hold is a lock of a ``crowecode-cloud run`` process that this block keeps open; it
        ends with the block, or with this process however it ends."""
        show = self.progress if progress is None else progress
        args = [_binary(), "--json"] + ([] if show else ["--no-progress"]) + ["run", reference]
        if self.require_signature if require_signature is None else require_signature:
            args.append("--require-signature")
        if offline:
            args.append("--offline")
        if self.concurrency:
            args += ["--concurrency", str(self.concurrency)]
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=None if show else subprocess.DEVNULL, env=self.env)
        assert proc.stdout is not None and proc.stdin is not None
        try:
            answer = _read_json(proc)
            models = answer.get("models") if isinstance(answer, dict) else None
            if not models:
                # A failure (its answer says which): the process ends without holding anything.
                proc.wait()
                _raise_for(answer if isinstance(answer, dict) else {}, proc.returncode or 1)
            assert isinstance(models, list)
            path = str(models[0]["path"])
        except BaseException:
            _end(proc)
            raise
        try:
            yield path
        finally:
            _end(proc)

    def download_model_from_cloud(self, name: str, **options: Any) -> str:
        """Downloads ``name`` (any reference) and returns its ready directory."""
        return self.download(name, **options).path

    def ensure_model(self, reference: str, **options: Any) -> str:
        """The model from this machine's cache if it is there (no request), else from the bucket
        (and when the bucket has none, from the configured fallback command)."""
        try:
            return self.download(reference, offline=True, **options).path
        except (ModelNotFoundError, SignatureError):
            # Not here, or here without a signature a trusted key made: the bucket decides.
            return self.download(reference, **options).path

    def upload_model_to_cloud(self, name: str, path: PathLike, *, tags: Sequence[str] = (), no_latest: bool = False,
                              force: bool = False, progress: Optional[bool] = None,
                              sign_key: Optional[PathLike] = None, signature: Optional[PathLike] = None,
                              format: Optional[int] = None) -> Uploaded:
        """Uploads the directory ``path`` as ``name`` (``"Alpha"`` or ``"Alpha:TAG"``); signed with
        the private key ``sign_key`` (or CROWECODE_SIGNING_KEY), and/or with the publisher's OMS
        ``signature`` file, which must match the tree. ``format`` is the bucket format of the new
        version: 3 (the default: chunks in shared packs, named by BLAKE3), 2 (the same named by
        sha256, for machines of builds that do not read 3) or 1 (one archive, which release 0.1.0
        reads)."""
        args = ["upload", name, "--from", os.fspath(path)]
        if format is not None:
            args += ["--format", str(format)]
        if sign_key is not None:
            args += ["--sign-key", os.fspath(sign_key)]
        if signature is not None:
            args += ["--signature", os.fspath(signature)]
        for t in tags:
            args += ["--tag", t]
        if no_latest:
            args.append("--no-latest")
        if force:
            args.append("--force")
        u = self._call(args, progress)["models"][0]
        return Uploaded(model=u["model"], status=u["status"], version=u["version"], reference=u["reference"],
                        sha256=u["sha256"], size=u["size"], files=u["files"], tags=list(u.get("tags", [])),
                        signed_by=list(u.get("signed_by", [])))

    def list_cloud_models(self) -> List[RemoteModel]:
        """Every model in the bucket."""
        models = self._call(["list"], False)["models"]
        return [RemoteModel(model=m["model"], version=m.get("version"), size=m.get("size"), files=m.get("files"),
                            uploaded_at=m.get("uploaded_at"), tags=dict(m.get("tags") or {}), cached=m.get("cached"),
                            cached_current=bool(m.get("cached_current")), error=m.get("error"))
                for m in models]

    def resolve(self, reference: str) -> str:
        """The pinned reference (``Model@sha256:…``) ``reference`` names now."""
        return str(self._call(["resolve", reference], False)["models"][0]["pinned"])


def _configured(env: Mapping[str, str]) -> bool:
    if env.get("CROWECODE_CLOUD_CONFIG_B64", "").strip():
        return True
    explicit = env.get("CROWECODE_CONFIG")
    if explicit:
        return True
    home = env.get("HOME")
    base = env.get("XDG_CONFIG_HOME") or (os.path.join(home, ".config") if home else None)
    return base is not None and os.path.isfile(os.path.join(base, "crowecode", "cloud.json"))


def get_cloud_config() -> Optional[Dict[str, Any]]:
    """The effective configuration document (no secrets: they never belong in it), or ``None``
    when cloud storage is not configured. A configuration that is there but broken raises."""
    if not _configured(os.environ):
        return None
    answer = _run(["setup", "--no-write"], progress=False)
    return {"enabled": True, "provider": answer["provider"], "config": answer["config"]}


def get_cloud_manager(**options: Any) -> Optional[CloudManager]:
    """A :class:`CloudManager` for the configured bucket, or ``None`` when cloud storage is not
    configured (never an exception for that)."""
    if not _configured(os.environ):
        return None
    return CloudManager(**options)

