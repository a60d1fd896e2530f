"""The opaque-names world: made-up class names with disjoint tokens, the shapes world's images, the pretrain option."""

from __future__ import annotations

import contextlib
import io

import numpy as np

from fedpurel_lite.worlds import opaque, shapes


def test_names_are_reproducible_distinct_and_share_no_token() -> None:
    from open_clip.tokenizer import SimpleTokenizer

    names = opaque.opaque_names()
    assert names == opaque.opaque_names(opaque.DEFAULT_NAMES_SEED)
    assert len(names) == len(shapes.CLASS_NAMES) == len(set(names))
    assert opaque.opaque_names(1) != names
    tok = SimpleTokenizer()
    reserved = {t for text in shapes.TEMPLATES + shapes.CLASS_NAMES for t in tok.encode(text.replace("{}", ""))}
    seen: set[int] = set()
    for name in names:
        ids = tok.encode(name)
        assert len(ids) >= 2, name  # not a word of the tokenizer's vocabulary
        assert not seen.intersection(ids) and not reserved.intersection(ids), name
        seen.update(ids)
        assert name.isalpha() and name not in shapes.COLOURS + shapes.SHAPES


def test_world_keeps_images_labels_order_and_attributes() -> None:
    base = shapes.load_shapes("target", n_train=2, n_test=1)
    world = opaque.load_opaque("target", n_train=2, n_test=1)
    assert world.class_names == opaque.opaque_names()
    np.testing.assert_array_equal(world.train_images, base.train_images)
    np.testing.assert_array_equal(world.test_labels, base.test_labels)
    np.testing.assert_array_equal(world.class_order, base.class_order)
    assert world.templates == base.templates
    assert world.fingerprint() != base.fingerprint()  # a feature cache never mixes the two worlds
    attrs = opaque.class_attributes()
    assert [f"{c} {s}" for c, s in zip(attrs["colour"], attrs["shape"], strict=True)] == shapes.CLASS_NAMES


def test_pretrain_names_option(tmp_path) -> None:
    from fedpurel_lite.cli import pretrain

    assert pretrain.class_names_for("shapes") == shapes.CLASS_NAMES
    assert pretrain.class_names_for("opaque") == opaque.opaque_names()
    err = io.StringIO()
    from fedpurel_lite.__main__ import main

    with contextlib.redirect_stderr(err):
        code = main(["pretrain", "--names", "nonsense", "--out", str(tmp_path / "w.safetensors")])
    assert code == 2 and err.getvalue().count("\n") == 1
    assert "--names 'nonsense'" in err.getvalue() and not any(tmp_path.iterdir())


def test_registered_world_matches_the_loader() -> None:
    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.worlds import describe_world, load_world
    from fedpurel_lite.worlds.base import fingerprint_of

    world = load_world("shapes-opaque", names_seed=3, n_train=2, n_test=1)
    assert world.name == "shapes-opaque" and world.class_names == opaque.opaque_names(3)
    assert world.fingerprint() == fingerprint_of("shapes-opaque", {**shapes.shapes_params(n_train=2, n_test=1),
                                                                   "names": "opaque", "names_seed": 3})
    assert opaque.opaque_fingerprint() == fingerprint_of("shapes-opaque", {**shapes.shapes_params(),
                                                                           "names": "opaque", "names_seed": 0})
    info = describe_world("shapes-opaque")
    np.testing.assert_array_equal(info.class_order, world.class_order)
    assert info.num_classes == 100 and (info.train_counts_per_class == shapes.N_TRAIN_PER_CLASS).all()
    config = RunConfig().with_overrides({"world.name": "shapes-opaque", "world.shapes-opaque.names_seed": 5})
    assert config.section(opaque.OpaqueConfig).names_seed == 5
