"""Pretrain the embedded tiny CLIP (``fedpurel-tiny``) on the source domain of the shapes world.

Reproducible command (seeded, one torch thread; 15 minutes on our shared 2-core machine, about
7 minutes with ``--threads 2`` on idle cores, then not bit-identical)::

    python -m fedpurel_lite pretrain --out data/fedpurel-tiny.safetensors --replace-shipped

Without ``--out`` the weights go to ``runs/pretrain/fedpurel-tiny.safetensors``. The shipped file
is never replaced unless ``--replace-shipped`` is given, and no other existing file unless
``--overwrite`` is; every option is checked before any work (one ``error:`` line), the loss is
checked finite at every step (a diverging run stops naming the step and writes nothing), and the
weights are written through a temporary file and an atomic rename.

Recipe: every step renders a fresh balanced batch of source images (clean shapes on dark
backgrounds) and encodes one caption per class (a random template from
:data:`fedpurel_lite.worlds.shapes.TEMPLATES`, so 100 texts per step). The loss is a symmetric
multi-positive InfoNCE: image -> its class caption (cross-entropy over the 100 captions) and
caption -> every image of its class (soft targets). AdamW with warm-up and cosine decay; the
learnable logit scale is clamped to 100 as in CLIP. The weights are written in fp16 safetensors
and their SHA-256 is printed; :data:`fedpurel_lite.data.backbone.EMBEDDED_SHA256` pins the shipped file.

``python -m fedpurel_lite pretrain --report`` measures the world quality bars on the shipped (or
``--weights``) file: zero-shot accuracy on the target test pool, its head/medium/tail means under
the default long-tail assignment, and a linear probe trained on the balanced target training pool.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedpurel_lite.worlds import shapes
from fedpurel_lite.worlds.base import World

MODEL_NAME = "fedpurel-tiny"


def _images_to_tensor(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean) / std


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or "ln" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def class_names_for(names: str) -> list[str]:
    """The class names a tower is pretrained on: ``"shapes"`` ("red star", ...) or ``"opaque"`` (made-up words).

    Parameters
    ----------
    names : {"shapes", "opaque"}
        ``"opaque"`` is :func:`fedpurel_lite.worlds.opaque.opaque_names` (seed 0), the names of the
        ``shapes-opaque`` world.

    Returns
    -------
    list of str
        One name per class id.
    """
    if names == "opaque":
        from fedpurel_lite.worlds.opaque import opaque_names

        return opaque_names()
    if names != "shapes":
        raise ValueError(f"unknown names {names!r}; choose from {', '.join(NAMES)}")
    return list(shapes.CLASS_NAMES)


def pretrain(steps: int = 800, batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 0.05,
             warmup: int = 50, seed: int = 0, log_every: int = 50, names: str = "shapes") -> torch.nn.Module:
    """Pretrain ``fedpurel-tiny`` from random init on the shapes source domain.

    Parameters
    ----------
    steps, batch_size : int
        Optimisation steps and images per step.
    lr, weight_decay : float
        AdamW settings (cosine decay after ``warmup`` linear warm-up steps).
    warmup : int
        Warm-up steps.
    seed : int
        Seeds the initialisation, the batches (rendered from per-step streams) and the captions.
    log_every : int
        Print the loss every this many steps.
    names : {"shapes", "opaque"}
        The class names of the captions (:func:`class_names_for`); the images are the same.

    Returns
    -------
    torch.nn.Module
        The trained open_clip ``CLIP`` model (fp32, eval mode).
    """
    import open_clip

    from fedpurel_lite.data.backbone import register_embedded_config

    register_embedded_config()
    torch.set_flush_denormal(True)  # tiny Adam moments would otherwise slow CPU steps many-fold
    torch.manual_seed(seed)
    model = open_clip.create_model(MODEL_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    num_t = len(shapes.TEMPLATES)
    class_names = class_names_for(names)
    captions = [t.format(c) for c in class_names for t in shapes.TEMPLATES]
    tokens = tokenizer(captions).view(len(class_names), num_t, -1)
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    rng = np.random.default_rng([seed, 11])
    model.train()
    start = time.time()
    for step in range(steps):
        if step < warmup:
            factor = (step + 1) / warmup
        else:
            factor = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr * factor
        labels = rng.integers(0, 100, batch_size)
        x = _images_to_tensor(shapes.render(labels, "source", 0.0, seed, stream=1000 + step), mean, std)
        pick = torch.from_numpy(rng.integers(0, num_t, len(shapes.CLASS_NAMES)))
        text = tokens[torch.arange(len(shapes.CLASS_NAMES)), pick]
        img_f = F.normalize(model.encode_image(x), dim=-1)
        txt_f = F.normalize(model.encode_text(text), dim=-1)
        logits = model.logit_scale.exp() * img_f @ txt_f.T
        y = torch.from_numpy(labels)
        loss_i = F.cross_entropy(logits, y)
        present = torch.unique(y)
        pos = (y[None, :] == present[:, None]).float()
        log_p = F.log_softmax(logits.T[present], dim=1)
        loss_t = -(log_p * pos / pos.sum(1, keepdim=True)).sum(1).mean()
        loss = 0.5 * (loss_i + loss_t)
        if not torch.isfinite(loss):
            from fedpurel_lite.errors import ConfigError

            raise ConfigError(f"pretraining diverged at step {step}: the loss is {loss.item()} (--lr {lr:g} is "
                              "likely too large); nothing was written")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if log_every and (step % log_every == 0 or step == steps - 1):
            acc = (logits.argmax(1) == y).float().mean().item()
            print(f"step {step:5d}  loss {loss.item():.3f}  batch acc {acc:.3f}  "
                  f"scale {model.logit_scale.exp().item():.1f}  {time.time() - start:.0f}s", flush=True)
    return model.eval()


def save_weights(model: torch.nn.Module, path: str | Path, fp16: bool = True) -> str:
    """Save the state dict as safetensors (fp16 by default), atomically; returns the file's SHA-256.

    Raises
    ------
    ConfigError
        A weight is not finite (nothing is written).
    """
    from safetensors.torch import save_file

    from fedpurel_lite.errors import ConfigError

    state = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ConfigError(f"pretraining ended with non-finite weights ({bad[0]}); nothing was written")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata={"model": MODEL_NAME, "format": "pt"})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def report(weights: str | None = None, shift: float = shapes.DEFAULT_SHIFT, cache_dir: str | None = None,
           seed: int = 0, names: str = "shapes") -> dict:
    """Measure the world quality bars (zero-shot, head/medium/tail, linear-probe headroom).

    Parameters
    ----------
    weights : str, optional
        A weights file; default the shipped, hash-checked one.
    shift : float
        Target shift of the shapes world.
    cache_dir : str, optional
        Feature cache folder (default: the repository's ``data/cache``).
    seed : int
        World seed.
    names : {"shapes", "opaque"}
        ``"opaque"`` measures the ``shapes-opaque`` world (same images, made-up class names).

    Returns
    -------
    dict
        The measured numbers (also printed as JSON).
    """
    from fedpurel_lite.data.backbone import load_backbone
    from fedpurel_lite.data.features import FeatureBank
    from fedpurel_lite.engine.metrics import group_means, per_class_accuracy
    from fedpurel_lite.worlds.quality import default_groups, linear_probe_accuracy

    backbone = load_backbone(MODEL_NAME, pretrained=weights)
    from fedpurel_lite.worlds.opaque import load_opaque

    load: Callable[..., World] = load_opaque if names == "opaque" else shapes.load_shapes
    world = load("target", shift=shift, seed=seed)
    bank = FeatureBank.load_or_build(backbone, world, cache_dir=cache_dir)
    pred = bank.zero_shot_logits(bank.test_features).argmax(1)
    per_class = per_class_accuracy(bank.test_labels.numpy(), pred.numpy(), 100)
    groups = group_means(per_class, default_groups(bank.class_order))
    t0 = time.time()
    probe = linear_probe_accuracy(bank.train_features, bank.train_labels, bank.test_features, bank.test_labels)
    src = load("source", seed=seed, n_train=1, n_test=20)
    src_bank = FeatureBank.load_or_build(backbone, src, cache_dir=cache_dir)
    src_zs = (src_bank.zero_shot_logits(src_bank.test_features).argmax(1) == src_bank.test_labels).float().mean()
    out = {"weights_id": backbone.weights_id, "names": names, "shift": shift, "zero_shot": float(per_class.mean()),
           **{f"zero_shot_{k}": v for k, v in groups.items()}, "per_class_std": float(per_class.std()),
           "per_class_min": float(per_class.min()), "linear_probe": probe,
           "headroom": probe - float(per_class.mean()), "source_zero_shot": float(src_zs),
           "logit_scale": bank.logit_scale, "probe_seconds": round(time.time() - t0, 1)}
    print(json.dumps(out, indent=2))
    return out


DEFAULT_OUT = "runs/pretrain/fedpurel-tiny.safetensors"
#: the class-name sets ``--names`` chooses from
NAMES = ("shapes", "opaque")
#: bounds of the options: what the recipe and a CPU can run
MAX_STEPS, MAX_BATCH, MAX_LR = 1_000_000, 4096, 1.0
#: measured: 800 steps of 256 images in 15 minutes on one thread of our shared 2-core machine
SECONDS_PER_IMAGE = 15 * 60 / (800 * 256)


def check_options(args: argparse.Namespace) -> None:
    """Every option of ``pretrain`` checked before any work (the threads clipped to the machine, with a warning).

    Raises
    ------
    ConfigError
        Naming the option, the value and what is allowed.
    """
    import warnings

    from fedpurel_lite.data.backbone import EMBEDDED_WEIGHTS
    from fedpurel_lite.engine.preflight import check_file_destination
    from fedpurel_lite.engine.workers import available_cores
    from fedpurel_lite.errors import ConfigError

    if not 1 <= args.steps <= MAX_STEPS:
        raise ConfigError(f"--steps {args.steps}: allowed [1, {MAX_STEPS:,}]")
    if not 1 <= args.batch_size <= MAX_BATCH:
        raise ConfigError(f"--batch-size {args.batch_size}: allowed [1, {MAX_BATCH}]")
    if not (math.isfinite(args.lr) and 0 < args.lr <= MAX_LR):
        raise ConfigError(f"--lr {args.lr!r}: allowed a finite number in (0, {MAX_LR:g}]")
    if not 0 <= args.seed <= 2**32 - 1:
        raise ConfigError(f"--seed {args.seed}: allowed [0, 4294967295]")
    if args.names not in NAMES:
        raise ConfigError(f"--names {args.names!r}: choose from {', '.join(NAMES)}")
    if not (math.isfinite(args.shift) and 0 <= args.shift <= 1):
        raise ConfigError(f"--shift {args.shift!r}: allowed a number in [0, 1]")
    cores = available_cores()
    if args.threads < 0:
        raise ConfigError(f"--threads {args.threads}: allowed 0 (torch's default) or [1, {cores}]")
    if args.threads > cores:
        warnings.warn(f"--threads {args.threads}: this machine has {cores} cores for this process; using {cores}",
                      stacklevel=2)
        args.threads = cores
    if args.report:
        if args.weights is not None and not Path(args.weights).is_file():
            raise ConfigError(f"--weights {args.weights!r}: file not found")
        return
    out = Path(args.out)
    check_file_destination(out, "--out")
    shipped = out.exists() and EMBEDDED_WEIGHTS.exists() and out.resolve() == EMBEDDED_WEIGHTS.resolve()
    if shipped and not args.replace_shipped:
        raise ConfigError(f"--out {args.out!r} is the shipped weights file (its SHA-256 is pinned in "
                          "fedpurel_lite.data.backbone.EMBEDDED_SHA256); pass --replace-shipped to replace it, or "
                          "write "
                          "elsewhere")
    if out.exists() and not shipped and not args.overwrite:
        raise ConfigError(f"--out {args.out!r} exists; pass --overwrite to replace it, or write elsewhere")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``python -m fedpurel_lite pretrain [--report] ...``."""
    p = argparse.ArgumentParser(prog="python -m fedpurel_lite pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help=f"weights file to write (default {DEFAULT_OUT})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--replace-shipped", action="store_true",
                   help="allow --out to be the shipped data/fedpurel-tiny.safetensors (its hash is pinned)")
    p.add_argument("--steps", type=int, default=800, help=f"optimisation steps, [1, {MAX_STEPS:,}] (default 800)")
    p.add_argument("--batch-size", type=int, default=256, help=f"images per step, [1, {MAX_BATCH}] (default 256)")
    p.add_argument("--lr", type=float, default=1e-3, help=f"peak AdamW learning rate, (0, {MAX_LR:g}] (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the shipped file was made with 1; 0 = torch default)")
    p.add_argument("--report", action="store_true", help="measure the world bars instead of training")
    p.add_argument("--weights", default=None, help="with --report: weights file (default: shipped)")
    p.add_argument("--shift", type=float, default=shapes.DEFAULT_SHIFT)
    p.add_argument("--names", default="shapes",
                   help="class names of the captions (and, with --report, of the world): shapes (\"red star\", "
                        "the shipped tower) or opaque (one made-up word per class, the shapes-opaque world)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    check_options(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.report:
        report(args.weights, shift=args.shift, names=args.names)
        return 0
    estimate = args.steps * args.batch_size * SECONDS_PER_IMAGE
    print(f"pretraining {args.steps} steps of {args.batch_size} images: about {estimate / 60:.0f} min on one "
          "thread of a 2-core machine (15 min for the shipped 800 x 256)", flush=True)
    t0 = time.time()
    model = pretrain(args.steps, args.batch_size, args.lr, seed=args.seed, names=args.names)
    digest = save_weights(model, args.out)
    print(f"pretraining took {time.time() - t0:.0f}s; wrote {args.out} sha256={digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
