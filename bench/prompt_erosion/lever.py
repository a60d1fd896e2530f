"""How strongly can a shared CoOp context move per-class logit biases? (linearised at the random init)

B[c, j] = logit_scale * <mean target image feature, d t_c / d ctx_j>: the change of class c's average
logit per unit move of context coordinate j. For a wanted per-class bias pattern u (centred over
classes) the gain ||B^T u||^2 / ||u||^2 is how fast one gradient step moves the biases along u.
We compare patterns: the log prior of each class order, its colour and shape main effects, and
the colour x shape interaction part; and the ANOVA split of B's column space itself.

    .venv/bin/python bench/prompt_erosion/lever.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import orders  # noqa: E402
import torch  # noqa: E402
from common import base_config, build_peft, load_default, log  # noqa: E402

from fedpurel_lite.data import longtail  # noqa: E402


def anova(v):
    """Split a [100] vector (class id = 10 colour + shape) into common/colour/shape/interaction sums of squares."""
    m = v.reshape(10, 10)
    g = m.mean()
    col = m.mean(1, keepdims=True) - g
    shp = m.mean(0, keepdims=True) - g
    inter = m - g - col - shp
    return {"common": float(100 * g * g), "colour": 10 * float((col ** 2).sum()), "shape": 10 * float((shp ** 2).sum()),
            "interaction": float((inter ** 2).sum())}


def bias_jacobian(bank, backbone, seed=7):
    """B = d(average logit per class) / d(context) at the random-init context of ``seed``: [100, n_ctx * width]."""
    peft = build_peft("prompt", bank, backbone, base_config(peft="prompt", seed=seed)).eval()
    m = bank.test_features.float().mean(0)
    b = bank.logit_scale * (peft.class_features() @ m)  # [100] average logit per class
    J = torch.stack([torch.autograd.grad(b[i], peft.ctx, retain_graph=True)[0].reshape(-1) for i in range(100)])
    return J.double().numpy()


def analyse(bank, backbone, seed=7, verbose=True):
    """ANOVA split of the bias lever B at the random-init context of ``seed`` and the gains of the patterns."""
    J = bias_jacobian(bank, backbone, seed)
    # ANOVA of B's column space: fraction of ||B||_F^2 in each component
    parts = {k: 0.0 for k in ("common", "colour", "shape", "interaction")}
    for j in range(J.shape[1]):
        for k, v in anova(J[:, j]).items():
            parts[k] += v
    tot = sum(parts.values())
    share = {k: round(float(100 * v / tot), 1) for k, v in parts.items()}
    if verbose:
        print("share of ||B||^2 (bias lever of the shared context):", share)
    G = J @ J.T  # [100, 100]
    def gain(u):
        u = u - u.mean()
        return float(u @ G @ u / (u @ u))
    out = {"share_B": share}
    ev = np.linalg.eigvalsh(G)[::-1].clip(min=0)
    p = ev / ev.sum()
    out["effective_rank"] = round(float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())), 2)
    base = np.log(longtail.class_counts(500, 100, 100.0, "exp").astype(float))
    for name, o in [("stratified", orders.stratified()), ("random", orders.random_perm()),
                    ("by_shape", orders.by_shape()), ("by_colour", orders.by_colour())]:
        u = np.zeros(100)
        u[o] = base  # log prior per class id
        a = anova(u - u.mean())
        tot_u = sum(a.values())
        share = {k: round(float(100 * v / tot_u), 1) for k, v in a.items()}
        out[name] = {"gain": round(gain(u), 3), "prior_share": share}
        if verbose:
            print(name, out[name])
    rng = np.random.default_rng(0)
    for comp in ("colour", "shape", "interaction"):
        gs = []
        for _ in range(50):
            z = rng.standard_normal((10, 10))
            if comp == "colour":
                z = np.repeat(z.mean(1, keepdims=True), 10, 1)
            elif comp == "shape":
                z = np.repeat(z.mean(0, keepdims=True), 10, 0)
            else:
                z = z - z.mean(1, keepdims=True) - z.mean(0, keepdims=True) + z.mean()
            gs.append(gain(z.ravel()))
        out[f"gain_random_{comp}"] = round(float(np.mean(gs)), 3)
    if verbose:
        print({k: v for k, v in out.items() if k.startswith("gain_random") or k == "effective_rank"})
    return out


def main():
    torch.set_num_threads(2)
    cfg, bank, backbone = load_default()
    log("lever", analyse(bank, backbone))


if __name__ == "__main__":
    main()
