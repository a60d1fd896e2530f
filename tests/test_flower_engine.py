"""The Flower simulation engine (Ray) against the simulator, and client failures mid-run.

These start Flower's Simulation Runtime with 4 virtual SuperNodes (about a minute each on 2 cores).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr", reason="the Flower layer needs the 'flower' extra (pip install -e '.[flower]')")

from fedpurel_lite.config import RunConfig  # noqa: E402
from fedpurel_lite.engine.simulate import run  # noqa: E402
from fedpurel_lite.flower.run import run_flower  # noqa: E402
from fedpurel_lite.flower.strategy import FlowerRunError  # noqa: E402

CONFIG = RunConfig.load("configs/embedded.toml").with_overrides(
    {"num_clients": 4, "rounds": 3, "participation": 0.5, "method": "fedpurel", "seed": 7})


class FailOnce:
    """Client 1 raises in one of Flower's rounds (train; round 2 unless told); picklable, so Ray workers can run it."""

    def __init__(self, server_round: int = 2) -> None:
        self.server_round = server_round

    def __call__(self, partition: int, server_round: int, stage: str) -> None:
        if partition == 1 and server_round == self.server_round and stage == "train":
            raise RuntimeError("simulated crash of client 1")


@pytest.fixture(scope="module")
def simulated():
    return run(CONFIG, progress=False)


def test_flower_equals_the_simulator(simulated):
    out = run_flower(CONFIG)
    assert out.failures == []
    sim, fl = simulated.final_state, out.result.final_state
    assert set(fl) == {k for k in sim if k.startswith("global/")}
    for name, value in fl.items():
        assert torch.max(torch.abs(value - sim[name])).item() <= 1e-5
    for h_sim, h_fl in zip(simulated.history, out.result.history, strict=True):
        assert h_fl["clients"] == h_sim["clients"]
        for part in ("gm", "gm_clients", "pm"):
            for key in ("accuracy", "macro_f1", "head", "medium", "tail"):
                assert h_fl[part][key] == pytest.approx(h_sim[part][key], abs=1e-9), (h_sim["round"], part, key)


def test_a_failing_client_is_logged_and_the_round_goes_on():
    everyone = CONFIG.with_overrides({"participation": 1.0})
    out = run_flower(everyone, fault=FailOnce())
    assert [(f["round"], f["stage"], f["partition"]) for f in out.failures] == [(1, "train", 1)]
    assert "simulated crash of client 1" in out.failures[0]["reason"]
    history = out.result.history
    assert len(history) == 3
    assert [h["trained"] for h in history] == [[0, 1, 2, 3], [0, 2, 3], [0, 1, 2, 3]]  # round 2 aggregates 3
    assert history[1]["failures"] == out.failures
    # too few replies stop the run (the crash in the first round: the run ends there, no round is spent before it)
    with pytest.raises(FlowerRunError, match=r"round 0 train: only 3 of 4 clients replied successfully, fewer than "
                                             r"min_replies=4.*simulated crash of client 1"):
        run_flower(everyone, min_replies=4, fault=FailOnce(server_round=1))
