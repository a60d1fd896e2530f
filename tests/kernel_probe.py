"""The short pipeline behind a figure, as a script: prints the SHA-256 of what it computes.

Run in a subprocess by ``tests/test_kernels.py`` under different kernel environments:
render 200 shapes images, encode them with the shipped tiny CLIP, train a linear head for a few
purified steps (cross-entropy, its gradient projected against a temperature-aligned KL to the
zero-shot classifier), and draw the per-class accuracy change as a PNG with ``save_figure``.
The last line is JSON: ``{"features": sha, "head": sha, "numpy": sha, "figure": sha}``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fedpurel_lite.data.backbone import load_backbone, zero_shot_classifier  # noqa: E402
from fedpurel_lite.data.features import encode_images  # noqa: E402
from fedpurel_lite.purify import aligned_kl, project  # noqa: E402
from fedpurel_lite.views.plots import save_figure  # noqa: E402
from fedpurel_lite.worlds.shapes import CLASS_NAMES, TEMPLATES, render  # noqa: E402


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


def main(out: Path) -> dict[str, str]:
    torch.manual_seed(0)
    labels = np.arange(100).repeat(2)
    backbone = load_backbone()
    x = encode_images(backbone, render(labels, "target", seed=0, stream=7), batch_size=100, progress=False)
    text = zero_shot_classifier(backbone, CLASS_NAMES, TEMPLATES)
    y = torch.from_numpy(labels)
    scale = backbone.logit_scale
    head = text.clone().requires_grad_(True)
    for _ in range(10):
        logits = scale * x @ head.T
        g_ce = torch.autograd.grad(F.cross_entropy(logits, y), head)[0]
        kl, _, _ = aligned_kl(scale * x @ head.T, scale * x @ text.T)
        g_kl = torch.autograd.grad(kl, head)[0]
        g, _, _ = project(g_ce, g_kl)
        with torch.no_grad():
            head -= 0.5 * g
    with torch.no_grad():
        before = (scale * x @ text.T).argmax(1) == y
        after = (scale * x @ head.T).argmax(1) == y
    change = (after.float() - before.float()).reshape(100, 2).mean(1).numpy()
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.bar(np.arange(100), change)
    ax.set_title(f"mean logit {float((scale * x @ head.T).mean()):.9f}")
    png = save_figure(fig, "probe", folder=out)
    gram = x.double().numpy() @ x.double().numpy().T  # NumPy's OpenBLAS, as the analysis code uses it
    return {"features": _sha(x), "head": _sha(head), "numpy": hashlib.sha256(gram.tobytes()).hexdigest(),
            "figure": hashlib.sha256(png.read_bytes()).hexdigest()}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
