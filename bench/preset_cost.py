"""Benchmark: a preset's full-protocol cost on one device, from measured per-step costs.

For presets too slow to run whole on the machine at hand (the real-CLIP CIFAR-100-LT presets on a
CPU), this measures what one unit of each phase costs on ``--device`` and multiplies by how many
units the protocol has:

- **encode**: one batch of images through the image tower at the backbone's resolution (the
  feature cache encodes every training and test image once: 60,000 for CIFAR-100);
- **stage 1**: one local step of the method's stage-1 objective (purified CE for ``fedpurel``);
- **stage 2**: one step of the personal branch;
- **evaluation**: one round's evaluation (the global model on the test set, every client's
  personal model on its test split; an upper bound where personal branch logits are reused).

The step counts are exact: the preset's federation (long tail, client split, seed) is built from
the dataset's label layout, and the client sampler of the run gives each round's clients. The
weights and the images are random (a random-init model of the preset's architecture, random
features and pixels): dense networks cost the same whatever the values, so nothing has to be
downloaded. Each unit is also counted in FLOPs (``torch.utils.flop_counter``), so a device's
time can be read against its throughput.

Usage::

    python bench/preset_cost.py --config configs/paper_cifar100_lt.toml --device cuda
    python bench/preset_cost.py --config configs/reference_cifar100_lt.toml --device cpu

Prints one row per phase (time and FLOPs per unit, units, total) and the estimated total.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedpurel_lite.config import RunConfig  # noqa: E402
from fedpurel_lite.data.backbone import RANDOM_INIT, load_backbone  # noqa: E402
from fedpurel_lite.data.features import FeatureBank  # noqa: E402
from fedpurel_lite.data.partition import build_federation  # noqa: E402
from fedpurel_lite.engine.aggregate import ClientSampler  # noqa: E402
from fedpurel_lite.engine.assembly import assemble, resolve_device, with_method  # noqa: E402
from fedpurel_lite.engine.client import ClientData, predict_private, train_private, train_shared  # noqa: E402
from fedpurel_lite.engine.local import batches  # noqa: E402
from fedpurel_lite.worlds.cifar import CIFAR100_COARSE  # noqa: E402

#: the label layout of the worlds this can cost: (classes, training images per class, test images per class)
LAYOUTS = {"cifar100": (100, 500, 100), "cifar10": (10, 5000, 1000)}


def synthetic_bank(world: str, dim: int, seed: int = 0) -> FeatureBank:
    """A bank with the world's labels and random unit features (costs do not depend on the values)."""
    classes, n_train, n_test = LAYOUTS[world]
    gen = torch.Generator().manual_seed(seed)

    def unit(n: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=-1)

    labels = torch.arange(classes)
    return FeatureBank(unit(classes * n_train), labels.repeat_interleave(n_train), unit(classes * n_test),
                       labels.repeat_interleave(n_test), unit(classes), 100.0,
                       [f"class {i}" for i in range(classes)], np.arange(classes))


def measure(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(seconds, FLOPs) of one call of ``fn`` after one warm-up call."""
    from torch.utils.flop_counter import FlopCounterMode

    fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    seconds = time.perf_counter() - t0
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return seconds, float(counter.get_total_flops())


def one_batch(data: ClientData, size: int) -> ClientData:
    """The first ``size`` training samples of a client (one local step)."""
    return ClientData(data.client_id, data.x[:size], data.y[:size], data.z[:size], data.x_test, data.y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a preset of a CIFAR world")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, auto")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value config overrides")
    parser.add_argument("--encode-batch", type=int, default=64, help="images per timed encoding batch")
    args = parser.parse_args()

    config = RunConfig.load(args.config).with_overrides(args.set + [f"world.device={args.device}"])
    if config.world.name not in LAYOUTS:
        raise SystemExit(f"error: world {config.world.name!r}: this estimate knows {sorted(LAYOUTS)}")
    config, method = with_method(config)
    device = resolve_device(config.world.device)
    torch.set_num_threads(config.run.num_threads or torch.get_num_threads())
    backbone = load_backbone(config.world.backbone, RANDOM_INIT, device=str(device))
    dim = int(backbone.model.text_projection.shape[1])
    bank = synthetic_bank(config.world.name, dim)
    coarse = CIFAR100_COARSE if config.world.name == "cifar100" else None
    fed = build_federation(bank.train_labels.numpy(), bank.test_labels.numpy(), bank.class_order, config,
                           coarse_labels=coarse)
    parts = assemble(config, bank, backbone, federation=fed, progress=False)
    clients, peft = parts.clients(), parts.peft
    s1, bs = config.stage1, config.stage1.batch_size
    # steps per client and epoch, by the same batching as training (stage 2 keeps the last batch)
    per_client = [(len(batches(c.n, bs, torch.Generator(), s1.drop_last)), len(batches(c.n, bs, torch.Generator())))
                  for c in clients]
    sampler = ClientSampler(fed.num_clients, config.federation.participation, config.run.seed)
    rounds = [sampler.sample(r) for r in range(config.federation.rounds)]
    n1 = sum(per_client[k][0] for chosen in rounds for k in chosen) * s1.local_epochs
    n2 = sum(per_client[k][1] for chosen in rounds for k in chosen) * config.personalization.personal_epochs
    biggest = max(clients, key=lambda c: c.n)
    batch = one_batch(biggest, bs)
    initial = peft.shared_state()
    prior = parts.class_prior()
    shared, personal = peft.clone(), parts.new_personal()
    rows: list[tuple[str, float, float, int]] = []

    size = backbone.preprocess_cfg["size"]
    side = size if isinstance(size, int) else size[0]
    images = torch.randn(args.encode_batch, 3, side, side, device=device)
    with torch.no_grad():
        t, f = measure(lambda: backbone.model.encode_image(images), device)
    n_images = len(bank.train_labels) + len(bank.test_labels)
    rows.append(("encode (per image)", t / args.encode_batch, f / args.encode_batch, n_images))
    if method.stage1 is not None:
        t, f = measure(lambda: train_shared(shared, initial, batch, config, method, 0, prior), device)
        rows.append(("stage 1 (per step)", t, f, n1))
    peft.eval()
    if method.personal is not None:
        t, f = measure(lambda: train_private(personal, peft, None, initial, batch, config, method, 0), device)
        rows.append(("stage 2 (per step)", t, f, n2))
    x_test = torch.as_tensor(bank.test_features).float().to(device)

    @torch.no_grad()
    def evaluate() -> None:
        logits = peft.predict_logits(x_test, config.run.eval_batch_size)
        if method.personal is not None:
            for idx in fed.client_test:
                index = torch.as_tensor(idx, dtype=torch.long, device=device)
                predict_private(personal, peft, None, initial, x_test[index], logits[index], config, method)

    t, f = measure(evaluate, device)
    rows.append(("evaluation (per round)", t, f, len(rounds)))

    print(f"preset {args.config}: {config.world.backbone} (random init), method {method.name}, "
          f"peft {config.method.peft}, {len(rounds)} rounds, {fed.num_clients} clients, device {device}")
    print(f"{'phase':<24}{'s / unit':>10}{'GFLOP / unit':>14}{'units':>9}{'total s':>10}{'total PFLOP':>13}")
    total_s = total_f = 0.0
    for name, t, f, n in rows:
        total_s += t * n
        total_f += f * n
        print(f"{name:<24}{t:>10.4f}{f / 1e9:>14.2f}{n:>9}{t * n:>10.0f}{f * n / 1e15:>13.3f}")
    print(f"estimated full protocol: {total_s:.0f} s ({total_s / 3600:.2f} h), {total_f / 1e15:.2f} PFLOP "
          f"({total_f / max(total_s, 1e-9) / 1e12:.2f} TFLOP/s achieved); max client {biggest.n} samples, "
          f"{per_client[biggest.client_id][1]} steps")


if __name__ == "__main__":
    main()
