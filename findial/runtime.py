"""Process set-up every findial entry point needs (the CLI, federated apps, benchmarks, tests): the
``findial_data`` / ``findial_abspath`` config resolvers, masked logging, quiet model loading."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def data_path(rel: str) -> str:
    """A path inside the installed ``findial.data`` package (the bundled corpora, the spec)."""
    import findial.data

    return str(Path(findial.data.__file__).resolve().parent / rel)


def setup() -> None:
    from findial.data.pii import install_log_redaction

    if not OmegaConf.has_resolver("findial_data"):
        OmegaConf.register_new_resolver("findial_data", data_path)
        OmegaConf.register_new_resolver("findial_abspath", os.path.abspath)
    install_log_redaction()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars per model load
    try:  # keep the console to what a user needs: no per-tensor load reports or weight-loading bars
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
