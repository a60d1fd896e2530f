"""The small core: FedPuReL's math on plain tensors and ``nn.Module``s (imports only torch and numpy)."""

from __future__ import annotations

from .residual import ResidualHead

__all__ = ["ResidualHead"]
