"""Run a FedPuReL federation on Flower's simulation engine: ``python -m fedpurel_lite flower``.

``python -m fedpurel_lite flower deploy`` runs it on real processes instead (:mod:`.deploy`).

:func:`run_flower` starts Flower's Simulation Runtime in this process (the ServerApp in a thread,
ClientApps in Ray workers, one virtual SuperNode per client, each given its ``partition-id``),
returns the same :class:`~fedpurel_lite.engine.results.RunResult` as the simulator (plus the failures it
saw), and shuts Ray down again, so no background process outlives the call.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..engine.results import RunResult, federation_info, summarise
from . import require_flwr
from .client_app import FaultHook, build_client_app
from .server_app import build_server_app
from .strategy import FlowerRunError


@dataclass
class FlowerResult:
    """A Flower run: the simulator-shaped result and every client failure (round, stage, partition, reason)."""

    result: RunResult
    failures: list[dict[str, Any]] = field(default_factory=list)


def run_flower(config: RunConfig, min_replies: int = 1, num_cpus: int = 2, fault: FaultHook | None = None,
               verbose: bool = False) -> FlowerResult:
    """Run ``config`` as a Flower simulation with ``federation.num_clients`` virtual SuperNodes.

    Parameters
    ----------
    config : RunConfig
        The protocol (as for :func:`fedpurel_lite.engine.simulate.run`).
    min_replies : int
        Successful client replies needed in every step; fewer stop the run with :class:`FlowerRunError`.
    num_cpus : int
        CPUs given to Ray (one ClientApp per CPU at a time).
    fault : callable, optional
        ``fault(partition_id, server_round, stage)``, called before each client step (failure tests).
    verbose : bool
        Keep Flower's and Ray's INFO logs.
    """
    require_flwr()
    import ray
    from flwr.simulation import run_simulation

    if config.world.cache_dir:  # Ray workers' working directory differs from ours
        config = config.with_overrides({"world.cache_dir": str(Path(config.world.cache_dir).resolve())})
    sink: dict[str, Any] = {}
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": int(num_cpus), "num_gpus": 0, "include_dashboard": False,
                             "log_to_driver": verbose, "logging_level": "info" if verbose else "error"}}
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    try:
        _start_ray(ray, backend["init_args"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            run_simulation(build_server_app(config, min_replies, sink), build_client_app(config, fault),
                           num_supernodes=config.federation.num_clients, backend_config=backend,
                           verbose_logging=verbose)
    except Exception as exc:
        if isinstance(sink.get("error"), Exception):
            raise sink["error"] from None
        raise FlowerRunError(f"the Flower simulation failed: {exc}") from exc
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if "error" in sink:
        raise sink["error"]
    if "history" not in sink:
        raise FlowerRunError("the Flower simulation ended without a result (see the log above)")
    info = {**federation_info(sink["federation"]), "engine": "flower"}
    result = RunResult(sink["config"].method.name, sink["config"].to_dict(), sink["history"],
                       summarise(sink["history"]), info, {f"global/{k}": v for k, v in sink["final"].items()})
    return FlowerResult(result, sink["failures"])


def _start_ray(ray: Any, init_args: dict[str, Any], attempts: int = 3) -> None:
    """Start Ray before Flower does (Flower reuses it), retrying: on a loaded machine Ray's node can miss
    its fixed 30 s start-up window."""
    import os
    import sys

    pythonpath = os.pathsep.join([*sys.path, os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
    os.environ["PYTHONPATH"] = pythonpath  # Ray workers must import this package as the driver does
    for attempt in range(1, attempts + 1):
        try:
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)
            return
        except Exception:
            if ray.is_initialized():
                ray.shutdown()
            if attempt == attempts:
                raise


#: ``python -m fedpurel_lite flower <mode> ...``: modes with their own options
MODES = {"deploy": "fedpurel_lite.flower.deploy", "certs": "fedpurel_lite.flower.certs"}


def main(argv: list[str] | None = None) -> int:
    """``python -m fedpurel_lite flower --config configs/embedded.toml [--set k=v ...]``.

    ``flower deploy ...`` (real SuperLink and SuperNode processes on this machine, :mod:`.deploy`) and
    ``flower certs DIR`` (TLS and SuperNode credentials, :mod:`.certs`) have options of their own.
    """
    import importlib
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in MODES:
        return int(importlib.import_module(MODES[argv[0]]).main(argv[1:]) or 0)
    from ..cli.run import load_config
    from ..cli.run import parser as cli_parser

    parser = cli_parser("flower", __doc__ or "")
    parser.add_argument("--min-replies", type=int, default=1, help="successful replies needed per step")
    parser.add_argument("--out", default=None, help="write result.json + final_state.safetensors here")
    parser.add_argument("--verbose", action="store_true", help="Flower/Ray INFO logs")
    parser.add_argument("--export-clients", default=None, metavar="DIR",
                        help="write one client_<k>.safetensors per client (for deployed nodes) and exit")
    args = parser.parse_args(argv)
    config = load_config(args)
    from contextlib import nullcontext

    from ..engine.outlock import check_unlocked, output_lock
    from ..engine.preflight import check_folder_destination, preflight
    from ..engine.results import ANALYSIS, FINAL_STATE, RESULT_JSON

    if args.out:
        check_folder_destination(args.out, "--out", files=(RESULT_JSON, FINAL_STATE, ANALYSIS))
        check_unlocked(args.out)
    outputs = [("--export-clients", args.export_clients)] if args.export_clients else []
    preflight(config, outputs=outputs + ([("--out", args.out)] if args.out else []))
    from .server_app import check_servable

    check_servable(config)
    if args.export_clients:
        from .client_app import export_client_data

        paths = export_client_data(config, args.export_clients)
        print(f"wrote {len(paths)} client files to {args.export_clients}")
        return 0
    with output_lock(args.out, "--out", f"flower run {config.method.name}") if args.out else nullcontext():
        out = run_flower(config, args.min_replies, verbose=args.verbose)
        from ..cli.run import print_results

        print_results({out.result.method: out.result})
        for f in out.failures:
            print(f"failure: round {f['round']} {f['stage']} client {f['partition']}: {f['reason']}")
        if args.out:
            print(f"wrote {out.result.save(args.out)}")
    return 0
