"""MLflow tracking on an embedded sqlite store: runs, tags, redacted artifacts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from findial.data.pii import redact_json


def configure(tracking_uri: str, artifact_root: str | Path) -> None:
    """Point MLflow at the store; create the sqlite file's folder first."""
    import mlflow

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact_root).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    _store.artifact_root = Path(artifact_root).resolve()


class _Store:
    artifact_root: Path | None = None  # where new experiments keep their artifacts (set by configure)


_store = _Store()


def experiment_id(name: str) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = _store.artifact_root
    location = (root / name).as_uri() if root else None
    return mlflow.create_experiment(name, artifact_location=location)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def run(
    experiment: str, run_name: str, tags: dict[str, str] | None = None, nested: bool = False, run_id: str | None = None
) -> Iterator[Any]:
    """An MLflow run of ``experiment``; ``run_id``: continue that run (a resumed training) instead of a new one."""
    import mlflow

    base = {"findial.git_commit": git_commit()}
    if run_id:
        with mlflow.start_run(run_id=run_id, nested=nested) as active:
            mlflow.set_tags({**base, **(tags or {})})
            yield active
        return
    with mlflow.start_run(
        experiment_id=experiment_id(experiment), run_name=run_name, tags={**base, **(tags or {})}, nested=nested
    ) as active:
        yield active


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_params(params: dict) -> None:
    import mlflow

    flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i : i + 100]))


def log_json(obj: Any, artifact_file: str) -> None:
    """Log a JSON artifact with personal data masked."""
    import mlflow

    mlflow.log_text(json.dumps(redact_json(obj), indent=2, ensure_ascii=False, default=str), artifact_file)


def log_text(text: str, artifact_file: str) -> None:
    import mlflow

    mlflow.log_text(redact_json(text), artifact_file)


def log_metrics(metrics: dict[str, Any], prefix: str = "", step: int | None = None) -> None:
    import mlflow

    clean = {
        f"{prefix}{k}": float(v)
        for k, v in flatten(metrics).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if clean:
        mlflow.log_metrics(clean, step=step)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``path`` through a temporary file beside it, renamed into place: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make reports and corpora private to the writer
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_directory(target: str | Path, keep_existing: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name beside ``target``; when the block ends without an error, rename
    it into place, so a directory that exists is complete. An existing ``target`` is replaced, or, with
    ``keep_existing`` (a cache another process may fill first), kept."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if keep_existing:
            try:
                os.replace(tmp, target)
            except OSError:  # another process finished first: keep its copy
                if not target.is_dir():
                    raise
        else:
            old = target.with_name(f".{target.name}.old-{os.getpid()}") if target.exists() else None
            if old is not None:
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
