import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_collection_modifyitems(config, items):
    """`slow` tests (minutes of training, real backbones) are skipped in CI; `gpu` tests without CUDA."""
    skip_slow = pytest.mark.skip(reason="slow: skipped when CI=true (run locally: pytest -m slow)")
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "slow" in item.keywords and os.environ.get("CI") == "true":
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _isolated_mlflow_state():
    """Each test starts with MLflow's process-wide URIs unset: an in-process run points them (and
    MLFLOW_TRACKING_URI) at its own store, which would otherwise leak into later tests and subprocesses."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    try:
        import mlflow
        from mlflow.tracking import _tracking_service, _model_registry

        if mlflow.active_run() is not None:
            mlflow.end_run()
        _tracking_service.utils._tracking_uri = None
        _model_registry.utils._registry_uri = None
    except ImportError:
        pass
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def compose(tmp_path):
    """Compose a findial Hydra config in-process with overrides, writing under tmp_path."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from findial.cli import _setup

    _setup()

    def make(config_name: str, overrides: list[str]):
        with initialize_config_module("findial.configs", version_base="1.3"):
            return hydra_compose(config_name, overrides=[f"paths.home={tmp_path}", *overrides],
                                 return_hydra_config=False)

    return make
