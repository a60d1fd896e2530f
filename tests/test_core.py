"""The small core: its public API on plain tensors, its imports, and the example loop that uses it."""

from __future__ import annotations

import ast
import math
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fedpurel_lite import core
from fedpurel_lite.core import (
    ResidualHead,
    aligned_kl,
    aligned_temperatures,
    entropy,
    fedavg,
    find_temperature,
    project,
    project_gradients,
    purified_gradients,
    residual_gradients,
    residual_loss,
)

pytestmark = pytest.mark.usefixtures("core_one_thread")

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "fedpurel_lite" / "core"
EXAMPLE = ROOT / "examples" / "core_loop.py"
HEAVY = ("matplotlib", "open_clip", "torchvision", "flwr")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_core_imports_only_torch_and_numpy(tmp_path):
    code = ("import sys, fedpurel_lite.core\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
            "print(sorted(m for m in sys.modules if m.startswith('fedpurel_lite.') and not "
            "m.startswith('fedpurel_lite.core')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["[]", "[]"]
    # and statically: every import in the core is the standard library, torch, numpy or the core itself
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, f"{path.name} imports from outside the core"
                continue
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in ("torch", "numpy"), f"{path.name}: {name}"


def test_public_api_is_documented():
    assert sorted(core.__all__) == sorted(set(core.__all__))
    for name in core.__all__:
        obj = getattr(core, name)
        if callable(obj):
            doc = obj.__doc__ or ""
            assert doc.strip(), name
            assert f":func:`{name}`" in core.__doc__ or f":class:`{name}`" in core.__doc__, name
            if not isinstance(obj, type):
                assert "Returns\n" in doc, f"{name} documents no return value"


def test_example_runs_and_the_residual_helps(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLE)], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    m = re.fullmatch(r"client 0 accuracy: global (\d\.\d+), personal (\d\.\d+)\n", proc.stdout)
    assert m, proc.stdout
    assert float(m[2]) > float(m[1])  # the residual head fits client 0 on top of the frozen global model
    assert list(tmp_path.iterdir()) == []  # writes nothing


def test_projection_removes_exactly_the_conflicting_component():
    gen = torch.Generator().manual_seed(0)
    for lam in (0.5, 1.0):
        g_a = torch.randn(50, generator=gen, dtype=torch.float64)
        g = -0.7 * g_a + torch.randn(50, generator=gen, dtype=torch.float64)
        new, cos, fired = project(g, g_a, lam)
        unit = g_a / g_a.norm()
        assert fired and cos == pytest.approx(float(g @ g_a / (g.norm() * g_a.norm())))
        # along g_a: (1 - lambda) of the old component; across g_a: unchanged
        assert float(new @ unit) == pytest.approx((1 - lam) * float(g @ unit), abs=1e-12)
        torch.testing.assert_close(new - (new @ unit) * unit, g - (g @ unit) * unit)
    # no conflict: the very same tensor back
    g = torch.tensor([1.0, 1.0])
    assert project(g, torch.tensor([1.0, 0.0]))[0] is g


def test_project_gradients_global_decides_once_tensor_per_tensor():
    task = [torch.tensor([[1.0, 0.0]]), torch.tensor([2.0])]
    align = [torch.tensor([[-1.0, 0.0]]), torch.tensor([1.0])]
    grads, cos, fired = project_gradients(task, align, 1.0, "global")
    assert fired == [False] and cos[0] > 0  # <g, g_a> = -1 + 2 > 0
    grads, cos, fired = project_gradients(task, align, 1.0, "tensor")
    assert fired == [True, False]
    assert grads[0].shape == (1, 2) and torch.equal(grads[0], torch.zeros(1, 2)) and torch.equal(grads[1], task[1])


def test_purified_gradients_match_autograd_then_projection():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    unused = torch.nn.Parameter(torch.ones(3))
    x, y, z = torch.randn(10, 6), torch.randint(0, 4, (10,)), 5.0 * torch.randn(10, 4)
    params = [*model.parameters(), unused]

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y), aligned_kl(logits, z)[0]

    for granularity in ("global", "tensor"):
        got = purified_gradients(*losses(), params, 0.5, granularity)
        task, align = losses()
        g_t = [*torch.autograd.grad(task, params[:-1], retain_graph=True), torch.zeros(3)]
        g_a = [*torch.autograd.grad(align, params[:-1]), torch.zeros(3)]
        want = project_gradients(g_t, g_a, 0.5, granularity)[0]
        assert len(got) == len(params) and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        assert torch.equal(got[-1], torch.zeros(3))


def test_bisection_hits_the_target_entropy():
    gen = torch.Generator().manual_seed(1)
    logits = 10.0 * torch.randn(40, 30, generator=gen)
    target = 0.1 + (math.log(30) - 0.2) * torch.rand(40, generator=gen)
    tau = find_temperature(logits, target, iters=24)
    assert (entropy(logits / tau[:, None]) - target).abs().max() < 1e-4
    # fewer steps, coarser: the bracket after k halvings in log tau is 400 ** (1 / 2**k)
    coarse = find_temperature(logits, target, iters=4)
    assert (entropy(logits / coarse[:, None]) - target).abs().max() > 1e-3


def test_aligned_temperatures_meet_at_the_mean_entropy():
    gen = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(8, 12, generator=gen), 20.0 * torch.randn(8, 12, generator=gen)
    tau_t, tau_s = aligned_temperatures(student, teacher)
    mean = 0.5 * (entropy(student) + entropy(teacher))
    assert (entropy(teacher / tau_t[:, None]) - mean).abs().max() < 1e-3
    assert (entropy(student / tau_s[:, None]) - mean).abs().max() < 1e-3
    assert (tau_t > 1).all()  # the sharp teacher is softened


def test_fedavg_weights_and_state_dicts():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    avg = fedavg([a.state_dict(), b.state_dict()], [1, 3])
    assert isinstance(a.state_dict(), OrderedDict) and list(avg) == ["weight", "bias"]
    torch.testing.assert_close(avg["weight"], 0.25 * a.weight.detach() + 0.75 * b.weight.detach())
    merged = torch.nn.Linear(3, 2)
    merged.load_state_dict(avg)
    half = fedavg([{"w": torch.tensor([0.0], dtype=torch.float64)}, {"w": torch.tensor([1.0], dtype=torch.float64)}],
                  [2.0, 2.0])
    assert half["w"].dtype == torch.float64 and half["w"].item() == 0.5
    with pytest.raises(ValueError, match="positive sum"):
        fedavg([a.state_dict()], [-1.0])


@pytest.mark.parametrize("bias", [False, True])
def test_residual_head_loss_and_closed_form_gradients(bias):
    torch.manual_seed(3)
    head = ResidualHead(6, 4, scale=7.0, bias=bias)
    x, y, g_logits = torch.randn(9, 6), torch.randint(0, 4, (9,)), 3.0 * torch.randn(9, 4)
    assert torch.equal(head(x), torch.zeros(9, 4))  # zero at init: the personal model starts as the global one
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    loss = residual_loss(g_logits, head(x), y, 0.3)
    manual = 0.3 * F.cross_entropy(head(x), y) + 0.7 * F.cross_entropy(g_logits + head(x), y)
    torch.testing.assert_close(loss, manual)
    closed_loss, closed = residual_gradients(head, g_logits, x, y, 0.3)
    auto = torch.autograd.grad(loss, list(head.parameters()))
    torch.testing.assert_close(closed_loss, loss.detach())
    assert len(closed) == (2 if bias else 1)
    for c, a in zip(closed, auto, strict=True):
        torch.testing.assert_close(c, a)
