"""The embedded offline world: 100 procedurally rendered classes (10 colours x 10 shapes), 32x32 RGB.

Two domains share the classes:

- **source**: clean shapes on dark, nearly flat backgrounds; balanced; used (with captions from
  :data:`TEMPLATES`) to pretrain the tiny CLIP (:mod:`fedpurel_lite.cli.pretrain`).
- **target**: the federated task. One knob ``shift`` in ``[0, 1]`` moves it away from the source:
  each colour drifts towards the next colour of a fixed cycle (a systematic shift that the image
  features still separate but that disturbs the image-text alignment), objects get smaller,
  backgrounds get textured (stripes, checks, smooth noise), occluding bars and pixel noise appear.

Class ``k`` is colour ``k // 10`` and shape ``k % 10`` ("red star"), so ids are grouped by colour.
Two target variants (:data:`VARIANTS`) differ in the colour drift and in which classes are the head:

- ``stratified`` (the default): the long-tail assignment uses :func:`shapes_class_order`, a seeded
  order stratified by colour and shape (every block of 10 consecutive ranks holds each colour and
  each shape once), so no attribute marks a class as head or tail;
- ``shape-grouped``: a weaker colour drift and a class order grouped by shape
  (:func:`shape_grouped_order`): the head classes are whole shapes, an attribute a shared prompt
  context can reach; the shape ranking is the one whose zero-shot accuracy is flat across
  head/medium/tail.

Rendering is vectorised in numpy (signed-distance-like shape functions with a one-pixel soft edge)
and seeded per chunk, so the same arguments always give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from fedpurel_lite.worlds.base import World, WorldInfo, fingerprint_of, knob, register_world
from fedpurel_lite.worlds.shapes_geometry import bilinear_matrix, shape_distance

IMAGE_SIZE = 32
COLOURS: list[str] = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "brown"]
#: RGB in [0, 1]; the list order is also the drift cycle of the target shift (brown drifts to red).
PALETTE = np.array(
    [
        [0.90, 0.10, 0.10],
        [1.00, 0.55, 0.00],
        [0.95, 0.90, 0.10],
        [0.10, 0.75, 0.15],
        [0.10, 0.85, 0.90],
        [0.15, 0.30, 0.95],
        [0.55, 0.15, 0.85],
        [1.00, 0.45, 0.75],
        [0.95, 0.95, 0.95],
        [0.55, 0.30, 0.10],
    ],
    dtype=np.float32,
)
SHAPES: list[str] = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon", "crescent", "heart"]
CLASS_NAMES: list[str] = [f"{c} {s}" for c in COLOURS for s in SHAPES]
#: coarse label of every class id: its colour (``id = 10 * colour + shape``)
COARSE_LABELS = np.arange(len(CLASS_NAMES), dtype=np.int64) // len(SHAPES)
TEMPLATES: list[str] = [
    "a {}.",
    "a photo of a {}.",
    "a drawing of a {}.",
    "a picture of the {}.",
    "an image of a {}.",
    "a small {}.",
    "a {} on a background.",
]
N_TRAIN_PER_CLASS = 500
N_TEST_PER_CLASS = 100
DEFAULT_SHIFT = 0.58
#: how the one ``shift`` knob splits: colour drift towards the next colour, and clutter strength
DRIFT_PER_SHIFT = 0.75
CLUTTER_PER_SHIFT = 0.5


@dataclass(frozen=True)
class TargetVariant:
    """A variant of the target domain.

    Attributes
    ----------
    drift_per_shift : float
        Colour drift towards the next colour per unit of ``shift``.
    shape_rank : tuple of int or None
        ``None``: the stratified class order; else the shapes from head to tail
        (:func:`shape_grouped_order`).
    """

    drift_per_shift: float
    shape_rank: tuple[int, ...] | None = None


#: the target variants by name (``world.shapes.variant``)
VARIANTS: dict[str, TargetVariant] = {
    "stratified": TargetVariant(DRIFT_PER_SHIFT),
    "shape-grouped": TargetVariant(0.65, (3, 6, 8, 0, 1, 9, 5, 2, 4, 7)),
}
DEFAULT_VARIANT = "stratified"
_CHUNK = 2048
_DOMAINS = {"source": 0, "target": 1}
_SPLITS = {"train": 0, "test": 1, "stream": 2}


def _render_chunk(labels: np.ndarray, target: bool, shift: float, rng: np.random.Generator,
                  drift_per_shift: float = DRIFT_PER_SHIFT) -> np.ndarray:
    """Render one chunk of images for ``labels``; returns ``uint8 [N, 32, 32, 3]``."""
    n = len(labels)
    s = IMAGE_SIZE
    colour, shape = labels // 10, labels % 10
    yy, xx = np.meshgrid(np.arange(s, dtype=np.float32) + 0.5, np.arange(s, dtype=np.float32) + 0.5, indexing="ij")
    shift = float(shift) if target else 0.0
    drift_mean, clutter = drift_per_shift * shift, CLUTTER_PER_SHIFT * shift
    # object geometry: radius in pixels, centre, rotation (limited, so square and diamond differ)
    radius = rng.uniform(8.5, 13.0, n).astype(np.float32) * (1.0 - 0.3 * clutter)
    margin = radius * 0.75
    cx = rng.uniform(margin, s - margin).astype(np.float32)
    cy = rng.uniform(margin, s - margin).astype(np.float32)
    rot = rng.uniform(-0.45, 0.45, n).astype(np.float32)
    dx = (xx[None] - cx[:, None, None]) / radius[:, None, None]
    dy = (yy[None] - cy[:, None, None]) / radius[:, None, None]
    cos, sin = np.cos(rot)[:, None, None], np.sin(rot)[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    dist = np.empty((n, s, s), dtype=np.float32)
    for k in range(len(SHAPES)):
        idx = np.flatnonzero(shape == k)
        if len(idx):
            dist[idx] = shape_distance(k, u[idx], v[idx])
    alpha = np.clip(0.5 - dist * radius[:, None, None], 0.0, 1.0)
    # object colour: palette (drifting towards the next colour in the cycle under the shift) + jitter
    drift = (drift_mean + rng.normal(0.0, 0.04 * clutter + 1e-6, n)).astype(np.float32).clip(0.0, 0.9)
    base = PALETTE[colour] * (1 - drift[:, None]) + PALETTE[(colour + 1) % 10] * drift[:, None]
    base = base * rng.uniform(0.85, 1.08, (n, 1)).astype(np.float32)
    base = base + rng.normal(0.0, 0.03, (n, 3)).astype(np.float32)
    # background
    level = rng.uniform(0.0, 0.15, (n, 1, 1, 1)).astype(np.float32)
    bg = np.broadcast_to(level, (n, s, s, 3)).copy()
    if clutter > 0:
        kind = rng.integers(0, 3, n)
        phi = rng.uniform(0, np.pi, n).astype(np.float32)[:, None, None]
        freq = rng.uniform(0.08, 0.3, n).astype(np.float32)[:, None, None]
        ph = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
        tex = np.empty((n, s, s), dtype=np.float32)
        i0, i1, i2 = (np.flatnonzero(kind == k) for k in range(3))
        proj = xx * np.cos(phi[i0]) + yy * np.sin(phi[i0])
        tex[i0] = np.sin(2 * np.pi * freq[i0] * proj + ph[i0])
        tex[i1] = np.sign(np.sin(2 * np.pi * freq[i1] * xx + ph[i1]) * np.sin(2 * np.pi * freq[i1] * yy))
        m = bilinear_matrix(5, s)
        grid = rng.standard_normal((len(i2), 5, 5), dtype=np.float32)
        tex[i2] = np.einsum("hi,nij,wj->nhw", m, grid, m).clip(-1.5, 1.5)
        tint = 0.6 + 0.4 * rng.uniform(0.0, 1.0, (n, 1, 1, 3)).astype(np.float32)
        amp = (0.22 * clutter) * rng.uniform(0.5, 1.0, (n, 1, 1, 1)).astype(np.float32)
        bg = bg + 0.3 * clutter * rng.uniform(0.0, 1.0, (n, 1, 1, 1)).astype(np.float32)
        bg = (bg + amp * (tex[..., None] + 1.0)) * tint
    img = bg * (1 - alpha[..., None]) + base[:, None, None, :] * alpha[..., None]
    if clutter > 0:
        # occluding bar across the object
        occ = rng.uniform(0, 1, n) < 0.6 * clutter
        ang = rng.uniform(0, np.pi, n).astype(np.float32)[:, None, None]
        off = rng.uniform(-0.5, 0.5, n).astype(np.float32)[:, None, None]
        width = rng.uniform(0.12, 0.25, n).astype(np.float32)[:, None, None]
        across = np.abs(np.cos(ang) * dx + np.sin(ang) * dy - off) - width
        oalpha = np.clip(0.5 - across * radius[:, None, None], 0.0, 1.0) * occ[:, None, None]
        ocol = rng.uniform(0.0, 0.5, (n, 1, 1, 1)).astype(np.float32)
        img = img * (1 - oalpha[..., None]) + ocol * oalpha[..., None]
        img += rng.standard_normal((n, s, s, 1), dtype=np.float32) * np.float32(0.06 * clutter)
    else:
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.015)
    out: np.ndarray = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out


def render(labels: np.ndarray, domain: str = "target", shift: float = DEFAULT_SHIFT, seed: int = 0,
           stream: int = 0, drift_per_shift: float = DRIFT_PER_SHIFT) -> np.ndarray:
    """Render images for the given class labels.

    Parameters
    ----------
    labels : numpy.ndarray
        Class ids in ``0..99``.
    domain : {"source", "target"}
        ``"source"`` ignores ``shift``.
    shift : float
        Target shift strength in ``[0, 1]``.
    seed : int
        World seed.
    stream : int
        Independent random stream id (e.g. split or pretraining step); same arguments give the same bytes.
    drift_per_shift : float
        Colour drift towards the next colour per unit of ``shift`` (target domain).

    Returns
    -------
    numpy.ndarray
        ``uint8 [N, 32, 32, 3]``.
    """
    if domain not in _DOMAINS:
        raise ValueError(f"domain must be one of {sorted(_DOMAINS)}, got {domain!r}")
    if not 0.0 <= shift <= 1.0:
        raise ValueError(f"shift must lie in [0, 1], got {shift!r}")
    labels = np.asarray(labels, dtype=np.int64)
    out = np.empty((len(labels), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for c, start in enumerate(range(0, len(labels), _CHUNK)):
        rng = np.random.default_rng([seed, _DOMAINS[domain], stream, c])
        out[start : start + _CHUNK] = _render_chunk(labels[start : start + _CHUNK], domain == "target", shift, rng,
                                                    drift_per_shift)
    return out


def shapes_class_order(seed: int = 0) -> np.ndarray:
    """Seeded head-to-tail class order, stratified by colour and shape.

    Rank ``r`` in block ``b = r // 10`` takes colour ``cp[i]`` and shape ``sp[(i + b) % 10]`` for a slot
    ``i`` (a Latin square), then slots are shuffled within each block. Any 10 consecutive ranks
    hold every colour and every shape once, so head/medium/tail groups are balanced in both.

    Parameters
    ----------
    seed : int
        Permutation seed.

    Returns
    -------
    numpy.ndarray
        ``int64 [100]``, a permutation of the class ids.
    """
    rng = np.random.default_rng([seed, 7])
    cp, sp = rng.permutation(10), rng.permutation(10)
    order = []
    for b in range(10):
        block = [int(cp[i]) * 10 + int(sp[(i + b) % 10]) for i in range(10)]
        order.extend(rng.permutation(block).tolist())
    return np.asarray(order, dtype=np.int64)


def shape_grouped_order(shape_rank: tuple[int, ...] | list[int], seed: int = 0) -> np.ndarray:
    """Head-to-tail class order grouped by shape: the 10 classes of ``shape_rank[0]`` first, then ``shape_rank[1]``, ...

    Inside a shape the colours are in a seeded random order.

    Parameters
    ----------
    shape_rank : sequence of int
        A permutation of the 10 shape ids.
    seed : int
        Permutation seed of the colours.

    Returns
    -------
    numpy.ndarray
        ``int64 [100]``, a permutation of the class ids.
    """
    if sorted(shape_rank) != list(range(len(SHAPES))):
        raise ValueError(f"shape_rank must be a permutation of 0..{len(SHAPES) - 1}, got {list(shape_rank)}")
    rng = np.random.default_rng([seed, 5])
    order = [int(c) * 10 + int(s) for s in shape_rank for c in rng.permutation(len(COLOURS))]
    return np.asarray(order, dtype=np.int64)


def _variant(name: str) -> TargetVariant:
    if name not in VARIANTS:
        raise ValueError(f"unknown shapes variant {name!r}; choose from {', '.join(VARIANTS)}")
    return VARIANTS[name]


@lru_cache(maxsize=4)
def _pools(domain: str, shift: float, seed: int, n_train: int, n_test: int,
           drift_per_shift: float = DRIFT_PER_SHIFT) -> tuple[np.ndarray, ...]:
    train_labels = np.repeat(np.arange(100, dtype=np.int64), n_train)
    test_labels = np.repeat(np.arange(100, dtype=np.int64), n_test)
    train = render(train_labels, domain, shift, seed, _SPLITS["train"], drift_per_shift)
    test = render(test_labels, domain, shift, seed, _SPLITS["test"], drift_per_shift)
    for a in (train, test):  # shared between calls: images are read-only
        a.setflags(write=False)
    return train, train_labels, test, test_labels


def shapes_params(domain: str = "target", shift: float = DEFAULT_SHIFT, seed: int = 0,
                  n_train: int = N_TRAIN_PER_CLASS, n_test: int = N_TEST_PER_CLASS,
                  variant: str = DEFAULT_VARIANT) -> dict[str, Any]:
    """The parameters that determine the shapes world's content (what its fingerprint names).

    The default variant adds no key, so its fingerprint (and every cache built on it) stays as it was.
    """
    shift = 0.0 if domain == "source" else float(shift)
    params = {"version": 2, "domain": domain, "shift": shift, "seed": int(seed), "n_train": int(n_train),
              "n_test": int(n_test), "image_size": IMAGE_SIZE}
    if domain == "target" and variant != DEFAULT_VARIANT:
        v = _variant(variant)
        params.update(variant=variant, drift_per_shift=v.drift_per_shift, shape_rank=list(v.shape_rank or []))
    return params


def shapes_fingerprint(domain: str = "target", shift: float = DEFAULT_SHIFT, seed: int = 0,
                       n_train: int = N_TRAIN_PER_CLASS, n_test: int = N_TEST_PER_CLASS,
                       variant: str = DEFAULT_VARIANT) -> str:
    """``World.fingerprint()`` of :func:`load_shapes` with these arguments, without rendering."""
    return fingerprint_of("shapes", shapes_params(domain, shift, seed, n_train, n_test, variant))


def load_shapes(domain: str = "target", shift: float = DEFAULT_SHIFT, seed: int = 0,
                n_train: int = N_TRAIN_PER_CLASS, n_test: int = N_TEST_PER_CLASS,
                variant: str = DEFAULT_VARIANT) -> World:
    """Build the shapes world (rendered once per process and cached in memory, read-only arrays).

    Parameters
    ----------
    domain : {"target", "source"}
        ``"target"`` is the federated task; ``"source"`` the pretraining domain.
    shift : float
        Target shift strength in ``[0, 1]`` (ignored for the source domain).
    seed : int
        Seed of the rendering and of the class order.
    n_train, n_test : int
        Images per class in the training pool (500, like CIFAR-100) and the balanced test pool.
    variant : str
        A name in :data:`VARIANTS` (target domain only): colour drift and class order.

    Returns
    -------
    World
    """
    shift = 0.0 if domain == "source" else float(shift)
    v = _variant(variant) if domain == "target" else VARIANTS[DEFAULT_VARIANT]
    train, train_labels, test, test_labels = _pools(domain, shift, int(seed), int(n_train), int(n_test),
                                                    v.drift_per_shift)
    train_labels, test_labels = train_labels.copy(), test_labels.copy()
    params = shapes_params(domain, shift, seed, n_train, n_test, variant)
    order = _class_order(variant if domain == "target" else DEFAULT_VARIANT, seed)
    return World(name="shapes", class_names=list(CLASS_NAMES), templates=list(TEMPLATES), train_images=train,
                 train_labels=train_labels, test_images=test, test_labels=test_labels,
                 class_order=order, params=params, coarse_labels=COARSE_LABELS.copy())



@dataclass(frozen=True)
class ShapesConfig:
    """``[world.shapes]``: the federated target domain's variant."""

    variant: str = knob(DEFAULT_VARIANT, "target variant: colour drift and which classes are the head (VARIANTS)",
                        choices=tuple(VARIANTS))


def _class_order(variant: str, seed: int = 0) -> np.ndarray:
    v = _variant(variant)
    return shapes_class_order(seed) if v.shape_rank is None else shape_grouped_order(v.shape_rank, seed)


def describe_shapes(section: ShapesConfig) -> WorldInfo:
    """Class count, pool sizes and the variant's class order, without rendering."""
    n = len(CLASS_NAMES)
    return WorldInfo("shapes", n, np.full(n, N_TRAIN_PER_CLASS, dtype=np.int64), _class_order(section.variant),
                     test_size=n * N_TEST_PER_CLASS)


@register_world("shapes", config=ShapesConfig, describe=describe_shapes,
                coarse_labels=lambda section: COARSE_LABELS.copy(),
                fingerprint=lambda section: shapes_fingerprint(variant=section.variant),
                description="embedded procedural world: 100 classes (10 colours x 10 shapes), 32x32")
def load_shapes_world(section: ShapesConfig, **extra: Any) -> World:
    """The shapes world of a config section (``extra``: :func:`load_shapes`'s other arguments)."""
    return load_shapes(variant=section.variant, **extra)

def plot_contact_sheet(path: str = "figures/shapes_contact_sheet.png", shift: float = DEFAULT_SHIFT,
                       seed: int = 0, dpi: int = 150) -> str:
    """Write a contact sheet: one image per class, source domain (left) and target domain (right).

    Parameters
    ----------
    path : str
        Output file (PNG); written with fixed metadata so the bytes are reproducible.
    shift, seed : float, int
        Target shift and world seed.
    dpi : int
        Fixed resolution.

    Returns
    -------
    str
        The path written.
    """
    import os

    from matplotlib.figure import Figure

    labels = np.arange(100)
    sheets = {"source": render(labels, "source", 0.0, seed, stream=99),
              f"target (shift={shift:.2f})": render(labels, "target", shift, seed, stream=99)}
    fig = Figure(figsize=(12, 6.4))  # off-screen: no pyplot state, no backend switch
    axes = fig.subplots(1, 2)
    for ax, (title, imgs) in zip(axes, sheets.items(), strict=True):
        grid = imgs.reshape(10, 10, IMAGE_SIZE, IMAGE_SIZE, 3).transpose(0, 2, 1, 3, 4)
        ax.imshow(grid.reshape(10 * IMAGE_SIZE, 10 * IMAGE_SIZE, 3), interpolation="nearest")
        ax.set_title(title)
        ax.set_xticks(np.arange(10) * IMAGE_SIZE + IMAGE_SIZE / 2, SHAPES, rotation=60, fontsize=7)
        ax.set_yticks(np.arange(10) * IMAGE_SIZE + IMAGE_SIZE / 2, COLOURS, fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    return path
