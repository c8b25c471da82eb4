"""API-key authentication, checked by the guard (``guard.py``) before any route, /docs and /openapi.json included.

``auth.required``: ``auto`` (the default) turns it on whenever ``host`` is not
loopback (127.0.0.1, ::1, localhost), ``true`` always, ``false`` never (on a
public host with a loud warning). The keys come from ``auth.keys_file`` (one per
line, ``#`` comment lines) and the environment variable ``auth.keys_env``
(comma-separated); both are read once, when the app is built. Auth on and no key
configured: ``findial serve`` refuses to start (``SettingsError`` naming the setting).

A client sends ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; the key is
compared with every configured key with ``hmac.compare_digest`` (no early exit).
``GET /healthz`` and ``GET /readyz`` (the probes) need no key. A missing or wrong
key is a 401 ``unauthorized`` with ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .settings import ServeSettings, SettingsError

log = logging.getLogger("findial.serving")
OPEN = frozenset({("GET", "/healthz"), ("GET", "/readyz")})  # probes: no key
_KEY = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII: what a header carries unchanged


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_required(settings: ServeSettings) -> bool:
    required = settings.auth.required
    return not is_loopback(settings.host) if required == "auto" else bool(required)


def _read_keys(settings: ServeSettings, source: str) -> list[str]:
    auth, keys = settings.auth, []
    if auth.keys_file:
        try:
            lines = Path(auth.keys_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(
                f"{source}: auth.keys_file: cannot read {auth.keys_file}: {type(exc).__name__}"
            ) from None
        keys += [
            (line.strip(), "auth.keys_file") for line in lines if line.strip() and not line.strip().startswith("#")
        ]
    if auth.keys_env:
        keys += [
            (k.strip(), f"auth.keys_env ({auth.keys_env})")
            for k in os.environ.get(auth.keys_env, "").split(",")
            if k.strip()
        ]
    for key, where in keys:  # the key itself is never printed
        if not _KEY.fullmatch(key):
            raise SettingsError(f"{source}: {where}: an API key must be 1-256 visible ASCII characters (no spaces)")
    return [k for k, _ in keys]


@dataclass(frozen=True)
class ApiKeys:
    """The keys the API accepts; ``required`` False lets every request through."""

    required: bool = False
    keys: tuple[bytes, ...] = field(default=(), repr=False)

    @classmethod
    def from_settings(cls, settings: ServeSettings, source: str = "serve.yaml") -> "ApiKeys":
        required, keys = auth_required(settings), _read_keys(settings, source)
        if required and not keys:
            why = (
                "auth.required is true"
                if settings.auth.required is True
                else f"auth.required is auto and host {settings.host} is not loopback"
            )
            raise SettingsError(
                f"{source}: auth: {why}, but no API key is configured: put keys in auth.keys_file "
                f"or the environment variable auth.keys_env ({settings.auth.keys_env}), or serve on "
                "127.0.0.1"
            )
        if settings.auth.required is False and not is_loopback(settings.host):
            log.warning(
                "!!! auth.required is false and host %s is not loopback: the API (and every session in it) "
                "is open to anyone who can reach this port !!!",
                settings.host,
            )
        return cls(required, tuple(dict.fromkeys(k.encode("ascii") for k in keys)))

    def allows(self, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> bool:
        """True when the request may go on: auth is off, a probe, or a configured key was sent."""
        if not self.required or (method, path) in OPEN:
            return True
        sent = []
        for name, value in headers:
            name = name.lower()
            if name == b"x-api-key":
                sent.append(value.strip())
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                sent.append(value[7:].strip())
        ok = False
        for candidate in sent:
            for key in self.keys:  # every key, every time: the time taken says nothing about which matched
                ok |= hmac.compare_digest(candidate, key)
        return ok
