"""What every serving process does first (the uvicorn server and each Ray Serve replica), and how it
describes itself: shared by ``server.py`` and ``ray_backend.py`` so that neither imports the other."""

from __future__ import annotations

import os
import warnings

from findial import tracking
from findial.data.pii import install_log_redaction

from .auth import ApiKeys
from .settings import ServeSettings


def prepare(settings: ServeSettings) -> None:
    """Masked logging, the MLflow store, torch threads."""
    install_log_redaction()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars in the server log
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    if settings.tracking_uri:
        tracking.configure(settings.tracking_uri, settings.artifact_root or "mlartifacts")
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)


def describe_responder(settings: ServeSettings) -> str:
    return settings.responder.target or settings.responder.model_ref or "none"


def describe_auth(api_keys: ApiKeys) -> str:
    return f"API key required ({len(api_keys.keys)} configured)" if api_keys.required else "no API key required"
