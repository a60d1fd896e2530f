"""The paper's claims on the embedded world (shipped tiny CLIP, shapes target domain).

Protocol: the paper's federation (20 clients, participation 0.4 with all clients in round 0,
IF = 100, Dirichlet 1.0, one local epoch, batch 32), text-anchored head, ``lr = 0.01``
(``momentum 0.9``, ``wd 5e-4``), ``personal_lr = 0.01``, ``personal_alpha = 0.9``, only
``CLAIM_ROUNDS`` rounds so each claim runs in well under a minute. Numbers are the mean of the
last 10 rounds (``summary["last10"]``), seed 1. Runs are cached per module, so a method used by
several claims is trained once.

Margins come from measured runs over seeds 1, 2, 3 (30 rounds, last round; embedded bank
``shapes-fedpurel-tiny-bf0c920ebd62771b``, weights sha256 8439983…) and are written next to each
assertion as ``measured: min over seeds``. The margin asserted is about half the smallest
measured gap, so seed noise does not flip it but a real regression does.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedpurel_lite.config import RunConfig
from fedpurel_lite.methods import FUSION_BASELINES

pytestmark = pytest.mark.usefixtures("core_one_thread")

CLAIM_ROUNDS = 30
TUNED = {"lr": 0.01, "personal_lr": 0.01, "seed": 1}
_CACHE: dict[str, dict] = {}


@pytest.fixture(scope="module")
def core_claim_world():
    """The embedded bank and its federation (skips when the shipped weights/bank are unavailable)."""
    from fedpurel_lite.data.backbone import BackboneUnavailableError
    from fedpurel_lite.data.partition import build_federation

    try:
        from fedpurel_lite.data.features import load_embedded_bank

        bank = load_embedded_bank(progress=False)
    except (BackboneUnavailableError, FileNotFoundError) as exc:  # pragma: no cover - environment dependent
        pytest.skip(f"embedded world unavailable: {exc}")
    config = RunConfig().with_overrides(dict(rounds=CLAIM_ROUNDS, **TUNED))
    fed = build_federation(np.asarray(bank.train_labels), np.asarray(bank.test_labels), bank.class_order, config)
    return bank, fed, config


def _summary(world, method: str) -> dict:
    from fedpurel_lite.engine.simulate import run

    if method not in _CACHE:
        bank, fed, config = world
        result = run(config.with_overrides({"method": method}), bank=bank, progress=False, federation=fed)
        _CACHE[method] = result.summary["last10"]
    return _CACHE[method]


def test_claim_i_fedavg_erodes_the_tail_and_lifts_the_head(core_claim_world):
    zs, fa = _summary(core_claim_world, "zero-shot")["gm"], _summary(core_claim_world, "fedavg")["gm"]
    # measured (ZS / FedAvg, seeds 1-3): tail 53.4 / 44.6, 46.1, 43.4; head 55.2 / 87.5, 87.3, 87.1
    assert fa["tail"] < zs["tail"] - 4.0
    assert fa["head"] > zs["head"] + 20.0


def test_claim_ii_purified_global_beats_zero_shot_and_fedavg_and_keeps_the_tail(core_claim_world):
    zs = _summary(core_claim_world, "zero-shot")["gm"]
    fa = _summary(core_claim_world, "fedavg")["gm"]
    fp = _summary(core_claim_world, "fedpurel-global")["gm"]
    # measured overall (seeds 1-3): ZS 54.6; FedAvg 66.5, 67.1, 66.2; FedPuReL-global 68.8, 69.0, 68.2
    # (gap to FedAvg 2.3, 1.9, 2.0)
    assert fp["accuracy"] > zs["accuracy"] + 8.0
    assert fp["accuracy"] > fa["accuracy"] + 1.0
    # measured tail: ZS 53.4; FedPuReL-global 51.6, 52.4, 49.3 (1.8, 1.0, 4.1 below); FedAvg 44.6, 46.1, 43.4
    assert fp["tail"] > zs["tail"] - 6.0
    assert fp["tail"] > fa["tail"] + 3.0


def test_claim_iii_residual_personalization_avoids_bias_transfer(core_claim_world):
    pm = _summary(core_claim_world, "fedpurel")["pm"]
    fedavg_on_splits = _summary(core_claim_world, "fedavg")["gm_clients"]
    baselines = {b: _summary(core_claim_world, b)["pm"] for b in FUSION_BASELINES}
    # measured PM mean (seeds 1-3): fedpurel 69.2, 69.9, 69.3; interp 69.1, 69.3, 68.7; folio 68.5,
    # 68.9, 68.1; fedrep 66.9, 67.4, 66.8; local-ft 66.9, 67.4, 66.7; FedAvg's global model on the same
    # splits 66.4, 67.0, 66.1. The margin over interp is small (0.1, 0.6, 0.6): asserted without slack.
    assert pm["accuracy"] > fedavg_on_splits["accuracy"] + 1.0
    for name, b in baselines.items():
        assert pm["accuracy"] > b["accuracy"], name
    # measured PM tail (seeds 1-3): fedpurel 55.5, 57.2, 53.2; interp 52.8, 54.5, 50.3; fedrep 52.7,
    # 53.7, 51.2; folio 49.6, 51.2, 47.4; local-ft 44.3, 47.8, 44.3 (smallest gap 2.0)
    for name, b in baselines.items():
        assert pm["tail"] > b["tail"] + 1.0, name


@pytest.mark.xfail(strict=True, reason="fedpurel-linear (the design's first choice: a zero-initialised linear "
                   "residual head, alpha 0.9) "
                   "collapses the personal tail on this world: PM 56.0, tail 14.4 vs interp 69.1 / 52.8 "
                   "(seed 1)")
def test_claim_iii_with_the_zero_init_residual_head(core_claim_world):
    pm = _summary(core_claim_world, "fedpurel-linear")["pm"]
    baselines = {b: _summary(core_claim_world, b)["pm"] for b in FUSION_BASELINES}
    assert all(pm["tail"] > b["tail"] for b in baselines.values())
