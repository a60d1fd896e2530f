"""Re-render the target domain with another colour shift and re-encode it with the shipped tiny CLIP.

    .venv/bin/python bench/prompt_erosion/shift_worlds.py KIND   # KIND: nodrift | idio

nodrift: DRIFT_PER_SHIFT = 0 (clutter unchanged: shift 0.58 -> clutter 0.29).
driftX:  DRIFT_PER_SHIFT = X (the default world has 0.75), clutter unchanged.
idio:    class-idiosyncratic drift: each class drifts (same amount, 0.75 * 0.58) towards its own colour
         target, drawn per class (seeded) among the 9 other colours, instead of the next colour of the cycle.
The package's shapes module is patched in this process only (the renderer's source with one expression
replaced); the bank is built without touching data/cache and saved to /tmp/h4/bank_<KIND>.pt.
"""
import inspect
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedpurel_lite.data.backbone import load_backbone  # noqa: E402
from fedpurel_lite.data.features import FeatureBank  # noqa: E402
from fedpurel_lite.worlds import shapes  # noqa: E402

OUT = Path("/tmp/h4")
OUT.mkdir(parents=True, exist_ok=True)


def idio_targets(seed=0):
    """Per class id, the colour it drifts towards (never its own colour)."""
    rng = np.random.default_rng([seed, 21])
    colour = np.arange(100) // 10
    return ((colour + rng.integers(1, 10, 100)) % 10).astype(np.int64)


def patch(kind):
    shapes._pools.cache_clear()
    if kind == "nodrift":
        shapes.DRIFT_PER_SHIFT = 0.0
        return
    if kind.startswith("drift"):  # systematic drift of another strength: drift0.2 -> DRIFT_PER_SHIFT 0.2
        shapes.DRIFT_PER_SHIFT = float(kind[len("drift"):])
        return
    if kind == "idio":
        src = inspect.getsource(shapes._render_chunk)
        old = "PALETTE[(colour + 1) % 10]"
        assert src.count(old) == 1, "renderer changed: update this patch"
        ns = dict(vars(shapes))
        ns["_IDIO_TARGET"] = idio_targets()
        exec(src.replace(old, "PALETTE[_IDIO_TARGET[labels]]"), ns)
        shapes._render_chunk = ns["_render_chunk"]
        return
    raise SystemExit(f"unknown kind {kind}")


def build(kind):
    torch.set_num_threads(1)
    patch(kind)
    t0 = time.time()
    world = shapes.load_shapes("target")
    backbone = load_backbone()
    bank = FeatureBank.build(backbone, world, progress=False)
    torch.save({f: getattr(bank, f) for f in ("train_features", "train_labels", "test_features", "test_labels",
                                              "text_features", "logit_scale", "class_names", "class_order")},
               OUT / f"bank_{kind}.pt")
    print(f"built {kind} in {time.time() - t0:.0f}s", flush=True)


def load(kind):
    d = torch.load(OUT / f"bank_{kind}.pt", weights_only=False)
    return FeatureBank(**d)


if __name__ == "__main__":
    build(sys.argv[1])
