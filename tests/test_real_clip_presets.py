"""The paper's and the official code's CIFAR-100-LT presets run end to end; their model is CLIP ViT-B/16.

Two checks per preset:

* ``test_preset_names_the_clip_vit_b16_architecture`` -- config only, no weights, no forward: the
  preset's model name is, in open_clip's registry, a ViT-B/16 at 224 px with QuickGELU (the
  architecture of the paper's OpenAI CLIP), and its weights tag is one open_clip knows for that
  name, trained with the same activation.
* ``test_preset_runs_one_round_end_to_end`` -- the preset file itself goes through ``run`` (config
  loading and checks, preflight, the world read through torchvision, feature and token caches, the
  preset's PEFT, method, federation, projection and personalization, one round of stage 1 and
  stage 2, the result folder). Only the FLOPs are cut: for this test the preset's model name builds
  a narrow, 2-layer CLIP of the same family (patch 16, 224 px, QuickGELU, the 77-token
  tokenizer), randomly initialised; the data is a generated CIFAR-100-shaped set (1 training and 1
  test image per class, python-version archive format) and the federation is shrunk (4 clients) to
  fit it. Every other setting of the run is the preset's (asserted).
"""

import copy
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from fedpurel_lite.__main__ import main
from fedpurel_lite.config import RunConfig
from fedpurel_lite.engine.results import RunResult
from fedpurel_lite.worlds.cifar import CIFAR100_COARSE

PRESETS = ["paper_cifar100_lt", "reference_cifar100_lt"]
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
#: Cuts that keep the architecture family (patch size, image size, activation, tokenizer, vocabulary).
NARROW = {"embed_dim": 32, "vision_cfg": {"layers": 2, "width": 64, "head_width": 32},
          "text_cfg": {"layers": 2, "width": 64, "heads": 2}}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_names_the_clip_vit_b16_architecture(preset):
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    from fedpurel_lite.data.backbone import check_backbone

    world = RunConfig.load(CONFIGS / f"{preset}.toml").world
    check_backbone(world.backbone, "random")  # a name open_clip builds (weights not needed)
    cfg = open_clip.get_model_config(world.backbone)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    assert (vision["image_size"], vision["patch_size"], vision["width"], vision["layers"]) == (224, 16, 768, 12)
    assert (text["context_length"], text["width"], text["heads"], text["layers"]) == (77, 512, 8, 12)
    assert cfg["embed_dim"] == 512 and cfg.get("quick_gelu") is True
    tag = get_pretrained_cfg(world.backbone, world.pretrained)
    assert world.pretrained == "openai" and tag, "the paper's weights: OpenAI CLIP"
    assert tag.get("quick_gelu") is True  # the tag's activation matches the model name's


@pytest.fixture(scope="module")
def tiny_cifar100(tmp_path_factory):
    """A ``cifar-100-python`` folder with random 32x32 images (torchvision's MD5 check does not apply)."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 1), ("test", 1)):
        fine = np.repeat(np.arange(100), per_class)
        data = rng.integers(0, 256, (len(fine), 3 * 32 * 32), dtype=np.uint8)
        with open(folder / split, "wb") as fh:
            pickle.dump({"data": data, "fine_labels": fine.tolist(), "coarse_labels": CIFAR100_COARSE[fine].tolist()},
                        fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"thing_{i}" for i in range(100)],
                     "coarse_label_names": [f"group_{i}" for i in range(20)]}, fh)
    return root


def narrow_model(name: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Make ``name`` build a narrow CLIP of its own family in open_clip's registry (undone after the test)."""
    import open_clip.factory

    from fedpurel_lite.data.backbone import register_embedded_config

    register_embedded_config()  # its one-time rescan of the registry happens now, not during the run
    cfg = open_clip.get_model_config(name)
    for key, value in NARROW.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name, copy.deepcopy(cfg))
    return cfg


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_one_round_end_to_end(preset, tiny_cifar100, tmp_path, monkeypatch, capsys):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    path = CONFIGS / f"{preset}.toml"
    overrides = [f"world.cifar100.root={tiny_cifar100}", "world.pretrained=random", "world.device=cpu",
                 f"world.cache_dir={tmp_path / 'cache'}", "federation.rounds=1", "federation.num_clients=4"]
    expected = RunConfig.load(path).with_overrides(overrides).to_dict()
    narrow = narrow_model(expected["world"]["backbone"], monkeypatch)
    out = tmp_path / "run"
    rc = main(["run", "--config", str(path), "--quiet", "--set", *overrides, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["config"] == expected  # every setting but the overrides is the preset's
    assert expected["world"]["backbone"] == "ViT-B-16-quickgelu" and expected["method"]["peft"] == "prompt"
    assert len(result["history"]) == 1
    gm = result["summary"]["last10"]["gm"]
    assert math.isfinite(float(gm["accuracy"])) and math.isfinite(float(gm["tail"]))
    assert gm["head"] is None  # no class has more than 100 training images here
    trained = {k: tuple(v.shape) for k, v in RunResult.load(out).final_state.items() if k.startswith("global/")}
    n_ctx = expected["peft"]["prompt"]["n_ctx"]
    assert trained == {"global/ctx": (n_ctx, narrow["text_cfg"]["width"])}  # the prompt learner
    manifests = [json.loads(m.read_text()) for m in (tmp_path / "cache").glob("*.json")]
    banks = [m for m in manifests if "train_features" in m.get("shapes", {})]
    assert manifests and all(m["inputs"]["model"] == "ViT-B-16-quickgelu" for m in manifests)
    assert len(banks) == 1 and banks[0]["shapes"]["train_features"] == [100, narrow["embed_dim"]]
    assert "224" in banks[0]["inputs"]["transform"]  # the backbone's own preprocessing, not the world's 32 px
