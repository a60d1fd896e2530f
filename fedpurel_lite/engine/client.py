"""What one client does in a round, shared by the simulator and the Flower ClientApp.

A client holds its cached training features, labels and zero-shot (teacher) logits, and its test
split. In a round it may

1. train the shared PEFT from the global state (stage 1, :func:`train_shared`),
2. train its private personal branch against the frozen new global model (stage 2,
   :func:`train_private`), and
3. predict its test split with the global and the personal model (:func:`predict_split`).

Every step draws its batches from a generator derived from ``(seed, round, client, stage)``, so
the same client gives the same numbers whether the simulator or a Flower node runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.bank import model_inputs
from ..data.partition import Federation
from ..errors import NonFiniteError
from ..methods import Method
from ..peft import PEFTModule
from .finite import check_tensors, located
from .local import local_train
from .personalize import load_state, module_state, predict_personal, start_state, train_personal

if TYPE_CHECKING:
    from ..config import RunConfig


def client_generator(seed: int, round_idx: int, client: int, stage: int) -> torch.Generator:
    """The torch generator of one client-round-stage, derived from ``(seed, round, client, stage)``."""
    state = np.random.SeedSequence([int(seed), int(round_idx), int(client), int(stage)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass
class ClientData:
    """One client's data (cached features or cached vision tokens).

    Attributes
    ----------
    client_id : int
        Partition id ``k``.
    x, y : Tensor
        Training inputs of the PEFT (L2-normalised features ``[n, D]``, or vision tokens
        ``[n, tokens, width]``) and labels ``[n]``.
    z : Tensor
        Zero-shot (teacher) logits of the training features ``[n, C]``.
    x_test : Tensor
        Test-split inputs (as ``x``).
    y_test : numpy.ndarray
        Test-split labels ``[m]``.
    """

    client_id: int
    x: Tensor
    y: Tensor
    z: Tensor
    x_test: Tensor
    y_test: np.ndarray

    def to(self, device: torch.device | str) -> ClientData:
        """A copy with the tensors on ``device`` (the labels of the test split stay a NumPy array)."""
        return ClientData(self.client_id, self.x.to(device), self.y.to(device), self.z.to(device),
                          self.x_test.to(device), self.y_test)

    @property
    def n(self) -> int:
        """Training samples (the FedAvg weight)."""
        return int(self.y.numel())

    def to_tensors(self) -> dict[str, Tensor]:
        """Named tensors of the client's data (for a safetensors file)."""
        return {"x": self.x.contiguous(), "y": self.y.contiguous(), "z": self.z.contiguous(),
                "x_test": self.x_test.contiguous(), "y_test": torch.as_tensor(self.y_test).contiguous(),
                "client_id": torch.tensor([self.client_id])}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor]) -> ClientData:
        """Inverse of :meth:`to_tensors`."""
        return cls(int(t["client_id"][0]), t["x"], t["y"], t["z"], t["x_test"], t["y_test"].numpy())


def make_clients(bank: Any, fed: Federation, device: torch.device | str = "cpu") -> list[ClientData]:
    """Every client's :class:`ClientData` from a bank and a federation.

    ``x`` and ``x_test`` are what the PEFT reads (:func:`~fedpurel_lite.data.bank.model_inputs`:
    cached features, or vision tokens of a TokenBank); the teacher logits always come from the
    cached final features (zero-shot CLIP).
    """
    feats = torch.as_tensor(bank.train_features).float()
    x_train = torch.as_tensor(model_inputs(bank, "train")).float()
    y_train = torch.as_tensor(np.asarray(bank.train_labels), dtype=torch.long)
    x_test = torch.as_tensor(model_inputs(bank, "test")).float()
    y_test = np.asarray(bank.test_labels)
    teacher = torch.as_tensor(bank.text_features).float().to(device).t() * float(bank.logit_scale)
    out = []
    for k in range(fed.num_clients):
        idx = torch.as_tensor(fed.client_train[k], dtype=torch.long)
        tidx = torch.as_tensor(fed.client_test[k], dtype=torch.long)
        out.append(ClientData(k, x_train[idx].to(device), y_train[idx].to(device), feats[idx].to(device) @ teacher,
                              x_test[tidx].to(device), y_test[fed.client_test[k]]))
    return out


def _personal_kind(method: Method) -> str:
    """The method's personalization kind (a method without one has no personal model to train or predict)."""
    if method.personal is None:
        raise ValueError(f"method {method.name!r} has no personal model")
    return method.personal


def train_shared(peft: PEFTModule, global_state: dict[str, Tensor], data: ClientData, config: RunConfig,
                 method: Method, round_idx: int, prior: Tensor | None) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Stage 1: load the global state, run the method's local training; returns (state, telemetry).

    Raises
    ------
    NonFiniteError
        A loss, gradient or the returned state is not finite (naming the round, the client and the
        setting most likely at fault).
    """
    if method.stage1 is None:
        raise ValueError(f"method {method.name!r} trains nothing in stage 1")
    peft.load_shared_state(global_state)
    generator = client_generator(config.run.seed, round_idx, data.client_id, 1)
    try:
        tele = local_train(peft, data.x, data.y, data.z, config, generator, method.stage1, prior)
        state = peft.shared_state()
        check_tensors(state, "the trained state's tensor")
    except NonFiniteError as exc:
        raise located(exc, round_idx, data.client_id, 1, config, method.stage1) from None
    return state, tele


def train_private(personal: nn.Module, peft: PEFTModule, previous: dict[str, Tensor] | None,
                  initial_state: dict[str, Tensor], data: ClientData, config: RunConfig, method: Method,
                  round_idx: int) -> tuple[dict[str, Tensor], float]:
    """Stage 2: train the personal branch against the frozen global ``peft``; returns (state, loss).

    Raises
    ------
    NonFiniteError
        A loss, gradient or the returned state is not finite (naming the round, the client and the
        setting most likely at fault).
    """
    kind = _personal_kind(method)
    load_state(personal, start_state(kind, previous, peft, initial_state, config))
    try:
        out = train_personal(kind, personal, peft, data.x, data.y, config,
                             client_generator(config.run.seed, round_idx, data.client_id, 2))
        state = module_state(personal)
        check_tensors(state, "the personal state's tensor")
    except NonFiniteError as exc:
        raise located(exc, round_idx, data.client_id, 2, config, method.stage1, method.personal) from None
    return state, float(out["loss"])


@torch.no_grad()
def predict_private(personal: nn.Module, peft: PEFTModule, state: dict[str, Tensor] | None,
                    initial_state: dict[str, Tensor], x: Tensor, global_logits: Tensor, config: RunConfig,
                    method: Method) -> np.ndarray:
    """Personal-model predictions on ``x`` (a client without a stored state uses its start state)."""
    kind = _personal_kind(method)
    load_state(personal, state if state is not None else start_state(kind, None, peft, initial_state, config))
    logits = predict_personal(kind, personal, peft, x, global_logits, config, config.run.eval_batch_size)
    return logits.argmax(dim=1).cpu().numpy()
