"""The promotion audit log: append-only JSON Lines, hash-chained, appended under a file lock.

Each record carries ``prev`` (the previous record's hash; the first one ``GENESIS``) and ``hash`` (SHA-256 of
the record's canonical JSON without ``hash``). ``verify`` finds an edited record (its hash no longer matches),
a removed, inserted or reordered one (the next record's ``prev`` breaks the chain) and, given the registry's
heads (the hash of each model's last record, stored as a registered-model tag at every promotion), a removed
tail.

Release steps (``findial release``, a server's automatic rollback) read the registry, decide, append and apply;
``step_lock`` serialises such steps across processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

GENESIS = "0" * 64
HEAD_TAG = "findial.audit_head"


def _digest(record: Mapping) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    ).hexdigest()


def _last_hash(f) -> str:
    f.seek(0)
    last = GENESIS
    for line in f:
        if line.strip():
            try:
                last = json.loads(line)["hash"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(
                    f"{f.name}: a record that is not a chained audit record; "
                    f"run `findial audit verify` and repair the log before appending"
                ) from None
    return last


def append(path: str | Path, record: Mapping, then: Callable[[dict], object] | None = None) -> dict:
    """Append ``record`` (chained to the last one) and return it with ``prev`` and ``hash``.

    The lock covers reading the last hash, writing the line and ``then(record)`` (the registry's head tag), so
    concurrent promotions each add one record and the head names the last one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            chained = {**{k: v for k, v in record.items() if k not in ("prev", "hash")}, "prev": _last_hash(f)}
            chained["hash"] = _digest(chained)
            f.seek(0, os.SEEK_END)
            f.write(json.dumps(chained, sort_keys=True, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            if then is not None:
                then(chained)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return chained


@contextmanager
def step_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on ``<log>.lock`` (beside the log) for the duration of a read-decide-append-apply step,
    so that two processes never decide on the same registry state (e.g. two replicas rolling back one
    challenger)."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def records(path: str | Path) -> list[dict]:
    path = Path(path)
    return (
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.exists()
        else []
    )


def verify(path: str | Path, heads: Mapping[str, str] | None = None) -> list[str]:
    """Problems found in the log (empty: intact). ``heads``: model name -> the hash its registry tag holds."""
    path = Path(path)
    if not path.exists():
        return [f"{path}: no audit log"] if heads else []
    problems, prev, last_of = [], GENESIS, {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            problems.append(f"{path}:{n}: not a JSON record")
            continue
        if not isinstance(rec, dict) or "hash" not in rec or "prev" not in rec:
            problems.append(f"{path}:{n}: no prev/hash fields (not a chained record)")
            continue
        if _digest(rec) != rec["hash"]:
            problems.append(f"{path}:{n}: record edited (its hash does not match its content)")
        if rec["prev"] != prev:
            problems.append(f"{path}:{n}: chain broken (a record before this one was removed, inserted or edited)")
        prev = rec["hash"]
        if rec.get("model_name"):
            last_of[rec["model_name"]] = rec["hash"]
    for name, head in (heads or {}).items():
        if last_of.get(name) != head:
            problems.append(
                f"{path}: the registry's last audited promotion of {name} ({head[:12]}) is not the "
                f"log's last record for it: records were removed from the end"
            )
    return problems
