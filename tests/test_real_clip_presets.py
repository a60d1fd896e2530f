"""The paper's and the official code's CIFAR-100-LT presets run end to end on a real-size CLIP.

A random-init ``ViT-B-16-quickgelu`` at 224 px (the presets' architecture, weights not needed) on a
generated CIFAR-100-shaped dataset (1 training and 1 test image per class, written in the
python-version archive format): the dataset is read through torchvision, features and the prompt
learner's text tower run on the configured device, one round of stage 1 and stage 2 is trained and
the result folder is complete. Only the federation is shrunk (4 clients) to fit the tiny data.
"""

import json
import math
import pickle

import numpy as np
import pytest

from fedpurel_lite.__main__ import main
from fedpurel_lite.worlds.cifar import CIFAR100_COARSE


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


@pytest.mark.parametrize("preset", ["paper_cifar100_lt", "reference_cifar100_lt"])
def test_preset_runs_one_round_on_a_random_vit_b16(preset, tiny_cifar100, tmp_path, monkeypatch, capsys):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    out = tmp_path / "run"
    rc = main(["run", "--config", f"configs/{preset}.toml", "--quiet", "--set", f"world.root={tiny_cifar100}",
               "world.pretrained=random", "world.device=cpu", f"world.cache_dir={tmp_path / 'cache'}",
               "federation.rounds=1", "federation.num_clients=4", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    config = result["config"]
    assert config["world"]["backbone"] == "ViT-B-16-quickgelu" and config["method"]["peft"] == "prompt"
    assert len(result["history"]) == 1
    gm = result["summary"]["last10"]["gm"]
    assert math.isfinite(float(gm["accuracy"])) and math.isfinite(float(gm["tail"]))
    assert gm["head"] is None  # no class has more than 100 training images here
    manifests = list((tmp_path / "cache").glob("*.json"))
    assert manifests and all("ViT-B-16-quickgelu" in m.name for m in manifests)
    assert "224" in manifests[0].read_text()  # the backbone's own preprocessing, not the tiny world's 32 px
