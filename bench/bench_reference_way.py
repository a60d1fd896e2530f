"""Benchmark: the reference code's way of training (image tower on every step) vs cached features.

The reference FedPuReL code runs the frozen CLIP image encoder on every training step. With a
frozen image tower the features never change, so fedpurel-lite encodes each image once and
trains on cached tensors. This script times the same local epoch of purified training (FedPuReL
stage 1, text-anchored head) both ways:

1. the embedded tiny CLIP on the shapes world (a client-sized set of real 32x32 images);
2. a random-init open_clip ``ViT-B-32`` on 224x224 inputs (a few steps, extrapolated to the epoch),
   i.e. the cost shape of a real CLIP backbone on CPU.

Usage::

    python bench/bench_reference_way.py [--client-size 544] [--vit-steps 3]

Reported: seconds per local epoch each way and their ratio; for the embedded model also the
one-time cost of encoding the client's images (what the cache pays once for all 100 rounds).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedpurel_lite.config import RunConfig  # noqa: E402
from fedpurel_lite.engine.local import local_train  # noqa: E402
from fedpurel_lite.peft import TextAnchoredHead  # noqa: E402


def _reference_epoch(encode, images: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, scale: float,
                     config: RunConfig, max_steps: int | None = None) -> tuple[float, int]:
    """One epoch the reference way: image tower forward per batch, then the purified step on it."""
    head = TextAnchoredHead(text, scale)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(labels), generator=gen)
    one_step = config.with_overrides({"batch_size": config.stage1.batch_size})
    steps = 0
    t0 = time.perf_counter()
    for idx in perm.split(config.stage1.batch_size):
        with torch.no_grad():
            feats = F.normalize(encode(images[idx]).float(), dim=-1)
            teacher = scale * feats @ text.t()
        local_train(head, feats, labels[idx], teacher, one_step, torch.Generator().manual_seed(steps), "purify")
        steps += 1
        if max_steps is not None and steps >= max_steps:
            break
    return time.perf_counter() - t0, steps


def _cached_epoch(feats: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, scale: float,
                  config: RunConfig, repeats: int = 5) -> float:
    head = TextAnchoredHead(text, scale)
    teacher = scale * feats @ text.t()
    t0 = time.perf_counter()
    for r in range(repeats):
        local_train(head, feats, labels, teacher, config, torch.Generator().manual_seed(r), "purify")
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client-size", type=int, default=544, help="images in the client's epoch (20 clients "
                        "share the ~10.8k long-tailed images: ~540 each)")
    parser.add_argument("--vit-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = RunConfig()
    n = args.client_size
    steps_per_epoch = math.ceil(n / config.stage1.batch_size)
    print(f"threads={args.threads}, client size {n}, batch {config.stage1.batch_size} -> {steps_per_epoch} steps/epoch")

    # 1. embedded tiny CLIP on real shapes images
    from fedpurel_lite.data.backbone import load_backbone, zero_shot_classifier
    from fedpurel_lite.data.features import _to_tensor
    from fedpurel_lite.worlds.shapes import load_shapes

    bb = load_backbone()
    world = load_shapes("target", n_train=max(1, math.ceil(n / len(load_shapes_names()))), n_test=1)
    images = _to_tensor(world.train_images[:n], bb.preprocess_cfg)
    labels = torch.as_tensor(world.train_labels[:n], dtype=torch.long)
    text = zero_shot_classifier(bb, world.class_names, world.templates).float()
    encode = bb.model.eval().encode_image
    t0 = time.perf_counter()
    with torch.no_grad():
        feats = torch.cat([F.normalize(encode(images[i:i + 500]).float(), dim=-1) for i in range(0, n, 500)])
    t_encode = time.perf_counter() - t0
    t_ref, _ = _reference_epoch(encode, images, labels, text, bb.logit_scale, config)
    t_cached = _cached_epoch(feats, labels, text, bb.logit_scale, config)
    print(f"[embedded tiny CLIP] reference way {t_ref:.3f} s/epoch | cached {t_cached:.4f} s/epoch | "
          f"ratio {t_ref / t_cached:.1f}x | one-time encoding of the client {t_encode:.3f} s")

    # 2. random-init ViT-B-32 at 224x224
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    dim = model.text_projection.shape[1]
    classes = 100
    text_b = F.normalize(torch.randn(classes, dim), dim=-1)
    scale = float(model.logit_scale.detach().exp())
    k = args.vit_steps * config.stage1.batch_size
    imgs = torch.randn(k, 3, 224, 224)
    labs = torch.randint(0, classes, (k,))
    t_ref_b, steps = _reference_epoch(model.encode_image, imgs, labs, text_b, scale, config, max_steps=args.vit_steps)
    per_step_ref = t_ref_b / steps
    feats_b = F.normalize(torch.randn(n, dim), dim=-1)
    t_cached_b = _cached_epoch(feats_b, torch.randint(0, classes, (n,)), text_b, scale, config)
    epoch_ref_b = per_step_ref * steps_per_epoch
    print(f"[ViT-B-32 random init, 224px] reference way {per_step_ref:.2f} s/step -> {epoch_ref_b:.1f} s/epoch "
          f"(extrapolated from {steps} steps) | cached {t_cached_b:.4f} s/epoch | "
          f"ratio {epoch_ref_b / t_cached_b:.0f}x")
    print(f"  per protocol (812 client-epochs in stage 1 alone): reference ~{epoch_ref_b * 812 / 3600:.1f} h, "
          f"cached ~{t_cached_b * 812:.0f} s + one-time encoding of the images")


def load_shapes_names() -> list[str]:
    """Class names of the shapes world (for the per-class image count)."""
    from fedpurel_lite.worlds.shapes import load_shapes

    return load_shapes("target", n_train=1, n_test=1).class_names


if __name__ == "__main__":
    main()
