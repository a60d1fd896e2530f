"""The arrays of the bias-transfer analysis, computed from a run's final state, and batched global prediction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..data.partition import count_matrix
from ..peft import PEFTModule
from .metrics import per_class_accuracy
from .personalize import load_state, predict_personal, start_state
from .workers import ClientPool

if TYPE_CHECKING:
    from .simulate import RoundState, Slot


@torch.no_grad()
def predict_global(peft: PEFTModule, x: Tensor, batch_size: int, pool: ClientPool[Any]) -> Tensor:
    """``peft.predict_logits(x, batch_size)``, its batches spread over the pool's threads (bit-identical)."""
    if pool.n == 1:
        return peft.predict_logits(x, batch_size)
    cls = peft.class_features()
    chunks = [x[i:i + batch_size] for i in range(0, x.shape[0], batch_size)]
    out = pool.map(lambda slot, chunk: peft.predict_logits(chunk, batch_size, cls), chunks)
    return torch.cat(out) if out else peft.predict_logits(x, batch_size, cls)


@torch.no_grad()
def final_analysis(state: RoundState, bank: Any) -> dict[str, Tensor]:
    """The arrays of the bias-transfer analysis, from a run's final ``state`` (``RunResult.analysis``).

    On the balanced test set, for the global model (``gm_``) and zero-shot CLIP (``zs_``: the
    bank's text features at its logit scale, the teacher of the alignment loss): ``pred``,
    ``confidence`` (max softmax probability) and ``correct`` per sample; ``zs_per_class``
    (zero-shot per-class accuracy, %). On the client test splits, concatenated in client order
    (``client_test_index`` into the test set; client ``k`` from ``client_test_offsets[k]`` to ``[k + 1]``),
    the personal models' ``pm_pred`` / ``pm_confidence`` / ``pm_correct`` (the global model's for
    a method without a personal stage). ``test_labels`` and ``client_counts`` (client × class
    training images) complete it. A pure function of the final state, so a resumed run gives the
    same arrays.
    """
    config, method, peft, fed, x_test = state.config, state.method, state.peft, state.federation, state.x_test
    y_test = torch.as_tensor(np.asarray(bank.test_labels), dtype=torch.long)
    text = torch.as_tensor(bank.text_features).float().to(x_test.device)
    logits = predict_global(peft, x_test, config.run.eval_batch_size, state.pool)
    feats = torch.as_tensor(bank.test_features).float().to(x_test.device)
    zs_logits = torch.cat([feats[i:i + config.run.eval_batch_size] @ text.t() * float(bank.logit_scale)
                           for i in range(0, feats.shape[0], config.run.eval_batch_size)])
    index = [torch.as_tensor(t, dtype=torch.long) for t in fed.client_test]

    def personal(slot: Slot, k: int) -> Tensor:
        idx = index[k].to(x_test.device)
        kind, module = method.personal, slot[1]
        if kind is None or module is None:
            return logits[idx]
        own = state.personal_states.get(k)
        load_state(module, own if own is not None else start_state(kind, None, peft, state.initial_state, config))
        return predict_personal(kind, module, peft, x_test[idx], logits[idx], config, config.run.eval_batch_size)

    pm_logits = torch.cat(state.pool.map(personal, range(fed.num_clients)))
    flat = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)
    out = {"test_labels": y_test.int(), "client_test_index": flat.int(),
           "client_test_offsets": torch.as_tensor(np.cumsum([0] + [len(t) for t in fed.client_test]), dtype=torch.long),
           "client_counts": torch.as_tensor(count_matrix(fed.client_train, np.asarray(bank.train_labels),
                                                         fed.num_classes))}
    for prefix, lg, y in (("gm", logits, y_test), ("zs", zs_logits, y_test), ("pm", pm_logits, y_test[flat])):
        lg = lg.float().cpu()
        pred, conf = lg.argmax(dim=1), torch.softmax(lg, dim=1).amax(dim=1)
        out.update({f"{prefix}_pred": pred.int(), f"{prefix}_confidence": conf, f"{prefix}_correct": pred == y})
    zs_acc = per_class_accuracy(y_test.numpy(), out["zs_pred"].numpy(), fed.num_classes) * 100.0
    out["zs_per_class"] = torch.as_tensor(zs_acc, dtype=torch.float64)
    return {k: v.contiguous() for k, v in out.items()}
