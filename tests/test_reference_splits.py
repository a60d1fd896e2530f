"""OLTR-style split lists (``relative/path label``) through the folder world, and the long-tail presets."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedpurel_lite.config import RunConfig
from fedpurel_lite.data.partition import build_federation
from fedpurel_lite.errors import ConfigError, IntegrityError, ResourceMissingError
from fedpurel_lite.worlds import describe_world, load_world
from fedpurel_lite.worlds.folder import oltr_test_file, write_oltr_list

REPO = Path(__file__).resolve().parents[1]
COUNTS = {"n01_cat": 25, "n02_dog": 20, "n03_owl": 3}  # head-ish, exactly 20, tail


@pytest.fixture
def oltr_root(tmp_path):
    """A small generated image tree with ``Toy_LT_train.txt`` / ``Toy_LT_test.txt`` (labels by folder order)."""
    lists = {"train": ([], []), "test": ([], [])}
    for label, (folder, n) in enumerate(COUNTS.items()):
        for split, count in (("train", n), ("test", 2)):
            d = tmp_path / split / folder
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (label * 80, i, 0)).save(d / f"{i}.png")
                lists[split][0].append(f"{split}/{folder}/{i}.png")
                lists[split][1].append(label)
    for split, (entries, labels) in lists.items():
        write_oltr_list(tmp_path / f"Toy_LT_{split}.txt", entries, labels)
    return tmp_path


def test_load_and_describe_an_oltr_world(oltr_root):
    world = load_world("folder", root=oltr_root, split_file="Toy_LT_train.txt")
    assert world.class_names == ["n01 cat", "n02 dog", "n03 owl"]
    assert np.array_equal(np.bincount(world.train_labels), list(COUNTS.values()))
    assert len(world.test_labels) == 6 and world.class_order.tolist() == [0, 1, 2]
    img, label = world.train_images[0]
    assert img.size == (8, 8) and label == 0
    info = describe_world("folder", str(oltr_root), "Toy_LT_train.txt")
    assert info.num_classes == 3 and info.train_counts_per_class.tolist() == list(COUNTS.values())


def test_class_names_file_by_folder_or_label(oltr_root):
    (oltr_root / "names.txt").write_text("n01_cat tabby cat\n1 dog\nn03_owl barn owl\n")
    world = load_world("folder", root=oltr_root, split_file="Toy_LT_train.txt", class_names_file="names.txt")
    assert world.class_names == ["tabby cat", "dog", "barn owl"]


@pytest.mark.parametrize("convention, groups", [("reference", [1, 2, 2]), ("oltr", [1, 1, 2])])
def test_given_profile_keeps_the_list_and_groups_follow_the_convention(oltr_root, convention, groups):
    world = load_world("folder", root=oltr_root, split_file="Toy_LT_train.txt")
    cfg = RunConfig().with_overrides({"longtail.profile": "given", "group_convention": convention,
                                      "num_clients": 2, "min_client_size": 1})
    fed = build_federation(world.train_labels, world.test_labels, world.class_order, cfg)
    assert len(fed.train_idx) == sum(COUNTS.values()) and fed.groups.tolist() == groups  # 20 = tail <=> reference


def test_malformed_line_names_file_and_line(oltr_root):
    path = oltr_root / "Toy_LT_train.txt"
    path.write_text(path.read_text() + "\ntrain/n01_cat/0.png\n")
    with pytest.raises(IntegrityError, match=r"Toy_LT_train\.txt, line 50: 'train/n01_cat/0\.png'"):
        describe_world("folder", str(oltr_root), "Toy_LT_train.txt")


@pytest.mark.parametrize("entry, error, pattern", [
    ("../outside.png 0", IntegrityError, "not a relative path inside"),
    ("/etc/passwd 0", IntegrityError, "not a relative path inside"),
    ("train/n01_cat/missing.png 0", ResourceMissingError, "1 of the 3 images listed in split file .*Toy_LT_test"),
])
def test_unsafe_or_missing_entries(oltr_root, entry, error, pattern):
    path = oltr_root / "Toy_LT_test.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:2] + [entry]) + "\n")
    with pytest.raises(error, match=pattern):
        load_world("folder", root=oltr_root, split_file="Toy_LT_train.txt")


def test_symlink_out_of_the_root_is_refused(oltr_root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "x.png"
    Image.new("RGB", (8, 8)).save(outside)
    (oltr_root / "train" / "n01_cat" / "link.png").symlink_to(outside)
    (oltr_root / "Toy_LT_train.txt").write_text("train/n01_cat/link.png 0\n")
    with pytest.raises(IntegrityError, match="symbolic link"):
        describe_world("folder", str(oltr_root), "Toy_LT_train.txt")


def test_test_list_name_and_missing_lists(oltr_root):
    assert oltr_test_file("ImageNet_LT_train.txt") == "ImageNet_LT_test.txt"
    assert oltr_test_file("iNaturalist18_train.txt", "iNaturalist18_val.txt") == "iNaturalist18_val.txt"
    with pytest.raises(ConfigError, match="world.folder.test_split_file"):
        oltr_test_file("lt_list.txt")
    (oltr_root / "Toy_LT_test.txt").unlink()
    with pytest.raises(ResourceMissingError, match="Toy_LT_test.txt not found"):
        describe_world("folder", str(oltr_root), "Toy_LT_train.txt")


@pytest.mark.parametrize("preset, names", [("imagenet_lt.toml", "ImageNet_LT_train.txt"),
                                           ("places_lt.toml", "Places_LT_test.txt")])
def test_presets_stop_at_once_naming_images_and_split_files(preset, names, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedpurel_lite", "run", "--config", str(REPO / "configs" / preset),
                           "--out", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "images" in lines[0] and names in lines[0]


def test_reference_preset_loads_with_every_official_choice():
    cfg = RunConfig.load(REPO / "configs" / "reference_cifar100_lt.toml")
    assert cfg.differences(RunConfig.load(REPO / "configs" / "paper_cifar100_lt.toml")) == [
        "world.templates", "federation.partition", "stage1.optimizer_scope", "stage1.drop_last",
        "purification.projection", "purification.bisection_iters", "purification.kl_log",
        "personalization.personal_alpha", "run.workers"]
