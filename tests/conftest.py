import os
import subprocess
import sys
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

    from findial.runtime import setup as _setup

    _setup()

    def make(config_name: str, overrides: list[str]):
        with initialize_config_module("findial.configs", version_base="1.3"):
            return hydra_compose(
                config_name, overrides=[f"paths.home={tmp_path}", *overrides], return_hydra_config=False
            )

    return make


@pytest.fixture(scope="session")
def response_model(tmp_path_factory):
    """`findial train task=response` on the tiny random causal LM, as a user runs it (seconds):
    (FINDIAL_HOME, the package directory, the command's stdout). The command registers the package
    as findial-response v1 in that home's MLflow store."""
    home = tmp_path_factory.mktemp("response-home")
    mini = FIXTURES / "mini.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "findial.cli",
            "train",
            "task=response",
            "model=tiny_lm",
            "data=custom",
            f"data.train_file={mini}",
            f"data.val_file={mini}",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            "task.log_samples=0",
            "task.generation.max_new_tokens=8",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "FINDIAL_HOME": str(home)},
        cwd=home,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home, next(home.glob("runs/*-response/response/package")), proc.stdout
