"""Benchmark: FeatureBank extraction vs a bare ``model.encode_image`` loop over the same batches.

Usage::

    python bench/bench_features.py [--n 20000] [--batch-size 500] [--repeats 3]

Both sides encode the same shapes-target images with the shipped tiny CLIP under ``no_grad``;
the bare loop gets pre-built normalised tensors (so it does strictly less work), the FeatureBank
path starts from the ``uint8`` images and includes conversion, normalisation, L2 normalisation and
the progress bar. Prints images/s of both (best of ``--repeats``) and the relative overhead.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the numbers."""
    from fedpurel_lite.data.backbone import load_backbone
    from fedpurel_lite.data.features import encode_images
    from fedpurel_lite.worlds import shapes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    backbone = load_backbone()
    images = shapes.render(np.arange(args.n) % 100, "target", shapes.DEFAULT_SHIFT, seed=0, stream=77)
    cfg = backbone.preprocess_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    batches = [((torch.from_numpy(images[i : i + args.batch_size]).permute(0, 3, 1, 2).float() / 255) - mean) / std
               for i in range(0, args.n, args.batch_size)]
    model = backbone.model

    def bare() -> None:
        with torch.no_grad():
            for x in batches:
                model.encode_image(x)

    def ours() -> None:
        encode_images(backbone, images, batch_size=args.batch_size, progress=True, desc="FeatureBank")

    best = {"bare encode_image loop": float("inf"), "FeatureBank.encode_images": float("inf")}
    for _ in range(args.repeats):  # interleaved, best of N, to be fair under shared CPUs
        for name, fn in (("bare encode_image loop", bare), ("FeatureBank.encode_images", ours)):
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    print(f"torch threads: {torch.get_num_threads()}, images: {args.n}, batch: {args.batch_size}")
    for name, sec in best.items():
        print(f"{name:28s} {args.n / sec:9.0f} img/s  ({sec:.2f} s)")
    ratio = best["bare encode_image loop"] / best["FeatureBank.encode_images"]
    print(f"FeatureBank speed = {100 * ratio:.1f} % of the bare loop (overhead {100 * (1 - ratio):+.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
