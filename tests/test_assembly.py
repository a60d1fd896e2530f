"""The assembly path: one function from config to the run's pieces, and rebuilding a finished run."""

import numpy as np

from fedpurel_lite.engine.assembly import personal_predictions, rebuild_global_model
from fedpurel_lite.engine.results import SUMMARY_COLUMNS, summary_table


def test_personal_predictions_match_the_simulator(core_one_thread):
    from conftest import core_make_bank
    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.data.partition import build_federation
    from fedpurel_lite.engine.simulate import run

    cfg = RunConfig().with_overrides(dict(num_clients=5, participation=0.4, rounds=3, imbalance_ratio=10,
                                          min_client_size=5, lr=0.2, personal_lr=0.5, batch_size=16, seed=3))
    core_bank = core_make_bank(noise=2.0, text_noise=2.0)  # hard enough that models disagree
    fed = build_federation(np.asarray(core_bank.train_labels), np.asarray(core_bank.test_labels),
                           core_bank.class_order, cfg)
    for method in ("fedpurel", "folio", "fedavg"):
        res = run(cfg.with_overrides({"method": method}), bank=core_bank, progress=False)
        preds = personal_predictions(res, core_bank)
        accs = [100 * np.mean(p == np.asarray(core_bank.test_labels)[t])
                for p, t in zip(preds, fed.client_test, strict=True)]
        np.testing.assert_allclose(accs, res.history[-1]["pm"]["per_client_accuracy"], atol=1e-9)
        gm_acc = res.history[-1]["gm"]["accuracy"]
        logits = rebuild_global_model(res, core_bank).predict_logits(core_bank.test_features)
        assert 30 < gm_acc < 95
        assert abs(100 * np.mean(logits.argmax(1).numpy() == core_bank.test_labels.numpy()) - gm_acc) < 1e-9
        if method != "fedavg":  # the personal models differ from the global one
            assert accs != res.history[-1]["gm_clients"]["per_client_accuracy"]


def test_summary_table_selects_and_rounds():
    import pandas as pd

    df = pd.DataFrame(
        {k: [1.234, 5.678] for k in SUMMARY_COLUMNS} | {"time_s": [1.0, 2.0]},
        index=pd.Index(["a", "b"], name="method"),
    )
    out = summary_table(df)
    assert list(out.columns) == list(SUMMARY_COLUMNS.values()) and "time_s" not in out
    assert out.loc["a", "GM all"] == 1.2 and out.loc["b", "PM tail"] == 5.7


def test_assemble_loads_the_backbone_only_when_the_peft_needs_it(core_bank, monkeypatch):
    import torch

    import fedpurel_lite.engine.assembly as assembly
    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.peft import PEFTS, TextAnchoredHead, register_peft

    loaded = []
    monkeypatch.setattr(assembly, "load_backbone_for", lambda cfg: loaded.append(cfg.world.backbone) or "towers")
    cfg = RunConfig().with_overrides({"num_clients": 5, "min_client_size": 5, "imbalance_ratio": 10})
    parts = assembly.assemble(cfg, bank=core_bank)
    assert loaded == [] and parts.backbone is None and parts.federation.num_clients == 5
    assert isinstance(parts.peft, TextAnchoredHead) and parts.device == torch.device("cpu")

    seen = {}

    @register_peft("needs-towers", needs_backbone=True)
    def build(bank, backbone, config):  # a new PEFT: one decorated builder, nothing else names it
        seen["backbone"] = backbone
        return TextAnchoredHead(torch.as_tensor(bank.text_features), bank.logit_scale)

    try:
        parts = assembly.assemble(cfg.with_overrides({"peft": "needs-towers"}), bank=core_bank)
        assert loaded == ["fedpurel-tiny"] and seen["backbone"] == "towers" and parts.backbone == "towers"
    finally:
        PEFTS._specs.pop("needs-towers")


def test_load_bank_encodes_on_the_configured_device(monkeypatch, tmp_path):
    import fedpurel_lite.data.features as features
    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.engine.assembly import load_bank

    calls = {}
    monkeypatch.setattr(features, "load_embedded_bank", lambda **kw: calls.update(kw) or "bank")
    assert load_bank(RunConfig().with_overrides({"device": "auto", "cache_dir": str(tmp_path)})) == "bank"
    assert calls["device"] in ("cpu", "cuda") and str(calls["cache_dir"]) == str(tmp_path)
