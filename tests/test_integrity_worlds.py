"""Folder-world split files checked (JSON, types, paths inside the root, images present), and the
cheap pre-flight :func:`describe_world`."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from fedpurel_lite.errors import ConfigError, IntegrityError, ResourceMissingError
from fedpurel_lite.worlds import WORLDS, WorldInfo, describe_world, load_world
from fedpurel_lite.worlds.folder import load_folder

COUNTS = (("cat", 2), ("dog", 5), ("big_owl", 3))  # class -> training images (+1 test image each)


@pytest.fixture
def image_tree(tmp_path):
    """``tmp_path/data`` with one folder per class, PNG images and a valid ``split.json``."""
    from PIL import Image

    root, rng = tmp_path / "data", np.random.default_rng(0)
    split = {"train": [], "test": []}
    for cls, n in COUNTS:
        (root / cls).mkdir(parents=True)
        for i in range(n + 1):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
            split["train" if i < n else "test"].append(f"{cls}/{i}.png")
    (root / "split.json").write_text(json.dumps(split))
    return root, split


def _write_split(root, split) -> None:
    (root / "split.json").write_text(json.dumps(split))


def test_malformed_json_names_the_file_line_and_column(image_tree) -> None:
    root, _ = image_tree
    (root / "split.json").write_text('{\n "train": [\n  "cat/0.png"\n  "cat/1.png"\n ],\n "test": []\n}')
    with pytest.raises(IntegrityError, match=r"split\.json: not readable JSON: Expecting ',' delimiter at line 4, "
                                             r"column 3") as err:
        load_world("folder", root=root)
    assert str(root / "split.json") in str(err.value)
    (root / "split.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(IntegrityError, match="UTF-8"):
        load_folder(root)


@pytest.mark.parametrize(("content", "match"), [
    ([], "needs the keys 'train' and 'test'"),
    ({"train": []}, r"needs the keys 'train' and 'test' \(got \['train'\]\)"),
    ({"train": "cat/0.png", "test": []}, "'train' must be a list"),
    ({"train": ["cat/0.png", 3], "test": []}, r"train\[1\] is 3 \(int\)"),
    ({"train": ["cat/0.png"], "test": [["cat/2.png"]]}, r"test\[0\]"),
])
def test_split_entries_must_be_lists_of_strings(image_tree, content, match: str) -> None:
    root, _ = image_tree
    _write_split(root, content)
    with pytest.raises(IntegrityError, match=match):
        load_folder(root)
    with pytest.raises(IntegrityError, match=match):
        describe_world("folder", root=str(root))


def test_paths_outside_the_root_are_refused(image_tree, tmp_path) -> None:
    root, split = image_tree
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes((root / "cat" / "0.png").read_bytes())
    bad_entries = [str(outside / "secret.png"), "../outside/secret.png", "cat/../../outside/secret.png", "0.png", ""]
    (root / "cat" / "link.png").symlink_to(outside / "secret.png")
    (root / "evil").symlink_to(outside, target_is_directory=True)
    for entry in [*bad_entries, "cat/link.png", "evil/secret.png"]:
        _write_split(root, {"train": [*split["train"], entry], "test": split["test"]})
        with pytest.raises(IntegrityError) as err:
            load_folder(root)
        assert repr(entry) in str(err.value) and "split.json" in str(err.value)
        with pytest.raises(IntegrityError):
            describe_world("folder", root=str(root))


def test_symlink_escaping_a_train_folder_is_refused(tmp_path) -> None:
    root = tmp_path / "data"
    for s in ("train", "test"):
        (root / s / "cat").mkdir(parents=True)
        (root / s / "cat" / "0.png").write_bytes(b"")
    (tmp_path / "secret.png").write_bytes(b"")
    (root / "train" / "cat" / "1.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(IntegrityError, match=r"'cat/1\.png' leads outside"):
        describe_world("folder", root=str(root))


def test_missing_images_are_counted_and_named(image_tree) -> None:
    root, split = image_tree
    ghosts = [f"dog/ghost{i}.png" for i in range(5)]
    _write_split(root, {"train": split["train"] + ghosts, "test": split["test"]})
    for call in (lambda: load_folder(root), lambda: describe_world("folder", root=str(root))):
        with pytest.raises(ResourceMissingError, match=r"5 of the 15 images listed in split file") as err:
            call()
        msg = str(err.value)
        assert all(repr(g) in msg for g in ghosts[:3]) and "ghost3" not in msg
        assert isinstance(err.value, FileNotFoundError)


def test_missing_root_split_and_folders(tmp_path) -> None:
    with pytest.raises(ResourceMissingError, match="does not exist") as err:
        load_world("folder", root=tmp_path / "nowhere")
    assert isinstance(err.value, FileNotFoundError) and str(tmp_path / "nowhere") in str(err.value)
    with pytest.raises(ResourceMissingError, match="no split file"):
        load_folder(tmp_path)
    with pytest.raises(ResourceMissingError, match="other.json does not exist"):
        load_folder(tmp_path, split_file="other.json")
    with pytest.raises(ConfigError, match="needs root="):
        describe_world("folder")
    with pytest.raises(ConfigError, match="needs root="):
        load_folder("")


def test_describe_folder_matches_the_loaded_world_without_reading_images(image_tree, monkeypatch) -> None:
    root, _ = image_tree
    world = load_world("folder", root=root)
    import PIL.Image

    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: pytest.fail("describe_world read an image"))
    info = describe_world("folder", root=str(root))
    assert info.name == "folder" and info.num_classes == world.num_classes == 3
    assert info.train_counts_per_class.tolist() == np.bincount(world.train_labels).tolist() == [3, 2, 5]
    # the train/ + test/ layout (no split file)
    (root / "split.json").unlink()
    for s in ("train", "test"):
        for cls in ("a", "b"):
            (root / s / cls).mkdir(parents=True)
    for name in ("a/0.png", "a/1.png", "b/0.png"):
        (root / "train" / name).write_bytes(b"")
    (root / "test" / "b" / "0.jpg").write_bytes(b"")
    info = describe_world("folder", root=str(root), split_file="")
    assert info.num_classes == 2 and info.train_counts_per_class.tolist() == [2, 1]


def test_describe_shapes_renders_nothing(monkeypatch) -> None:
    from fedpurel_lite.worlds import shapes

    monkeypatch.setattr(shapes, "render", lambda *a, **k: pytest.fail("describe_world rendered images"))
    info = describe_world("shapes")
    assert isinstance(info, WorldInfo) and info.num_classes == len(shapes.CLASS_NAMES) == 100
    assert info.train_counts_per_class.tolist() == [shapes.N_TRAIN_PER_CLASS] * 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_classes = 3
    with pytest.raises(ValueError, match="read-only"):
        info.train_counts_per_class[0] = 1


def test_describe_cifar_checks_the_files(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FEDPUREL_DOWNLOAD", raising=False)
    with pytest.raises(ResourceMissingError, match="cifar-100-python") as err:
        describe_world("cifar100", root=str(tmp_path))
    assert str(tmp_path) in str(err.value) and "download=True" in str(err.value)
    monkeypatch.setenv("FEDPUREL_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(ResourceMissingError, match="elsewhere/cifar/cifar-10-batches-py"):
        describe_world("cifar10")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]
    for name in names[:-1]:
        (folder / name).write_bytes(b"")
    with pytest.raises(ResourceMissingError, match="data_batch_5 in"):
        describe_world("cifar10", root=str(tmp_path))
    (folder / names[-1]).write_bytes(b"")
    info = describe_world("cifar10", root=str(tmp_path))
    assert info.num_classes == 10 and info.train_counts_per_class.tolist() == [5000] * 10
    (tmp_path / "cifar-100-python").mkdir()
    for name in ("meta", "train", "test"):
        (tmp_path / "cifar-100-python" / name).write_bytes(b"")
    info = describe_world("cifar100", root=str(tmp_path))
    assert info.num_classes == 100 and info.train_counts_per_class.sum() == 50_000
    monkeypatch.setenv("FEDPUREL_DOWNLOAD", "1")  # a download is allowed: the files may come later
    assert describe_world("cifar100", root=str(tmp_path / "empty")).num_classes == 100


def test_unknown_world_and_missing_cifar_are_user_errors(tmp_path, monkeypatch) -> None:
    for call in (lambda: describe_world("imagenet"), lambda: load_world("imagenet")):
        with pytest.raises(ConfigError) as err:
            call()
        assert "'imagenet'" in str(err.value) and all(w in str(err.value) for w in WORLDS)
    monkeypatch.delenv("FEDPUREL_DOWNLOAD", raising=False)
    with pytest.raises(ResourceMissingError, match="cifar-100-python"):
        load_world("cifar100", root=tmp_path)
    with pytest.raises(ConfigError, match="unknown CIFAR world"):
        from fedpurel_lite.worlds.cifar import load_cifar

        load_cifar("cifar1000", root=tmp_path)


def test_damaged_cifar_files_are_an_integrity_error(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FEDPUREL_DOWNLOAD", raising=False)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("meta", "train", "test"):
        (folder / name).write_bytes(os.urandom(64))
    with pytest.raises(IntegrityError, match="cifar-100-python are damaged"):
        load_world("cifar100", root=tmp_path)
