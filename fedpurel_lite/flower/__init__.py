"""FedPuReL on Flower: the same client and server steps as the simulator, on a real federated engine.

- :mod:`.client_app` -- the ClientApp: ``train`` runs stage 1 (purified local training of the shared
  PEFT), ``evaluate`` runs stage 2 (the private residual branch, kept in ``context.state`` and never
  sent) and reports the client's global and personal predictions on its test split;
- :mod:`.strategy` -- ``FedPuReLStrategy``: the toolkit's seeded client sampler, FedAvg over the shared
  tensors only (weighted by example counts), failure bookkeeping and a minimum of successful replies;
- :mod:`.server_app` -- the ServerApp: discovers the nodes' partitions, runs the strategy and evaluates
  the global model on the balanced test set;
- :mod:`.run` -- ``run_flower(config)`` and ``python -m fedpurel_lite flower``: a Flower simulation;
- :mod:`.deploy` -- ``python -m fedpurel_lite flower deploy``: a SuperLink and one SuperNode per client as
  real processes on 127.0.0.1 (TLS and SuperNode authentication by default), ``flwr run``, the result;
- :mod:`.certs` -- ``python -m fedpurel_lite flower certs DIR``: a local CA, the SuperLink's certificate
  and SuperNode key pairs;
- :mod:`.procs` -- the launcher's processes, started in their own sessions and stopped by PID.

Needs the ``flower`` extra (``pip install -e '.[flower]'``).
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no phoning home: this toolkit runs offline
# Flower 1.42's CLI module uses click helpers that click 8.2 deprecates; not ours to act on, and it would
# add two lines to every command's output
warnings.filterwarnings("ignore", message=r"'click\.utils\.get_\w+_stream' is deprecated",
                        category=DeprecationWarning)


def require_flwr() -> None:
    """Raise a clear ImportError when Flower is not installed."""
    try:
        import flwr  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the Flower layer needs the 'flower' extra: pip install -e '.[flower]' "
                          "(flwr[simulation]==1.42.0)") from exc
