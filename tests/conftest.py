"""Shared pytest fixtures. Append-only file: each owner prefixes its fixtures (``core_`` = the federated core)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F


def register_tiny_clip(folder, name: str, embed_dim: int = 16, patch_size: int = 16, text_width: int = 32,
                       text_layers: int = 1, **text_extra) -> str:
    """Register a random-init tiny open_clip config (32 px images, no download) under ``name``; returns it.

    ``text_extra`` adds keys to ``text_cfg`` (e.g. ``ls_init_value``, ``proj_type``).
    """
    import open_clip

    cfg = {"embed_dim": embed_dim,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": patch_size},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": text_width, "heads": 2,
                        "layers": text_layers, **text_extra}}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name


# ----------------------------------------------------------------------------- core_ (the federated core)

CORE_TINY_CLIP = "core-test-tiny"


@dataclass
class CoreSyntheticBank:
    """Duck-typed FeatureBank: Gaussian clusters around class means, imperfect 'text' features."""

    train_features: torch.Tensor
    train_labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor
    text_features: torch.Tensor
    logit_scale: float
    class_names: list[str]
    class_order: np.ndarray
    meta: dict = field(default_factory=dict)


def core_make_bank(num_classes: int = 20, dim: int = 32, per_class_train: int = 60, per_class_test: int = 30,
                   noise: float = 0.9, text_noise: float = 0.7, seed: int = 0) -> CoreSyntheticBank:
    """A small synthetic bank: image features = normalise(mean_c + noise), text = normalise(mean_c + noise)."""
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(num_classes, dim, generator=g), dim=-1)
    text = F.normalize(means + text_noise * torch.randn(num_classes, dim, generator=g) / dim ** 0.5, dim=-1)

    def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        feats = means[labels] + noise * torch.randn(labels.numel(), dim, generator=g) / dim ** 0.5
        return F.normalize(feats, dim=-1), labels

    xtr, ytr = draw(per_class_train)
    xte, yte = draw(per_class_test)
    order = np.random.default_rng(seed).permutation(num_classes)
    return CoreSyntheticBank(xtr, ytr, xte, yte, text, 18.0, [f"class {c}" for c in range(num_classes)], order)


@pytest.fixture(scope="session")
def core_bank() -> CoreSyntheticBank:
    """Synthetic 20-class, 32-d bank (60 train / 30 test per class)."""
    return core_make_bank()


@pytest.fixture(scope="session")
def core_tiny_clip(tmp_path_factory: pytest.TempPathFactory):
    """A random-init tiny open_clip CLIP (text ctx 16, width 64, 2 layers) and its tokenizer."""
    import open_clip

    register_tiny_clip(tmp_path_factory.mktemp("core_cfg"), CORE_TINY_CLIP, embed_dim=32, text_width=64, text_layers=2)
    torch.manual_seed(0)
    model = open_clip.create_model(CORE_TINY_CLIP, pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer(CORE_TINY_CLIP)
    return model, tokenizer


@pytest.fixture
def core_one_thread():
    """Run a test with one torch thread (small tensors on shared cores), restoring the count after."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def assert_pullback_matches_autograd(peft, x: torch.Tensor, cotangents: torch.Tensor) -> list[torch.Tensor]:
    """``peft.forward_with_pullback(x)`` gives the logits and, per cotangent, the autograd gradients."""
    logits, pullback = peft.forward_with_pullback(x)
    torch.testing.assert_close(logits, peft(x).detach())
    got = pullback(cotangents)
    for i in range(cotangents.shape[0]):
        want = torch.autograd.grad(peft(x), peft.trainable_parameters(), cotangents[i])
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g[i], w, atol=1e-5, rtol=1e-4)
    return got


def explorer_config(**kw):
    """A small federation for the explorers (5 clients, IF 10, seed 3), with overrides ``kw``."""
    from fedpurel_lite.config import RunConfig

    base = dict(num_clients=5, participation=0.4, rounds=50, imbalance_ratio=10, min_client_size=5, lr=0.2,
                personal_lr=0.2, batch_size=16, seed=3)
    base.update(kw)
    return RunConfig().with_overrides(base)
