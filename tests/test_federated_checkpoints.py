"""Per-round federation checkpoints (federated/checkpoints.py): written atomically, read back to the same state
(global arrays, FedAdam moments, round reports, privacy composition), located from a federation's directory,
and refused when the resumed federation's settings differ. The resume through Flower: tests/test_federated_simulation.py."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from omegaconf import OmegaConf

from findial.federated import checkpoints
from findial.federated.privacy import GaussianAccountant, GaussianPrivacyEvent
from findial.federated.rounds import FederationError, RoundReport


class Moments:
    """Holds FedOpt's state attributes as flwr's FedAdam does (``m_t``, ``v_t``), wrapped like a DP wrapper."""

    def __init__(self):
        self.m_t, self.v_t = None, None


class Wrapper:
    def __init__(self, strategy):
        self.strategy = strategy


def cfg(**changes):
    base = {
        "branches": ["a", "b"],
        "model": {"name": "tiny"},
        "tasks": {"intent": {"name": "intent"}},
        "aggregation": {"name": "fedadam", "eta": 0.01},
        "privacy": {"mode": "central", "noise_multiplier": 1.0},
        "sampling": {"min_train_clients": 2},
        "local_epochs": 1,
        "seed": 13,
    }
    return OmegaConf.create({**base, **changes})


def test_save_and_load_round_trip_the_whole_state(tmp_path):
    arrays = ArrayRecord({"intent/lora_A": Array(np.arange(6, dtype=np.float32).reshape(2, 3))})
    inner = Moments()
    inner.m_t = {"intent/lora_A": np.full((2, 3), 0.5, np.float32)}
    inner.v_t = {"intent/lora_A": np.full((2, 3), 0.25, np.float32)}
    accountant = GaussianAccountant(1e-5)
    accountant.compose(GaussianPrivacyEvent(noise_multiplier=0.5, sample_size=2, population_size=2))
    reports = [RoundReport(1, seconds=1.5, participants=["a", "b"], applied=True, epsilon=accountant.get_epsilon())]
    settings = checkpoints.settings_of(cfg())
    root = tmp_path / "fed" / "checkpoints"
    where = checkpoints.save(root, 1, arrays, reports, accountant, Wrapper(inner), settings, "run-1")
    assert where == root / "round-001" and (root / "latest").read_text().strip() == "round-001"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary directory left

    for path in (where, root, tmp_path / "fed"):  # the round, the checkpoints folder, the federation's folder
        assert checkpoints.locate(path) == where
    ckpt = checkpoints.load(tmp_path / "fed")
    assert ckpt.round == 1 and ckpt.reports == reports and ckpt.mlflow_run_id == "run-1"
    np.testing.assert_array_equal(ckpt.arrays["intent/lora_A"].numpy(), arrays["intent/lora_A"].numpy())
    checkpoints.check_compatible(ckpt, settings)

    fresh, restored = Moments(), GaussianAccountant(1e-5)
    checkpoints.restore_strategy(Wrapper(fresh), ckpt.strategy)
    checkpoints.restore_accountant(restored, ckpt.accountant)
    np.testing.assert_array_equal(fresh.m_t["intent/lora_A"], inner.m_t["intent/lora_A"])
    np.testing.assert_array_equal(fresh.v_t["intent/lora_A"], inner.v_t["intent/lora_A"])
    assert restored.get_epsilon() == accountant.get_epsilon() and restored.noise_multipliers == [0.5]


def test_other_settings_and_mismatched_state_are_refused(tmp_path):
    arrays = ArrayRecord({"intent/w": Array(np.zeros(2, np.float32))})
    settings = checkpoints.settings_of(cfg())
    inner = Moments()
    inner.m_t, inner.v_t = {"intent/w": np.ones(2, np.float32)}, {"intent/w": np.ones(2, np.float32)}
    checkpoints.save(tmp_path, 2, arrays, [], GaussianAccountant(1e-5), inner, settings, None)
    ckpt = checkpoints.load(tmp_path)
    changed = checkpoints.settings_of(cfg(aggregation={"name": "fedavg"}, branches=["a", "c"]))
    with pytest.raises(FederationError, match="other settings for aggregation, branches"):
        checkpoints.check_compatible(ckpt, changed)
    with pytest.raises(FederationError, match="aggregator state .* no use for"):
        checkpoints.restore_strategy(object(), ckpt.strategy)  # FedAvg has no moments to take them
    with pytest.raises(FederationError, match="privacy accounting does not match"):
        checkpoints.restore_accountant(None, ckpt.accountant)
    with pytest.raises(FederationError, match="no federation checkpoint there"):
        checkpoints.locate(tmp_path / "nothing")
