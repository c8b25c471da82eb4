"""The serving audit log: one JSON line per understood turn, masked, appended atomically.

Each record is masked again on the way out (``mask_strings``), whatever its
caller did. A record is written with one ``write`` on an ``O_APPEND`` descriptor
under a thread lock and an exclusive ``flock``, so lines from concurrent
requests, threads or processes (Ray replicas) never interleave or tear.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from findial.data.pii import default_masker

_ASCII_MAYBE_PII = re.compile(r"[0-9@]")


def mask_strings(obj: Any) -> Any:
    """``redact_json`` with a fast path: an ASCII string with no digit and no @ cannot hold personal
    data the rules detect (keys, labels, intents), so it is not scanned; every other string is."""
    if isinstance(obj, str):
        if obj.isascii() and not _ASCII_MAYBE_PII.search(obj):
            return obj
        return default_masker().mask(obj)
    if isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) >= 10**6:
        text = str(obj)  # long enough to be a phone, card or ID number
        masked = default_masker().mask(text)
        return obj if masked == text else masked
    if isinstance(obj, dict):
        return {mask_strings(k): mask_strings(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mask_strings(v) for v in obj]
    return obj


def masked_json_line(record: dict) -> str:
    return json.dumps(mask_strings(record), ensure_ascii=False, sort_keys=True, default=str)


class AuditLog:
    def __init__(self, path: str | Path, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        record = {"ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"), **record}
        line = (masked_json_line(record) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(line)
                while view:  # one write in practice; loop only on a short write
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)  # closing releases the flock

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text(encoding="utf-8").splitlines() if x.strip()]
