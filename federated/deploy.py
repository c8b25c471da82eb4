"""Helpers for ``scripts/fed_deploy.sh`` (real SuperLink + SuperNode processes on loopback).

    python -m findial.federated.deploy app DIR [HYDRA_OVERRIDE ...]   the Flower App + its run config
    python -m findial.federated.deploy flwr-home DIR ADDRESS CA_CERT     the `flwr` CLI's SuperLink connection
    python -m findial.federated.deploy node-key PRIVATE PUBLIC           a P-384 key pair (OpenSSH format)
    python -m findial.federated.deploy free-port                         an unused loopback TCP port
    python -m findial.federated.deploy wait-port PORT SECONDS            until something listens on it
    python -m findial.federated.deploy result HOME SINCE                 summary of the federation run after SINCE

The Flower App is a folder with a ``pyproject.toml`` whose components are this package's
``server_app:app`` and ``client_app:app``; the run config carries the Hydra overrides: all of them under
``overrides`` (the ServerApp's), those a branch accepts also under ``branch-overrides`` (every ClientApp
composes ``configs/fed.yaml`` with those, its privacy settings and data coming from its own node config:
see ``config.py``).
"""

from __future__ import annotations

import json
import shlex
import socket
import sys
import time
from pathlib import Path

from findial.tracking import atomic_write_text

from .config import BRANCH_RUN_CONFIG_KEY, RUN_CONFIG_KEY, branch_refusal, normalize_overrides

APP_NAME = "findial-federated"
CONNECTION = "findial"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_app(target: str | Path, overrides: list[str]) -> Path:
    """The Flower App folder (pyproject.toml) and ``run_config.toml``: every override for the server, the
    ones a branch accepts (``config.branch_refusal``) also for the branches."""
    import flwr

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        target / "pyproject.toml",
        f"""\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "1.0.0"
description = "findial: LoRA adapters of the NLU models trained across branches"
license = "Apache-2.0"
dependencies = ["flwr=={flwr.__version__}"]

[tool.flwr.app]
publisher = "findial"

[tool.flwr.app.components]
serverapp = "findial.federated.server_app:app"
clientapp = "findial.federated.client_app:app"

[tool.flwr.app.config]
{RUN_CONFIG_KEY} = ""
{BRANCH_RUN_CONFIG_KEY} = ""
""",
    )
    overrides = normalize_overrides(overrides)
    text = " ".join(shlex.quote(o) for o in overrides)
    branch = " ".join(shlex.quote(o) for o in overrides if branch_refusal(o) is None)
    atomic_write_text(
        target / "run_config.toml",
        f"{RUN_CONFIG_KEY} = {_toml_str(text)}\n{BRANCH_RUN_CONFIG_KEY} = {_toml_str(branch)}\n",
    )
    return target


def write_flwr_home(home: str | Path, address: str, ca_cert: str | Path) -> Path:
    """``$FLWR_HOME/config.toml`` with one SuperLink connection, TLS verified against ``ca_cert``."""
    home = Path(home)
    return atomic_write_text(
        home / "config.toml",
        f"""\
[superlink]
default = "{CONNECTION}"

[superlink.{CONNECTION}]
address = {_toml_str(address)}
root-certificates = {_toml_str(str(Path(ca_cert).resolve()))}
""",
    )


def write_node_key(private: str | Path, public: str | Path) -> None:
    """An ECDSA P-384 key pair: the SuperNode signs with the private key, the SuperLink knows the public one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    Path(private).write_bytes(pem)
    Path(private).chmod(0o600)
    Path(public).write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.5)
    return False


def result(home: str | Path, since: float) -> dict:
    """The newest ``federation.json`` written under ``home`` after ``since`` (epoch seconds)."""
    found = [p for p in Path(home).glob("federated/*/federation.json") if p.stat().st_mtime >= since]
    if not found:
        raise FileNotFoundError(f"no federation.json under {home}/federated written by this run")
    return json.loads(max(found, key=lambda p: p.stat().st_mtime).read_text(encoding="utf-8"))


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "app":
        print(write_app(args[0], args[1:]))
    elif cmd == "flwr-home":
        print(write_flwr_home(args[0], args[1], args[2]))
    elif cmd == "node-key":
        write_node_key(args[0], args[1])
    elif cmd == "free-port":
        print(free_port())
    elif cmd == "wait-port":
        return 0 if wait_port(int(args[0]), float(args[1])) else 1
    elif cmd == "result":
        from .command import render

        print(render(result(args[0], float(args[1]))))
    else:
        print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
