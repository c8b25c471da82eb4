"""The serving audit log: one JSON line per understood turn, masked, appended atomically.

Each record is masked again (``redact_json``) on the way out, whatever its
caller did. A record is written with one ``write`` on an ``O_APPEND`` descriptor
under a thread lock and an exclusive ``flock``, so lines from concurrent
requests, threads or processes (Ray replicas) never interleave or tear.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import threading
from pathlib import Path

from findial.data.pii import redact_json


class AuditLog:
    def __init__(self, path: str | Path, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        record = {"ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"), **record}
        line = (json.dumps(redact_json(record), ensure_ascii=False, sort_keys=True, default=str) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(line)
                while view:  # one write in practice; loop only on a short write
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)  # closing releases the flock

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text(encoding="utf-8").splitlines() if x.strip()]
