"""Worlds: the shapes world (determinism, sizes, class order, contact sheet), CIFAR errors, folder, registry."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from fedpurel_lite.worlds import World, load_world, shapes
from fedpurel_lite.worlds.cifar import load_cifar


def test_render_is_deterministic_and_seeded() -> None:
    labels = np.arange(100).repeat(3)
    a = shapes.render(labels, "target", 0.6, seed=0, stream=5)
    b = shapes.render(labels, "target", 0.6, seed=0, stream=5)
    c = shapes.render(labels, "target", 0.6, seed=1, stream=5)
    assert a.dtype == np.uint8 and a.shape == (300, 32, 32, 3)
    assert hashlib.sha256(a.tobytes()).digest() == hashlib.sha256(b.tobytes()).digest()
    assert (a != c).mean() > 0.5


def test_shift_moves_the_target_away_from_the_source() -> None:
    labels = np.arange(100).repeat(5)

    def stats(domain: str, shift: float) -> tuple[float, float]:
        img = shapes.render(labels, domain, shift, seed=0, stream=3).astype(float)
        return np.abs(np.diff(img, axis=2)).mean(), img.mean()  # texture energy, brightness

    src, t0, tdef, t1 = stats("source", 0.0), stats("target", 0.0), stats("target", 0.58), stats("target", 1.0)
    assert abs(src[1] - t0[1]) < 3  # shift 0 renders like the source (independent stream)
    assert src[0] < tdef[0] < t1[0] and t1[0] > 1.4 * src[0]  # textured backgrounds, noise, occluders
    assert src[1] < tdef[1] < t1[1]


def test_class_names_and_grouping() -> None:
    assert len(shapes.CLASS_NAMES) == 100 and len(set(shapes.CLASS_NAMES)) == 100
    assert shapes.CLASS_NAMES[0] == "red circle" and shapes.CLASS_NAMES[13] == "orange star"


def test_class_order_is_a_seeded_stratified_permutation() -> None:
    order = shapes.shapes_class_order(0)
    assert sorted(order.tolist()) == list(range(100))
    assert np.array_equal(order, shapes.shapes_class_order(0))
    assert not np.array_equal(order, shapes.shapes_class_order(1))
    assert not np.array_equal(order, np.arange(100))
    for b in range(10):  # every 10 consecutive ranks: each colour and each shape exactly once
        block = order[10 * b : 10 * b + 10]
        assert sorted((block // 10).tolist()) == list(range(10))
        assert sorted((block % 10).tolist()) == list(range(10))


def test_small_world_shape_and_fingerprint() -> None:
    w = shapes.load_shapes("target", shift=0.6, seed=0, n_train=4, n_test=2)
    assert isinstance(w, World)
    assert w.train_images.shape == (400, 32, 32, 3) and w.test_images.shape == (200, 32, 32, 3)
    assert np.bincount(w.train_labels).tolist() == [4] * 100
    assert w.train_labels.dtype == np.int64 and not w.train_images.flags.writeable
    assert w.fingerprint() == shapes.shapes_fingerprint("target", 0.6, 0, 4, 2)
    assert w.fingerprint() != shapes.shapes_fingerprint("target", 0.5, 0, 4, 2)
    assert all("{}" in t for t in w.templates)


def test_world_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="permutation"):
        World("x", ["a", "b"], ["a {}."], np.zeros((2, 1)), [0, 1], np.zeros((1, 1)), [0], [0, 0])
    with pytest.raises(ValueError, match="placeholder"):
        World("x", ["a", "b"], ["no slot"], np.zeros((2, 1)), [0, 1], np.zeros((1, 1)), [0], [1, 0])


def test_contact_sheet_is_byte_reproducible(tmp_path) -> None:
    a = shapes.plot_contact_sheet(str(tmp_path / "a.png"))
    b = shapes.plot_contact_sheet(str(tmp_path / "b.png"))
    data = open(a, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data == open(b, "rb").read()
    assert b"Software" not in data


def test_cifar_missing_files_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FEDPUREL_DOWNLOAD", raising=False)
    with pytest.raises(FileNotFoundError, match="cifar-100-python") as err:
        load_cifar("cifar100", root=tmp_path)
    assert str(tmp_path) in str(err.value) and "download=True" in str(err.value)
    monkeypatch.setenv("FEDPUREL_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere/cifar/cifar-10-batches-py"):
        load_world("cifar10")


def test_folder_world(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    split = {"train": [], "test": []}
    for cls, n in (("cat", 2), ("dog", 5), ("big_owl", 3)):
        (tmp_path / cls).mkdir()
        for i in range(n + 1):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
            split["train" if i < n else "test"].append(f"{cls}/{i}.png")
    (tmp_path / "split.json").write_text(json.dumps(split))
    w = load_world("folder", root=tmp_path)
    assert w.class_names == ["big owl", "cat", "dog"]
    assert np.bincount(w.train_labels).tolist() == [3, 2, 5]
    assert w.class_order.tolist() == [2, 0, 1]  # head -> tail by training count
    img, label = w.test_images[0]
    assert img.size == (8, 8) and label == 1  # "cat/2.png"
    fp = w.fingerprint()
    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(tmp_path / "cat" / "0.png")
    assert load_world("folder", root=tmp_path).fingerprint() != fp  # content changes the fingerprint


def test_registry_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="shapes"):
        load_world("imagenet")


def test_shape_grouped_variant_changes_drift_and_order_but_not_the_default() -> None:
    v = shapes.VARIANTS["shape-grouped"]
    default = shapes.load_shapes("target", shift=0.6, seed=0, n_train=2, n_test=1)
    grouped = shapes.load_shapes("target", shift=0.6, seed=0, n_train=2, n_test=1, variant="shape-grouped")
    # the default's fingerprint (every cache key built on it) names no variant
    assert "variant" not in shapes.shapes_params("target", 0.6, 0, 2, 1)
    assert default.fingerprint() == shapes.shapes_fingerprint("target", 0.6, 0, 2, 1)
    assert grouped.fingerprint() == shapes.shapes_fingerprint("target", 0.6, 0, 2, 1, "shape-grouped")
    assert grouped.fingerprint() != default.fingerprint()
    # head to tail: whole shapes, in the variant's ranking, every colour once per shape
    order = grouped.class_order
    assert sorted(order.tolist()) == list(range(100))
    for rank, shape in enumerate(v.shape_rank):
        block = order[10 * rank : 10 * rank + 10]
        assert (block % 10 == shape).all() and sorted((block // 10).tolist()) == list(range(10))
    # weaker colour drift: same geometry and backgrounds, object colours closer to the palette
    same = (default.train_images == grouped.train_images).all(axis=-1)
    assert 0.3 < same.mean() < 0.95
    assert shapes.render(np.arange(100), "target", 0.0, seed=0, stream=4, drift_per_shift=v.drift_per_shift).tobytes() \
        == shapes.render(np.arange(100), "target", 0.0, seed=0, stream=4).tobytes()  # no shift, no drift
    source = shapes.load_shapes("source", seed=0, n_train=1, n_test=1, variant="shape-grouped")
    assert source.fingerprint() == shapes.shapes_fingerprint("source", seed=0, n_train=1, n_test=1)
    with pytest.raises(ValueError, match="unknown shapes variant"):
        shapes.load_shapes("target", n_train=1, n_test=1, variant="nope")
    with pytest.raises(ValueError, match="permutation"):
        shapes.shape_grouped_order([0] * 10)


# ----------------------------------------------------------------------------- worlds as plugins
def test_every_world_registers_its_description_loader_and_section() -> None:
    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.config.registry import sections
    from fedpurel_lite.worlds import WORLD_PLUGINS, WORLDS, coarse_labels, describe, source

    assert {"shapes", "cifar10", "cifar100", "folder"} <= set(WORLDS) == set(WORLD_PLUGINS.names())
    assert set(sections("world")) <= set(WORLDS)
    cfg = RunConfig().with_overrides({"variant": "shape-grouped"})
    info = describe(cfg)
    fingerprint, load = source(cfg)
    assert fingerprint == shapes.shapes_fingerprint(variant="shape-grouped")  # known without rendering
    assert info.class_order.tolist() == shapes.shape_grouped_order(shapes.VARIANTS["shape-grouped"].shape_rank,
                                                                   0).tolist()
    assert coarse_labels(cfg, info.num_classes).tolist() == shapes.COARSE_LABELS.tolist()
    with pytest.raises(ValueError, match="world 'folder' has none"):
        coarse_labels(RunConfig().with_overrides({"world": "folder", "root": "/x"}))


def test_nothing_outside_a_world_module_names_it() -> None:
    """The package's world-generic code (the registry, the config, worlds/__init__) holds no world's name."""
    import re
    from pathlib import Path

    from fedpurel_lite.worlds import WORLDS

    root = Path(__file__).resolve().parents[1] / "fedpurel_lite"
    for path in (root / "worlds" / "__init__.py", root / "worlds" / "base.py", root / "config/registry.py",
                 root / "config/checks.py"):
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith(("#", "``")))
        code = re.sub(r'"""(.|\n)*?"""', "", code)  # docstrings may name examples
        for name in WORLDS:
            assert f'"{name}"' not in code and f"'{name}'" not in code, (path.name, name)
