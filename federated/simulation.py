"""Simulation on one machine: every branch a virtual SuperNode, ClientApps in Ray actors (Flower's runtime).

Ray is started for the run in a private temporary directory and shut down after it (Flower's Ray
backend calls ``ray.shutdown()``); the temporary directory is removed and the environment restored.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager

from omegaconf import DictConfig

from .client_app import make_client_app
from .config import plain
from .privacy import PrivacyPlan
from .rounds import FederationError
from .server_app import make_server_app

log = logging.getLogger(__name__)


@contextmanager
def _ray_scratch():
    """A short private Ray temp dir (Ray's socket paths must stay under ~100 characters) and env restore."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_DEDUP_LOGS")}
    tmp = tempfile.mkdtemp(prefix="fdray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        yield tmp
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


def simulate(cfg: DictConfig) -> dict:
    """Run the federation of ``cfg.branches`` for ``cfg.rounds`` rounds; returns the server's summary."""
    PrivacyPlan.for_federation(cfg)  # a refused privacy setting fails here, before Ray or any round
    import ray
    from flwr.simulation import run_simulation

    branches = list(cfg.branches)
    if len(set(branches)) != len(branches) or not branches:
        raise ValueError(f"branches={branches}: give each branch once")
    if int(cfg.sampling.min_available_clients) > len(branches):
        raise ValueError(
            f"sampling.min_available_clients={cfg.sampling.min_available_clients} > {len(branches)} branches"
        )
    if ray.is_initialized():
        raise FederationError("Ray is already running in this process; findial starts and stops its own")
    bound = plain(cfg)
    results: list[dict] = []
    with _ray_scratch() as tmp:
        init_args = {"_temp_dir": tmp, "log_to_driver": False, "include_dashboard": False}
        if cfg.simulation.get("ray_cpus"):
            init_args["num_cpus"] = int(cfg.simulation.ray_cpus)
        backend_config = {
            "client_resources": {
                "num_cpus": float(cfg.simulation.client_cpus),
                "num_gpus": float(cfg.simulation.client_gpus),
            },
            "init_args": init_args,
        }
        try:
            run_simulation(
                server_app=make_server_app(bound, results),
                client_app=make_client_app(bound),
                num_supernodes=len(branches),
                backend_name="ray",
                backend_config=backend_config,
            )
        finally:
            if ray.is_initialized():  # Flower's backend shuts Ray down; make sure even on an error
                ray.shutdown()
    if not results:
        raise FederationError("the federation did not finish (see the log above)")
    return results[0]
