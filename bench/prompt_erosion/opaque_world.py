"""The opaque-names world (``fedpurel_lite.worlds.opaque``) with a tiny CLIP pretrained on those names.

    python -m fedpurel_lite pretrain --names opaque --out /tmp/h8/fedpurel-tiny-opaque.safetensors   # the tower
    .venv/bin/python bench/prompt_erosion/opaque_world.py report              # world quality bars (+ builds the bank)
    .venv/bin/python bench/prompt_erosion/opaque_world.py zs SEED              # random-context CoOp (PromptFL's ZS)
    .venv/bin/python bench/prompt_erosion/opaque_world.py fl METHOD PEFT SEED [ROUNDS] [key=value ...]
    .venv/bin/python bench/prompt_erosion/opaque_world.py lever [shipped]     # lever.py's analysis, this/shipped tower
    .venv/bin/python bench/prompt_erosion/opaque_world.py claims [SEED]       # the head PEFT's claim runs

OPAQUE_WEIGHTS (env): the weights file (default /tmp/h8/fedpurel-tiny-opaque.safetensors);
OPAQUE_CACHE (env): the feature cache folder (default /tmp/h8/cache; never data/cache).
The world is the default shapes world (same images, stratified class order, shift 0.58) with one made-up
word per class. FL runs use configs/embedded.toml's protocol (20 clients, 40 % participation, IF 100,
Dirichlet 1.0) through ``simulate.run``; results are appended to results/opaque_*.jsonl.
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import fl, groups_of, log, per_class_zs_prompt  # noqa: E402

WEIGHTS = os.environ.get("OPAQUE_WEIGHTS", "/tmp/h8/fedpurel-tiny-opaque.safetensors")
CACHE = os.environ.get("OPAQUE_CACHE", "/tmp/h8/cache")


def load():
    """The opaque world's feature bank (cached under CACHE) and the opaque tower."""
    from fedpurel_lite.data.backbone import load_backbone
    from fedpurel_lite.data.features import FeatureBank
    from fedpurel_lite.worlds.opaque import load_opaque

    backbone = load_backbone("fedpurel-tiny", pretrained=WEIGHTS)
    bank = FeatureBank.load_or_build(backbone, load_opaque("target"), cache_dir=CACHE, progress=False)
    return bank, backbone


def cmd_report():
    from fedpurel_lite.cli.pretrain import report

    t0 = time.time()
    out = report(WEIGHTS, cache_dir=CACHE, names="opaque")
    out["seconds"] = round(time.time() - t0, 1)
    log("opaque_report", out)


def cmd_zs(seed):
    bank, backbone = load()
    out = {"seed": seed, **groups_of(bank, per_class_zs_prompt(bank, backbone, seed=seed))}
    log("opaque_zs", out)
    print(out, flush=True)


def cmd_fl(method, peft, seed, rounds=100, *extra):
    bank, backbone = load()
    over = {"method": method, "peft": peft, "seed": int(seed), "rounds": int(rounds), "workers": 2,
            **dict(a.split("=", 1) for a in extra)}
    fl(f"opaque|stratified|{method}|{peft}|s{seed}|r{rounds}", bank, backbone, record="opaque_fl",
       curve="opaque_curves", **over)


def cmd_lever(tower="opaque"):
    """lever.py's ANOVA split of the bias lever and the gains (context seeds 7 and 8).

    ``tower``: ``opaque`` (this world and tower) or ``shipped`` (the default world and the shipped tower).
    """
    import lever
    from common import load_default

    bank, backbone = load() if tower == "opaque" else load_default()[1:]
    for seed in (7, 8):
        out = lever.analyse(bank, backbone, seed=seed)
        log("opaque_lever", {"tower": tower, "ctx_seed": seed, **out})


def cmd_claims(seed=1):
    """The head PEFT's claim runs of ``tests/test_claims.py`` on this world: 30 rounds, lr and personal_lr 0.01.

    Logs GM, PM and the global model on the clients' splits (last 10 rounds, %) per method.
    """
    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.data.partition import build_federation
    from fedpurel_lite.engine.simulate import run

    bank, backbone = load()
    config = RunConfig().with_overrides({"rounds": 30, "lr": 0.01, "personal_lr": 0.01, "seed": int(seed),
                                         "workers": 1})
    fed = build_federation(np.asarray(bank.train_labels), np.asarray(bank.test_labels), bank.class_order, config)
    for method in ("zero-shot", "fedavg", "fedpurel-global", "fedpurel", "local-ft", "fedrep", "interp", "folio"):
        result = run(config.with_overrides({"method": method}), bank=bank, progress=False, federation=fed)
        last10 = result.summary["last10"]
        out = {"seed": int(seed), "method": method}
        for part in ("gm", "pm", "gm_clients"):
            if last10.get(part):
                out[part] = {k: round(float(v), 2) for k, v in last10[part].items()
                             if k in ("accuracy", "head", "medium", "tail") and v is not None}
        log("opaque_claims", out)
        print(out, flush=True)


def main(argv):
    torch.set_num_threads(1)
    np.seterr(all="ignore")
    cmd, args = argv[0], argv[1:]
    {"report": cmd_report, "zs": lambda s: cmd_zs(int(s)), "fl": cmd_fl, "lever": cmd_lever,
     "claims": cmd_claims}[cmd](*args)


if __name__ == "__main__":
    main(sys.argv[1:])
