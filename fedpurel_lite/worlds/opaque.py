"""The shapes world with opaque class names: one made-up word per class, the same images.

The shapes world names its classes compositionally ("red star"), and a small text tower trained on those
names reads them almost additively (a colour part plus a shape part). Real CLIP's class names are not like
that: to a pretrained text tower "apple" and "aquarium_fish" are unrelated tokens. This variant keeps every
image, label, template and class order of :func:`fedpurel_lite.worlds.shapes.load_shapes` and replaces the
class names by made-up words (:func:`opaque_names`) whose sub-word tokens (open_clip's ``SimpleTokenizer``)
are shared by no other class name and by no template, so no two classes share a piece of their name. The
colour and shape of every class stay available as metadata (:func:`class_attributes`) for plots.

A tiny CLIP pretrained on these names (``python -m fedpurel_lite pretrain --names opaque``) is the text tower
this world is meant for; with the shipped tower (trained on the compositional names) it is meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedpurel_lite.worlds import shapes
from fedpurel_lite.worlds.base import World, WorldInfo, fingerprint_of, knob, register_world

WORLD_NAME = "shapes-opaque"
#: seed of the shipped name list (the names are a pure function of it)
DEFAULT_NAMES_SEED = 0
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_MAX_DRAWS = 200_000


def _word(rng: np.random.Generator) -> str:
    syllables = int(rng.integers(2, 4))
    parts = []
    for _ in range(syllables):
        part = _CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))]
        if rng.random() < 0.3:
            part += _CONSONANTS[rng.integers(len(_CONSONANTS))]
        parts.append(part)
    return "".join(parts)


def opaque_names(seed: int = DEFAULT_NAMES_SEED, n: int = len(shapes.CLASS_NAMES)) -> list[str]:
    """``n`` made-up words whose sub-word tokens are pairwise disjoint and disjoint from the templates' tokens.

    Words of two or three consonant-vowel(-consonant) syllables are drawn from a seeded stream and kept
    greedily when they take at least two ``SimpleTokenizer`` tokens (a word that is one token is in the
    tokenizer's vocabulary, often a real word such as "bike") and none of their tokens is used by a word
    already kept, by a template of :data:`fedpurel_lite.worlds.shapes.TEMPLATES` or by a real class name of
    the shapes world.

    Parameters
    ----------
    seed : int
        Seed of the word stream; the same seed always gives the same list.
    n : int
        Number of names.

    Returns
    -------
    list of str
        The names, index = class id.

    Raises
    ------
    RuntimeError
        The stream did not yield ``n`` such words (cannot happen for ``n = 100``; a guard for larger ``n``).
    """
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    used: set[int] = set()
    for text in shapes.TEMPLATES + shapes.CLASS_NAMES:
        used.update(tok.encode(text.replace("{}", "")))
    rng = np.random.default_rng([int(seed), 0x0A9E])
    names: list[str] = []
    for _ in range(_MAX_DRAWS):
        word = _word(rng)
        ids = tok.encode(word)
        if len(ids) < 2 or word in names or len(set(ids)) != len(ids) or used.intersection(ids):
            continue
        names.append(word)
        used.update(ids)
        if len(names) == n:
            return names
    raise RuntimeError(f"only {len(names)} opaque names with disjoint tokens after {_MAX_DRAWS} draws")


def class_attributes() -> dict[str, list[str]]:
    """Colour and shape of every class id (metadata for plots; the opaque names do not carry them).

    Returns
    -------
    dict
        ``{"colour": [...], "shape": [...]}``, index = class id.
    """
    n_shapes = len(shapes.SHAPES)
    ids = range(len(shapes.CLASS_NAMES))
    return {"colour": [shapes.COLOURS[i // n_shapes] for i in ids], "shape": [shapes.SHAPES[i % n_shapes] for i in ids]}


def _params(shapes_params: dict[str, Any], names_seed: int) -> dict[str, Any]:
    return {**shapes_params, "names": "opaque", "names_seed": int(names_seed)}


def load_opaque(domain: str = "target", shift: float = shapes.DEFAULT_SHIFT, seed: int = 0,
                n_train: int = shapes.N_TRAIN_PER_CLASS, n_test: int = shapes.N_TEST_PER_CLASS,
                variant: str = shapes.DEFAULT_VARIANT, names_seed: int = DEFAULT_NAMES_SEED) -> World:
    """The shapes world (:func:`fedpurel_lite.worlds.shapes.load_shapes`, same arguments) with opaque names.

    Parameters
    ----------
    domain, shift, seed, n_train, n_test, variant
        As in :func:`fedpurel_lite.worlds.shapes.load_shapes`; the images, labels and class order are its.
    names_seed : int
        Seed of :func:`opaque_names`.

    Returns
    -------
    World
        Named ``"shapes-opaque"``; its fingerprint adds ``names_seed`` to the shapes world's parameters.
    """
    base = shapes.load_shapes(domain, shift=shift, seed=seed, n_train=n_train, n_test=n_test, variant=variant)
    params = _params(base.params, names_seed)
    return World(name=WORLD_NAME, class_names=opaque_names(names_seed), templates=list(base.templates),
                 train_images=base.train_images, train_labels=base.train_labels, test_images=base.test_images,
                 test_labels=base.test_labels, class_order=base.class_order, params=params,
                 coarse_labels=None if base.coarse_labels is None else base.coarse_labels.copy())


@dataclass(frozen=True)
class OpaqueConfig:
    """``[world.shapes-opaque]``: which made-up names the classes carry."""

    names_seed: int = knob(DEFAULT_NAMES_SEED, "seed of the made-up class names (opaque_names)", range="[0, 1000000]")


def describe_opaque(section: OpaqueConfig) -> WorldInfo:
    """Class count, pool sizes and class order (the default shapes world's), without rendering."""
    info = shapes.describe_shapes(shapes.ShapesConfig())
    return WorldInfo(WORLD_NAME, info.num_classes, info.train_counts_per_class, info.class_order)


def opaque_fingerprint(names_seed: int = DEFAULT_NAMES_SEED) -> str:
    """``World.fingerprint()`` of the federated target of :func:`load_opaque`, without rendering."""
    return fingerprint_of(WORLD_NAME, _params(shapes.shapes_params(), names_seed))


@register_world(WORLD_NAME, config=OpaqueConfig, describe=describe_opaque,
                coarse_labels=lambda section: shapes.COARSE_LABELS.copy(),
                fingerprint=lambda section: opaque_fingerprint(section.names_seed),
                description="the shapes world's images with one made-up word per class (for a tower pretrained "
                            "with pretrain --names opaque)")
def load_opaque_world(section: OpaqueConfig, **extra: Any) -> World:
    """The opaque-names world of a config section (``extra``: :func:`load_opaque`'s other arguments)."""
    return load_opaque(names_seed=section.names_seed, **extra)
