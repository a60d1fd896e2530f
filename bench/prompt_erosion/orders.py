"""Class orders (head -> tail) used in the diagnosis. Class id = 10 * colour + shape."""
import numpy as np

from fedpurel_lite.worlds.shapes import shape_grouped_order, shapes_class_order


def stratified(seed=0):
    return shapes_class_order(seed)


def random_perm(seed=0):
    return np.random.default_rng([seed, 99]).permutation(100).astype(np.int64)


def by_shape(shape_rank=None, seed=0):
    """Grouped by shape: the 10 classes of shape_rank[0] first (colours shuffled), then shape_rank[1], ..."""
    return shape_grouped_order(list(range(10)) if shape_rank is None else list(shape_rank), seed)


def by_colour(colour_rank=None, seed=0):
    rng = np.random.default_rng([seed, 6])
    colour_rank = list(range(10)) if colour_rank is None else list(colour_rank)
    out = []
    for c in colour_rank:
        out.extend((c * 10 + rng.permutation(10)).tolist())
    return np.asarray(out, dtype=np.int64)


def partial(attr_key, rho, seed=0):
    """Partial correlation: sort classes by rho * z(attr_key) + sqrt(1-rho^2) * noise (attr_key: [100] per class id)."""
    rng = np.random.default_rng([seed, 13])
    a = np.asarray(attr_key, dtype=float)
    a = (a - a.mean()) / (a.std() + 1e-9)
    key = rho * a + np.sqrt(max(0.0, 1 - rho * rho)) * rng.standard_normal(100)
    return np.argsort(key, kind="stable").astype(np.int64)
