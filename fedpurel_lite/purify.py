"""Gradient purification (FedPuReL stage 1): temperature-aligned KL, projection, local epochs.

Per batch the student logits ``f`` (trainable PEFT) and the teacher logits ``z`` (frozen
zero-shot CLIP) give

- the task loss ``L_task = CE(f, y)``;
- the alignment loss ``L_align = KL(p_t || p_s)`` with ``p_t = softmax(z / tau_t)`` and
  ``p_s = softmax(f / tau_s)``. The temperatures are found per sample, without gradient, by
  vectorised bisection on ``[0.05, 20]`` so that both distributions reach the per-sample target
  entropy ``H* = (H(softmax z) + H(softmax f)) / 2`` (the "temperature-aligned KL", TKL). The
  ablation ``aligned=False`` is the plain KL at ``T = 1``;
- the update direction: ``g = grad L_task``; if ``cos(g, g_a) < 0`` with ``g_a = grad L_align``,
  ``g <- g - lambda <g, g_a_hat> g_a_hat`` (ProGrad rule). ``g_a`` itself is never added. The
  projection acts on the whole flattened trainable gradient (default, the paper's formula) or
  per tensor (the reference code).

:func:`local_train` runs the local epoch(s) of one client with a fresh SGD optimizer (momentum,
weight decay applied inside ``step()``, i.e. after the projection), fp32, and returns telemetry.
It is a pure function of the module, tensors, config and generator, so the simulator and a
Flower ClientApp can share it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

STAGE1_MODES: tuple[str, ...] = ("ce", "prox", "la", "purify", "purify-kl")
TAU_LO, TAU_HI = 0.05, 20.0


def entropy(logits: Tensor) -> Tensor:
    """Per-sample Shannon entropy (nats) of ``softmax(logits)`` over the last dimension."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


@torch.no_grad()
def find_temperature(
    logits: Tensor, target: Tensor, lo: float = TAU_LO, hi: float = TAU_HI, iters: int = 16
) -> Tensor:
    """Per-row temperature ``tau`` with ``H(softmax(logits / tau)) = target``, by vectorised bisection.

    The entropy increases monotonically with ``tau``. The bisection halves the bracket in
    ``log tau`` (geometric midpoint), which spreads the precision evenly over ``[lo, hi]``: 16
    steps narrow ``[0.05, 20]`` to a factor ``400 ** (1 / 2**16) = 1.0001``, i.e. the entropy is
    matched to about 1e-4 nats. A target outside the reachable range clamps ``tau`` to the nearest
    bound. On the CPU the loop runs in NumPy (about 2x faster than torch for these small rows).

    Parameters
    ----------
    logits : Tensor
        ``[B, C]``.
    target : Tensor
        ``[B]`` target entropies (nats).
    lo, hi : float
        Search interval.
    iters : int
        Bisection steps.

    Returns
    -------
    Tensor
        ``[B]`` temperatures (dtype and device of ``logits``).
    """
    if logits.device.type == "cpu":
        shifted = (logits - logits.max(dim=-1, keepdim=True).values).float().numpy()
        tgt = target.float().numpy()
        llo = np.full(tgt.shape, math.log(lo), dtype=np.float32)
        lhi = np.full(tgt.shape, math.log(hi), dtype=np.float32)
        for _ in range(iters):
            mid = 0.5 * (llo + lhi)
            a = shifted * np.exp(-mid)[:, None]
            e = np.exp(a)
            z = e.sum(axis=1)
            above = np.log(z) - np.einsum("ij,ij->i", e, a) / z > tgt
            lhi = np.where(above, mid, lhi)
            llo = np.where(above, llo, mid)
        return torch.from_numpy(np.exp(0.5 * (llo + lhi))).to(logits.dtype)
    llo_t = torch.full_like(target, math.log(lo))
    lhi_t = torch.full_like(target, math.log(hi))
    for _ in range(iters):
        mid = 0.5 * (llo_t + lhi_t)
        above = entropy(logits * torch.exp(-mid).unsqueeze(-1)) > target
        lhi_t = torch.where(above, mid, lhi_t)
        llo_t = torch.where(above, llo_t, mid)
    return torch.exp(0.5 * (llo_t + lhi_t))


def aligned_temperatures(student: Tensor, teacher: Tensor, iters: int = 16) -> tuple[Tensor, Tensor]:
    """Per-sample ``(tau_teacher, tau_student)`` bringing both entropies to the mean of their T=1 values."""
    with torch.no_grad():
        stacked = torch.cat([teacher.detach(), student.detach()])
        h = entropy(stacked)
        half = teacher.shape[0]
        target = 0.5 * (h[:half] + h[half:])
        taus = find_temperature(stacked, torch.cat([target, target]), iters=iters)
    return taus[:half], taus[half:]


def aligned_kl(
    student: Tensor, teacher: Tensor, aligned: bool = True, iters: int = 16
) -> tuple[Tensor, Tensor, Tensor]:
    """Temperature-aligned KL(teacher || student), mean over the batch.

    Parameters
    ----------
    student, teacher : Tensor
        ``[B, C]`` logits; the gradient flows through ``student`` only.
    aligned : bool
        ``True``: per-sample temperatures matching both entropies to their T=1 mean (TKL);
        ``False``: plain KL at ``T = 1`` (ablation).
    iters : int
        Bisection steps.

    Returns
    -------
    (loss, tau_teacher, tau_student)
        Scalar loss and the ``[B]`` temperatures (ones when ``aligned=False``).
    """
    teacher = teacher.detach()
    if aligned:
        tau_t, tau_s = aligned_temperatures(student, teacher, iters)
    else:
        tau_t = tau_s = torch.ones(teacher.shape[0], dtype=teacher.dtype)
    logp_t = F.log_softmax(teacher / tau_t.unsqueeze(-1), dim=-1)
    logp_s = F.log_softmax(student / tau_s.unsqueeze(-1), dim=-1)
    loss = (logp_t.exp() * (logp_t - logp_s)).sum(dim=-1).mean()
    return loss, tau_t, tau_s


def project(g: Tensor, g_align: Tensor, lambda_proj: float = 1.0) -> tuple[Tensor, float, bool]:
    """ProGrad rule on one (flattened) gradient.

    Returns ``g - lambda <g, g_hat_a> g_hat_a`` when ``cos(g, g_align) < 0``, else ``g`` unchanged.

    Returns
    -------
    (g_new, cosine, fired)
        ``cosine`` is NaN when either gradient is zero (then nothing fires).
    """
    na = torch.linalg.vector_norm(g_align)
    ng = torch.linalg.vector_norm(g)
    if na.item() == 0.0 or ng.item() == 0.0:
        return g, float("nan"), False
    dot = torch.dot(g.reshape(-1), g_align.reshape(-1))
    cos = (dot / (na * ng)).item()
    if cos < 0.0:
        return g - (lambda_proj * dot / (na * na)) * g_align, cos, True
    return g, cos, False


def project_gradients(
    task: list[Tensor], align: list[Tensor], lambda_proj: float = 1.0, granularity: str = "global"
) -> tuple[list[Tensor], list[float], list[bool]]:
    """Project a list of per-tensor task gradients against the alignment gradients.

    Parameters
    ----------
    task, align : list of Tensor
        Gradients of ``L_task`` and ``L_align`` for the same parameters.
    lambda_proj : float
        Strength of the removal (1 = the paper's formula).
    granularity : {"global", "tensor"}
        One decision on the concatenated gradient, or one per tensor (reference code).

    Returns
    -------
    (grads, cosines, fired)
        New gradients, and one cosine / fired flag per decision.
    """
    if granularity == "global":
        flat_g = torch.cat([t.reshape(-1) for t in task])
        flat_a = torch.cat([a.reshape(-1) for a in align])
        new, cos, fired = project(flat_g, flat_a, lambda_proj)
        if fired:
            out, start = [], 0
            for t in task:
                out.append(new[start:start + t.numel()].view_as(t))
                start += t.numel()
            return out, [cos], [True]
        return list(task), [cos], [False]
    if granularity == "tensor":
        results = [project(t, a, lambda_proj) for t, a in zip(task, align, strict=True)]
        return [r[0] for r in results], [r[1] for r in results], [r[2] for r in results]
    raise ValueError(f"projection granularity must be 'global' or 'tensor', got {granularity!r}")


class SGD:
    """Minimal SGD taking the gradients as an argument (no ``.grad`` bookkeeping, no torch.optim import).

    Same update as ``torch.optim.SGD(params, lr, momentum, weight_decay=wd)`` with dampening 0
    and no Nesterov: ``d = g + wd * p``; ``buf = d`` on the first step, else ``momentum * buf + d``;
    ``p -= lr * buf``. Weight decay is therefore applied after any projection of ``g``.
    """

    def __init__(self, params: list[nn.Parameter], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.buffers: list[Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self, grads: list[Tensor]) -> None:
        """Apply one update with ``grads`` (one per parameter, same order)."""
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            d = g.add(p, alpha=self.weight_decay) if self.weight_decay else g
            if self.momentum:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = d.clone()
                else:
                    buf.mul_(self.momentum).add_(d)
                d = buf
            p.add_(d, alpha=-self.lr)


def make_optimizer(params: list[nn.Parameter], lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> SGD:
    """Fresh SGD for one client-round (weight decay is applied inside ``step()``)."""
    return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffled index batches covering ``0..n-1`` once (the last batch may be smaller)."""
    perm = torch.randperm(n, generator=generator)
    return list(perm.split(batch_size))


def logit_gradients(
    logits: Tensor, labels: Tensor, teacher: Tensor | None = None, aligned: bool = True,
    la_bias: Tensor | None = None, iters: int = 16,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Losses and their gradients with respect to the student logits, in closed form (no autograd).

    ``L_task = CE(logits + la_bias, y)`` has gradient ``(softmax - onehot) / B``; the alignment
    loss ``KL(p_t || softmax(logits / tau_s))`` has gradient ``(p_s - p_t) / (tau_s B)`` with the
    temperatures held constant. Both agree with autograd on :func:`aligned_kl` (tested).

    Returns
    -------
    (task_loss, task_grad, align_loss, align_grad)
        The alignment entries are ``None`` when ``teacher`` is ``None``.
    """
    with torch.no_grad():
        f = logits.detach()
        b = f.shape[0]
        rows = torch.arange(b, device=f.device)
        logp = F.log_softmax(f + la_bias if la_bias is not None else f, dim=-1)
        task_loss = -logp[rows, labels].mean()
        g_task = logp.exp()
        g_task[rows, labels] -= 1.0
        g_task /= b
        if teacher is None:
            return task_loss, g_task, None, None
        if aligned:
            tau_t, tau_s = aligned_temperatures(f, teacher, iters)
            tau_t, tau_s = tau_t.unsqueeze(-1), tau_s.unsqueeze(-1)
            logp_t = F.log_softmax(teacher / tau_t, dim=-1)
            logp_s = F.log_softmax(f / tau_s, dim=-1)
        else:
            tau_s = torch.ones(b, 1, dtype=f.dtype, device=f.device)
            logp_t = F.log_softmax(teacher, dim=-1)
            logp_s = F.log_softmax(f, dim=-1)
        p_t = logp_t.exp()
        align_loss = (p_t * (logp_t - logp_s)).sum(dim=-1).mean()
        g_align = (logp_s.exp() - p_t) / (tau_s * b)
    return task_loss, g_task, align_loss, g_align


def local_train(
    peft: nn.Module,
    features: Tensor,
    labels: Tensor,
    teacher_logits: Tensor | None,
    config: Any,
    generator: torch.Generator,
    mode: str = "purify",
    class_prior: Tensor | None = None,
) -> dict[str, float]:
    """Local epoch(s) of the shared PEFT on one client (stage 1), in place.

    Per step the student logits are computed once; the task and alignment gradients with respect
    to the logits are formed in closed form (:func:`logit_gradients`) and pulled back to the
    trainable tensors in one batched pass (:meth:`PEFTModule.forward_with_pullback`), then projected
    and applied by a fresh SGD.

    Parameters
    ----------
    peft : PEFTModule
        Loaded with the current global state; trained in place.
    features, labels : Tensor
        The client's cached normalised image features ``[n, D]`` and labels ``[n]``.
    teacher_logits : Tensor, optional
        Zero-shot logits ``[n, C]``; needed by ``purify`` / ``purify-kl`` (and ``track_cos``).
    config : RunConfig
        Uses ``lr``, ``momentum``, ``weight_decay``, ``batch_size``, ``local_epochs``,
        ``projection``, ``lambda_proj``, ``prox_mu``, ``la_tau`` and ``extra["track_cos"]``
        (compute the task/alignment cosine in non-purified modes too).
    generator : torch.Generator
        Source of the batch order.
    mode : {"ce", "prox", "la", "purify", "purify-kl"}
        Plain CE (FedAvg / no-projection ablation), FedProx, logit-adjusted CE, purified CE with
        the TKL, purified CE with the plain KL at T=1.
    class_prior : Tensor, optional
        Class prior ``[C]`` for ``la`` (the global long-tailed prior in the simulator); the
        client's own label frequencies when omitted.

    Returns
    -------
    dict
        ``steps``, ``decisions``, ``projected`` (count), ``cos_sum``, ``cos_count``,
        ``task_loss``, ``align_loss`` (means), ``projected_share``, ``mean_cos``.
    """
    if mode not in STAGE1_MODES:
        raise ValueError(f"unknown stage-1 mode {mode!r}; valid: {list(STAGE1_MODES)}")
    extra = dict(getattr(config, "extra", {}) or {})
    purify = mode in ("purify", "purify-kl")
    track = purify or bool(extra.get("track_cos", False))
    if track and teacher_logits is None:
        raise ValueError(f"mode {mode!r} needs teacher_logits")
    params = [p for p in peft.parameters() if p.requires_grad]
    opt = make_optimizer(params, config.lr, config.momentum, config.weight_decay)
    anchor = [p.detach().clone() for p in params] if mode == "prox" else None
    la_bias = None
    if mode == "la":
        num_classes = teacher_logits.shape[1] if teacher_logits is not None else int(labels.max()) + 1
        prior = (class_prior if class_prior is not None
                 else torch.bincount(labels, minlength=num_classes).float())
        prior = prior.float() / prior.sum()
        la_bias = config.la_tau * torch.log(prior.clamp_min(1e-12))
    iters = int(extra.get("bisection_iters", 16))
    tele = {"steps": 0, "decisions": 0, "projected": 0, "cos_sum": 0.0, "cos_count": 0,
            "task_loss": 0.0, "align_loss": 0.0}
    peft.train()
    for _ in range(int(config.local_epochs)):
        for idx in batches(features.shape[0], int(config.batch_size), generator):
            logits, pullback = peft.forward_with_pullback(features[idx])
            task, g_task, align, g_align = logit_gradients(
                logits, labels[idx], teacher_logits[idx] if track else None, mode != "purify-kl", la_bias, iters)
            if track:
                both = pullback(torch.stack([g_task, g_align]))
                grads, aligns = [g[0] for g in both], [g[1] for g in both]
            else:
                grads = [g[0] for g in pullback(g_task.unsqueeze(0))]
            if anchor is not None:
                grads = [g + config.prox_mu * (p.detach() - a) for g, p, a in zip(grads, params, anchor, strict=True)]
                task = task + 0.5 * config.prox_mu * sum(((p.detach() - a) ** 2).sum()
                                                         for p, a in zip(params, anchor, strict=True))
            if track:
                lam = config.lambda_proj if purify else 0.0
                projected, cosines, fired = project_gradients(grads, aligns, lam, config.projection)
                if purify:
                    grads = projected
                else:
                    fired = [False] * len(cosines)
                tele["align_loss"] += float(align)
                tele["decisions"] += len(fired)
                tele["projected"] += int(sum(fired))
                finite = [c for c in cosines if not math.isnan(c)]
                tele["cos_sum"] += float(sum(finite))
                tele["cos_count"] += len(finite)
            opt.step(grads)
            tele["steps"] += 1
            tele["task_loss"] += float(task)
    return finish_telemetry(tele)


def finish_telemetry(tele: dict[str, float]) -> dict[str, float]:
    """Turn summed counters into means (``projected_share``, ``mean_cos``, mean losses)."""
    out = dict(tele)
    steps = max(tele["steps"], 1)
    out["task_loss"] = tele["task_loss"] / steps
    out["align_loss"] = tele["align_loss"] / steps
    out["projected_share"] = tele["projected"] / tele["decisions"] if tele["decisions"] else float("nan")
    out["mean_cos"] = tele["cos_sum"] / tele["cos_count"] if tele["cos_count"] else float("nan")
    return out


def merge_telemetry(items: list[dict[str, float]]) -> dict[str, float]:
    """Combine the telemetry of several clients of one round (counts summed, means step-weighted)."""
    if not items:
        return finish_telemetry({"steps": 0, "decisions": 0, "projected": 0, "cos_sum": 0.0, "cos_count": 0,
                                 "task_loss": 0.0, "align_loss": 0.0})
    total = {k: sum(float(t[k]) for t in items) for k in ("steps", "decisions", "projected", "cos_sum",
                                                           "cos_count")}
    total["task_loss"] = sum(t["task_loss"] * t["steps"] for t in items)
    total["align_loss"] = sum(t["align_loss"] * t["steps"] for t in items)
    return finish_telemetry(total)
