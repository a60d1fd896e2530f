"""Local training of the shared PEFT (stage 1): the local epoch loop around the objective plugins' hooks.

An objective is a stage-1 plugin registered in :data:`~fedpurel_lite.purify.OBJECTIVES` (re-exported
here): plain CE (FedAvg, and PromptFL with prompts), FedProx's proximal term, logit-adjusted CE,
and FedPuReL's CE purified against the temperature-aligned KL to the zero-shot teacher (or the
plain KL at ``T = 1`` as an ablation). The loop is written once and calls the objective's hooks
(``begin``, ``regularize``, ``combine``); no objective is named here. :func:`local_train` runs the
local epoch(s) of one client with a fresh SGD optimizer (momentum, weight decay applied inside
``step()``, i.e. after the projection), fp32, and returns telemetry; a non-finite loss stops it with a
:class:`~fedpurel_lite.errors.NonFiniteError` before its step is applied (:mod:`~fedpurel_lite.engine.finite`).
It is a pure function of the module, tensors, config
and generator, so the simulator and a Flower ClientApp share it.

``stage1.optimizer_scope = "shared"`` instead keeps one SGD state (the momentum buffers) with
the module copy that trains and carries it from client to client and round to round, as one
optimizer object that is never rebuilt does. The state then depends on the order the clients are
trained in, so the configuration requires ``run.workers = 1``; it is not part of the round
checkpoints, so a resumed run refuses it. ``stage1.drop_last`` drops a client's last partial
batch of every epoch when it holds at least one full batch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..purify import OBJECTIVES, Objective, logit_gradients
from .finite import check_loss

__all__ = ["OBJECTIVES", "SGD", "Objective", "batches", "finish_telemetry", "local_train", "make_optimizer",
           "merge_telemetry", "stage1_optimizer"]

if TYPE_CHECKING:
    from ..config import RunConfig, Stage1Cfg
    from ..peft import PEFTModule


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


#: attribute of the training module copy that holds the shared SGD state (``optimizer_scope="shared"``)
SHARED_STATE_ATTR = "_stage1_shared_sgd_buffers"


def stage1_optimizer(peft: nn.Module, params: list[nn.Parameter], stage1: Stage1Cfg) -> SGD:
    """The stage-1 SGD of one client-round: fresh, or continuing the module's shared state.

    Parameters
    ----------
    peft : nn.Module
        The module copy that trains (holds the shared state between calls).
    params : list of nn.Parameter
        Its trainable tensors, in order.
    stage1 : Stage1Cfg
        ``lr``, ``momentum``, ``weight_decay`` and ``optimizer_scope``.
    """
    opt = make_optimizer(params, stage1.lr, stage1.momentum, stage1.weight_decay)
    if stage1.optimizer_scope == "shared":
        buffers = getattr(peft, SHARED_STATE_ATTR, None)
        if buffers is not None and len(buffers) == len(params):
            opt.buffers = buffers
        setattr(peft, SHARED_STATE_ATTR, opt.buffers)  # the same list object: updated in place by step()
    return opt


def batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = False) -> list[Tensor]:
    """Shuffled index batches covering ``0..n-1`` once.

    The last batch may be smaller; with ``drop_last`` it is dropped when at least one full batch
    remains (so a client smaller than a batch still trains on one batch).
    """
    perm = torch.randperm(n, generator=generator)
    out: list[Tensor] = list(perm.split(batch_size))  # type: ignore[no-untyped-call]
    if drop_last and n >= batch_size and n % batch_size:
        out.pop()
    return out


def local_train(
    peft: PEFTModule,
    features: Tensor,
    labels: Tensor,
    teacher_logits: Tensor | None,
    config: RunConfig,
    generator: torch.Generator,
    objective: str,
    class_prior: Tensor | None = None,
) -> dict[str, float]:
    """Local epoch(s) of the shared PEFT on one client (stage 1), in place.

    Per step the student logits are computed once; the task and alignment gradients with respect
    to the logits are formed in closed form (:func:`logit_gradients`) and pulled back to the
    trainable tensors in one batched pass (:meth:`PEFTModule.forward_with_pullback`), then projected
    and applied by SGD (fresh, or the module's shared state: see the module doc).

    Parameters
    ----------
    peft : PEFTModule
        Loaded with the current global state; trained in place.
    features, labels : Tensor
        The client's cached normalised image features ``[n, D]`` and labels ``[n]``.
    teacher_logits : Tensor, optional
        Zero-shot logits ``[n, C]``; needed by ``purify`` / ``purify-kl`` (and ``track_cos``).
    config : RunConfig
        Its ``stage1`` section (``optimizer_scope``, ``drop_last`` included), ``purification``
        (``projection``, ``lambda_proj``, ``bisection_iters``, ``kl_log``, ``track_cos``: the
        task/alignment cosine also when not purifying) and
        the objective's own section (``objective.prox.mu``, ``objective.la.tau``).
    generator : torch.Generator
        Source of the batch order.
    objective : str
        A name in :data:`OBJECTIVES` (the method's ``stage1``): plain CE (FedAvg / no-projection ablation), FedProx,
        logit-adjusted CE, purified CE with the TKL, purified CE with the plain KL at T=1.
    class_prior : Tensor, optional
        Class prior ``[C]`` for ``la`` (the global long-tailed prior in the simulator); the
        client's own label frequencies when omitted.

    Returns
    -------
    dict
        ``steps``, ``decisions``, ``projected`` (count), ``cos_sum``, ``cos_count``,
        ``task_loss``, ``align_loss`` (means), ``projected_share``, ``mean_cos``.
    """
    obj = OBJECTIVES.get(objective)
    s1, pc = config.stage1, config.purification
    track = obj.tracks(config)
    if track and teacher_logits is None:
        raise ValueError(f"objective {objective!r} needs teacher_logits")
    params = [p for p in peft.parameters() if p.requires_grad]
    opt = stage1_optimizer(peft, params, s1)
    state = obj.begin(params, labels, teacher_logits, class_prior, config)
    iters = pc.bisection_iters
    tele: dict[str, float] = {"steps": 0, "decisions": 0, "projected": 0, "cos_sum": 0.0, "cos_count": 0,
                              "task_loss": 0.0, "align_loss": 0.0}
    peft.train()
    for _ in range(s1.local_epochs):
        for idx in batches(features.shape[0], s1.batch_size, generator, s1.drop_last):
            logits, pullback = peft.forward_with_pullback(features[idx])
            task, g_task, align, g_align = logit_gradients(
                logits, labels[idx], teacher_logits[idx] if track and teacher_logits is not None else None,
                obj.aligned, state.logit_bias, iters, clamped=pc.kl_log == "clamped")
            aligns: list[Tensor] = []
            if track and g_align is not None:
                both = pullback(torch.stack([g_task, g_align]))
                grads, aligns = [g[0] for g in both], [g[1] for g in both]
            else:
                grads = [g[0] for g in pullback(g_task.unsqueeze(0))]
            grads, task = obj.regularize(grads, task, params, state, config)
            if track and align is not None:
                grads, cosines, fired = obj.combine(grads, aligns, config)
                align_value = float(align)
                check_loss(align_value, int(tele["steps"]) + 1)
                tele["align_loss"] += align_value
                tele["decisions"] += len(fired)
                tele["projected"] += int(sum(fired))
                finite = [c for c in cosines if not math.isnan(c)]
                tele["cos_sum"] += float(sum(finite))
                tele["cos_count"] += len(finite)
            loss = float(task)
            check_loss(loss, int(tele["steps"]) + 1)
            opt.step(grads)
            tele["steps"] += 1
            tele["task_loss"] += loss
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
