"""Run a FedPuReL federation on Flower's Deployment Runtime, as real processes on this machine.

``python -m fedpurel_lite flower deploy --config configs/embedded.toml --out runs/deployed`` starts a
SuperLink and one SuperNode per client as separate OS processes on 127.0.0.1 (free ports chosen at
run time), gives every SuperNode only its own client's data file (:func:`.client_app.export_client_data`),
submits the Flower App in ``flower_app/`` with ``flwr run --stream``, prints its progress, and leaves
``result.json`` + ``final_state.safetensors`` (as :meth:`~fedpurel_lite.engine.results.RunResult.save`) and
``status.json`` in ``--out``; the logs of every process are in ``--out/deploy/logs``.

Secure by default: TLS with a local CA (:mod:`.certs`; ``--certs DIR`` reuses or fills DIR) and
SuperNode authentication (``flower-superlink --enable-supernode-auth``; each SuperNode's public key is
registered with ``flwr supernode register`` before it starts, so only registered SuperNodes can join).
``--insecure`` (no TLS, no authentication) only when asked for, with a warning.

The launcher stops exactly the processes it started and their descendants (by PID, see :mod:`.procs`)
when the run ends, fails, times out or is interrupted (Ctrl-C, SIGTERM). When the launcher itself is
killed (SIGKILL included), its watchdog process ends them (:mod:`.watchdog`).

``--out/deploy/launcher.json`` records the launcher (PID and start stamp) and every process of the
deployment; it is marked ``stopped`` when the launcher stops them. A second ``flower deploy`` into an
``--out`` whose launcher still runs is refused; into one whose launcher died it stops that
deployment's surviving processes (if any) and, as asked, continues the run from its saved rounds
(``--resume``: the ServerApp starts from ``result.json``, every SuperNode from its private branch saved
on its side) or starts over (``--fresh``); without either it names both in one ``error:`` line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from ..config import RunConfig
from ..engine.results import FINAL_STATE, RESULT_JSON, RUNTIME_KEYS, RunResult, atomic_write, config_differences
from ..errors import ConfigError
from .certs import CA_CERT, SERVER_CERT, SERVER_KEY, make_credentials, make_node_keys
from .procs import Managed, Proc, ProcessSet, free_port, port_open
from .run import FlowerResult
from .server_app import STATUS_JSON
from .strategy import FlowerRunError

APP_DIR = Path(__file__).resolve().parents[2] / "flower_app"
CONNECTION = "fedpurel"
_NOISE = re.compile(r"^(INFO|DEBUG|WARNING):flwr:")  # Flower prints its log records twice in the stream
LAUNCHER_JSON = "launcher.json"  # in OUT/deploy: the launcher and the deployment's processes


PORT_ATTEMPTS = 3  # a free port chosen here can be taken by another process before Flower binds it


def _port_clash(m: Managed) -> bool:
    """Whether process ``m`` ended because its port was taken (it is not running and its log says so)."""
    text = m.log_tail(60).lower()
    return not m.alive() and ("address already in use" in text or "failed to bind" in text)


def flower_bin(name: str) -> str:
    """The path of a Flower executable installed beside this Python (or the bare name)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


class Deployment:
    """A SuperLink and SuperNodes on 127.0.0.1 for ``config``; a context manager that stops them all.

    Parameters
    ----------
    config : RunConfig
        The protocol; one SuperNode per client (``federation.num_clients``).
    out : str or Path
        Result folder (``result.json``, ``status.json``); ``out/deploy`` holds logs, client files, homes.
    secure : bool
        TLS + SuperNode authentication (default); ``False`` runs everything with ``--insecure``.
    credentials : str or Path, optional
        Folder of :func:`.certs.make_credentials` (filled when it holds none); default ``out/deploy/credentials``.
    min_replies, step_timeout : int, float
        As for the ServerApp (successful replies needed per step, seconds a step waits for replies).
    echo : callable
        Where progress lines go (default: ``print``).
    resume : bool
        Continue the run saved in ``out`` (``result.json``; each SuperNode's private branch under
        ``out/deploy/clients``) instead of starting at round 0.
    """

    def __init__(self, config: RunConfig, out: str | Path, secure: bool = True, credentials: str | Path | None = None,
                 min_replies: int = 1, step_timeout: float = 900.0, echo: Callable[[str], None] = print,
                 resume: bool = False) -> None:
        if config.world.cache_dir:
            config = config.with_overrides({"world.cache_dir": str(Path(config.world.cache_dir).resolve())})
        self.config, self.out, self.secure, self.echo = config, Path(out).resolve(), secure, echo
        self.root = self.out / "deploy"
        self.creds = Path(credentials).resolve() if credentials else self.root / "credentials"
        self.min_replies, self.step_timeout = int(min_replies), float(step_timeout)
        self.procs = ProcessSet(watchdog_log=self.root / "logs" / "watchdog.log")
        self.resume = bool(resume)
        self.port = 0
        self.nodes: dict[str, Managed] = {}
        self._node_args: dict[str, tuple[Path, Path | None, bool, bool]] = {}
        self.reported: set[str] = set()
        if not secure:
            warnings.warn("insecure deployment: no TLS and no SuperNode authentication; any process that reaches "
                          "the SuperLink's port can join and read the traffic", UserWarning, stacklevel=2)

    # ------------------------------------------------------------------ set-up
    def env(self, home: str) -> dict[str, str]:
        """The environment of a Flower process: its own ``FLWR_HOME``, this Python's bin dir first on PATH."""
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[2])
        env.update(FLWR_HOME=str(self.root / "home" / home), FLWR_TELEMETRY_ENABLED="0", PYTHONUNBUFFERED="1",
                   PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
                   PYTHONPATH=os.pathsep.join([pkg_root, env.get("PYTHONPATH", "")]).strip(os.pathsep))
        return env

    def prepare(self) -> None:
        """Write the run's config, the per-client data files and (secure mode) the credentials."""
        from .client_app import export_client_data

        self.root.mkdir(parents=True, exist_ok=True)
        self.config.save(self.root / "config.toml")
        self.record()
        export_client_data(self.config, self.root / "clients")
        if self.secure:
            k = self.config.federation.num_clients
            if not (self.creds / CA_CERT).exists():
                make_credentials(self.creds, k)
                self.echo(f"deploy: wrote a local CA, the SuperLink certificate and {k} SuperNode keys to {self.creds}")
            missing = [f"supernode_{i}" for i in range(k) if not (self.creds / f"supernode_{i}").exists()]
            make_node_keys(self.creds, missing)

    def start_superlink(self, timeout: float = 60.0, attempts: int = PORT_ATTEMPTS) -> Managed:
        """Start the SuperLink (Fleet, Control and Runtime API on one free port) and wait until it listens.

        A port taken by another process between its choice and the bind is replaced by a new one
        (``attempts`` times in all).
        """
        for attempt in range(1, attempts + 1):
            try:
                return self._start_superlink(timeout)
            except FlowerRunError:
                if attempt == attempts or not _port_clash(self.procs.procs["superlink"]):
                    raise
                self.echo(f"deploy: port {self.port} was taken before the SuperLink bound it; trying another")
        raise AssertionError("unreachable")

    def _start_superlink(self, timeout: float) -> Managed:
        self.port = free_port()
        cmd = [flower_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
               "--disable-runtime-dependency-installation"]
        if self.secure:
            cmd += ["--ssl-ca-certfile", str(self.creds / CA_CERT), "--ssl-certfile", str(self.creds / SERVER_CERT),
                    "--ssl-keyfile", str(self.creds / SERVER_KEY), "--enable-supernode-auth"]
        else:
            cmd += ["--insecure"]
        link = self.procs.start("superlink", cmd, self.root / "logs" / "superlink.log", self.env("superlink"))
        self.record()
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if not link.alive() or time.monotonic() > deadline:
                raise FlowerRunError(f"the SuperLink did not start (pid {link.pid}):\n{link.log_tail()}")
            time.sleep(0.3)
        self._write_cli_config()
        self.echo(f"deploy: SuperLink pid {link.pid} on 127.0.0.1:{self.port} "
                  f"({'TLS + SuperNode authentication' if self.secure else 'INSECURE'})")
        return link

    def _write_cli_config(self) -> None:
        conn: dict[str, Any] = {"address": f"127.0.0.1:{self.port}"}
        if self.secure:
            conn["root-certificates"] = str(self.creds / CA_CERT)
        else:
            conn["insecure"] = True
        home = self.root / "home" / "cli"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI against this deployment's SuperLink (bounded in time, watched)."""
        cmd = [flower_bin("flwr"), *args]
        with subprocess.Popen(cmd, env=self.env("cli"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, start_new_session=True) as proc:
            self.procs.adopt(proc.pid)
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def register(self, public_keys: list[Path], timeout: float = 120.0) -> None:
        """Register SuperNode public keys with the SuperLink (``flwr supernode register``), in parallel."""
        cmds = [[flower_bin("flwr"), "supernode", "register", str(p), CONNECTION, "--format", "json"]
                for p in public_keys]
        running = [subprocess.Popen(c, env=self.env("cli"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, stdin=subprocess.DEVNULL, start_new_session=True) for c in cmds]
        for proc in running:
            self.procs.adopt(proc.pid)
        deadline = time.monotonic() + timeout
        errors = []
        for key, proc in zip(public_keys, running, strict=True):
            try:
                text, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                text, _ = proc.communicate()
            if proc.returncode != 0 or '"success": true' not in text:
                errors.append(f"{key.name}: {text.strip()[-300:]}")
        if errors:
            raise FlowerRunError("could not register SuperNode keys: " + "; ".join(errors))
        self.echo(f"deploy: registered {len(public_keys)} SuperNode key(s)")

    def start_supernode(self, name: str, data: Path, key: Path | None = None, with_ca: bool = True,
                        watch: bool = True) -> Managed:
        """Start one SuperNode holding only the data file ``data`` (secure mode: with private key ``key``).

        ``with_ca=False`` leaves out the CA certificate (the node then cannot verify the SuperLink);
        ``watch=False`` keeps the node out of the run's failure reports (a node not meant to join).
        """
        state_dir = self.root / "clients" / f"{name}_state"  # the node's own disk: its private branch per round
        if not self.resume:
            import shutil

            shutil.rmtree(state_dir, ignore_errors=True)  # a branch of an earlier run must not be picked up
        cmd = [flower_bin("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}", "--host", "127.0.0.1",
               "--port", str(free_port()), "--node-config",
               f"client-data={json.dumps(str(data))} state-dir={json.dumps(str(state_dir))}"]
        if self.secure:
            cmd += (["--root-certificates", str(self.creds / CA_CERT)] if with_ca else [])
            cmd += ["--auth-supernode-private-key", str(key)] if key is not None else []
        else:
            cmd += ["--insecure"]
        node = self.procs.start(name, cmd, self.root / "logs" / f"{name}.log", self.env(name))
        self.record()
        self._node_args[name] = (data, key, with_ca, watch)
        if watch:
            self.nodes[name] = node
        return node

    def wait_online(self, names: list[str], timeout: float = 180.0) -> None:
        """Wait until the named SuperNodes have joined (their log shows a node ID); fail if one exits."""
        deadline = time.monotonic() + timeout
        pending = list(names)
        restarts: dict[str, int] = {}
        while pending:
            for name in list(pending):
                node = self.nodes[name]
                if "SuperNode ID:" in node.log_tail(200):
                    pending.remove(name)
                elif not node.alive() and _port_clash(node) and restarts.get(name, 1) < PORT_ATTEMPTS:
                    restarts[name] = restarts.get(name, 1) + 1  # its port was taken before it bound it
                    self.echo(f"deploy: {name}'s port was taken before it bound it; starting it on another")
                    self.start_supernode(name, *self._node_args[name])
                elif not node.alive():
                    raise FlowerRunError(f"{name} (pid {node.pid}) could not join:\n{node.log_tail()}")
            if pending and time.monotonic() > deadline:
                raise FlowerRunError(f"{pending} did not join within {timeout:.0f} s")
            time.sleep(0.3)
        self.echo(f"deploy: {len(names)} SuperNode(s) joined")

    def start(self, extra_keys: Sequence[Path] = ()) -> None:
        """Prepare, start the SuperLink, register the keys and start one SuperNode per client.

        ``extra_keys``: more public keys to register (secure mode), for SuperNodes started later.
        """
        self.prepare()
        self.start_superlink()
        k = self.config.federation.num_clients
        names = [f"supernode_{i}" for i in range(k)]
        if self.secure:
            self.register([self.creds / f"{n}.pub" for n in names] + [Path(p) for p in extra_keys])
        for i, name in enumerate(names):
            self.start_supernode(name, self.root / "clients" / f"client_{i}.safetensors",
                                 self.creds / name if self.secure else None)
        self.wait_online(names)

    # ------------------------------------------------------------------ the run
    def submit(self) -> Managed:
        """Submit the Flower App with ``flwr run --stream`` (its output goes to ``logs/flwr_run.log``)."""
        run_config = self.root / "run_config.toml"
        run_config.write_text(tomli_w.dumps({"config": str(self.root / "config.toml"), "overrides": "",
                                             "min-replies": self.min_replies, "out": str(self.out),
                                             "step-timeout": self.step_timeout, "resume": self.resume}))
        for stale in (STATUS_JSON,) if self.resume else (RESULT_JSON, FINAL_STATE, STATUS_JSON):
            (self.out / stale).unlink(missing_ok=True)
        cmd = [flower_bin("flwr"), "run", str(APP_DIR), CONNECTION, "--stream", "--run-config", str(run_config)]
        run = self.procs.start("flwr_run", cmd, self.root / "logs" / "flwr_run.log", self.env("cli"))
        self.record()
        return run

    def status(self) -> dict[str, Any]:
        """The ServerApp's ``status.json`` (empty before the first round ends)."""
        try:
            return json.loads((self.out / STATUS_JSON).read_text())
        except (OSError, ValueError):
            return {}

    def follow(self, run: Managed, timeout: float,
               on_tick: Callable[[Deployment, dict[str, Any]], None] | None = None) -> FlowerResult:
        """Stream the run's output and node failures until it ends; return its result or raise."""
        deadline, offset, seen_failures, rounds, ended = time.monotonic() + timeout, run.log_start, 0, -1, None
        while True:
            done = not run.alive() or (ended is not None and time.monotonic() > ended + 5.0)
            offset = self._stream(run.log, offset)
            self.procs.track()
            self.record()
            status = self.status()
            if status.get("rounds_done", -1) != rounds:
                rounds = status.get("rounds_done", -1)
                self.echo(f"deploy: {rounds}/{status.get('rounds')} rounds done, saved to {self.out}")
            for f in status.get("failures", [])[seen_failures:]:
                self.echo(f"deploy: failure: round {f['round']} {f['stage']} client {f['partition']}: {f['reason']}")
            seen_failures = len(status.get("failures", []))
            for name, node in self.nodes.items():
                if not node.alive() and name not in self.reported:
                    self.reported.add(name)
                    self.echo(f"deploy: {name} (pid {node.pid}) exited with code {node.popen.returncode}; "
                              "the run goes on without it while enough clients reply")
            if not self.procs.procs["superlink"].alive():
                raise FlowerRunError(f"the SuperLink exited:\n{self.procs.procs['superlink'].log_tail()}")
            if on_tick is not None:
                on_tick(self, status)
            if ended is None and status.get("state") in ("finished", "failed"):
                ended = time.monotonic()  # give `flwr run` a few seconds to print the rest, then go on
            if done:
                break
            if time.monotonic() > deadline:
                raise FlowerRunError(f"the deployed run did not finish within {timeout:.0f} s "
                                     f"({rounds} rounds done; kept in {self.out})")
            time.sleep(0.5)
        status = self.status()
        if status.get("state") == "finished":
            return FlowerResult(RunResult.load(self.out), status.get("failures", []))
        if status.get("state") == "failed":
            raise FlowerRunError(f"{status.get('error')} ({status.get('rounds_done')} completed round(s) kept in "
                                 f"{self.out})")
        raise FlowerRunError(f"`flwr run` ended (code {run.popen.returncode}) without a result:\n{run.log_tail()}")

    def _stream(self, log: Path, offset: int) -> int:
        try:
            with open(log, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
        except OSError:
            return offset
        end = chunk.rfind(b"\n") + 1
        for line in re.sub(r"\x1b\[[0-9;]*m", "", chunk[:end].decode(errors="replace")).splitlines():
            if line.strip() and not _NOISE.match(line):
                self.echo(f"  | {line.rstrip()}")
        return offset + end

    def run(self, timeout: float = 1800.0,
            on_tick: Callable[[Deployment, dict[str, Any]], None] | None = None) -> FlowerResult:
        """Start everything, submit the app, follow it to the end (the caller stops the processes)."""
        self.start()
        return self.follow(self.submit(), timeout, on_tick)

    def record(self, stopped: bool = False) -> None:
        """Write ``deploy/launcher.json``: this launcher and every process of the deployment (PID, start stamp).

        Rewritten only when something changed; ``stopped=True`` once the launcher has stopped them all.
        """
        me = Proc.of(os.getpid())
        procs = {} if stopped else {
            str(p.pid): {"name": name if p.pid == self.procs.procs[name].pid else f"{name}/child", "stamp": p.stamp}
            for name, live in self.procs.live().items() for p in live}
        wd = self.procs.watchdog_proc()
        if wd is not None and not stopped:
            procs[str(wd.pid)] = {"name": "watchdog", "stamp": wd.stamp}
        data = {"launcher": {"pid": os.getpid(), "stamp": me.stamp if me else ""}, "stopped": stopped,
                "processes": procs}
        text = json.dumps(data, indent=1)
        if text != getattr(self, "_recorded", None):
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self.root / LAUNCHER_JSON, text.encode())
            self._recorded = text

    def stop(self) -> None:
        """Stop every process this deployment started, and their descendants."""
        started = len(self.procs.procs)
        forced = self.procs.stop_all()
        if self.root.exists():
            self.record(stopped=True)
        if started:
            self.echo(f"deploy: stopped {started} process(es) and their children"
                      + (f" ({len(forced)} needed SIGKILL)" if forced else ""))

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def deploy(config: RunConfig, out: str | Path, secure: bool = True, credentials: str | Path | None = None,
           min_replies: int = 1, timeout: float = 1800.0, step_timeout: float = 900.0,
           resume: bool = False) -> FlowerResult:
    """Deploy ``config`` on 127.0.0.1 (see :class:`Deployment`), return its result, stop every process."""
    with Deployment(config, out, secure, credentials, min_replies, step_timeout, resume=resume) as d:
        return d.run(timeout)


# ----------------------------------------------------------------------------- a launcher that died
def orphaned(out: str | Path) -> dict[str, Any] | None:
    """The ``launcher.json`` record of the deployment in ``out`` if its launcher did not stop it, else ``None``.

    The record's ``launcher_running`` tells whether that launcher (PID and start stamp) still runs.
    """
    try:
        data = json.loads((Path(out) / "deploy" / LAUNCHER_JSON).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("stopped", True):
        return None
    launcher = data.get("launcher") or {}
    data["launcher_running"] = Proc(int(launcher.get("pid", 0)), str(launcher.get("stamp", ""))).running()
    return data


def surviving(record: dict[str, Any]) -> list[Proc]:
    """The processes of ``record`` that still run (PID and start stamp)."""
    from .procs import proc_table

    table = proc_table()
    procs = [Proc(int(pid), str(info.get("stamp", ""))) for pid, info in (record.get("processes") or {}).items()]
    return [p for p in procs if p.running(table)]


def end_survivors(record: dict[str, Any], grace: float = 5.0) -> int:
    """End what still runs of a dead launcher's deployment (and their descendants, and the groups they lead).

    Returns how many processes were signalled. Same rules as the watchdog (:mod:`.watchdog`): by PID and
    start stamp, never by name, never this process's own group.
    """
    from .watchdog import Watched

    watched = Watched(os.getpgrp())
    for p in surviving(record):
        watched.add(p.pid, p.stamp)
    return watched.end_all(grace, say=lambda m: None)


def rounds_saved(out: Path) -> int:
    """Rounds completed in ``out`` (its ``result.json``; 0 when there is none)."""
    try:
        return len(json.loads((out / RESULT_JSON).read_text()).get("history", []))
    except (OSError, ValueError, AttributeError):
        return 0


def check_resumable(config: RunConfig, out: Path) -> None:
    """Refuse to continue ``out`` with different settings (more rounds are allowed, fewer than done are not)."""
    saved_path = out / "deploy" / "config.toml"
    if not saved_path.exists():
        return
    if config.world.cache_dir:
        config = config.with_overrides({"world.cache_dir": str(Path(config.world.cache_dir).resolve())})
    saved = RunConfig.load(saved_path).to_dict()
    diffs = config_differences(saved, config.to_dict(), ignore=(*RUNTIME_KEYS, "federation.rounds"))
    if diffs:
        raise ConfigError(f"--resume: --out {out} was started with other settings ({'; '.join(diffs)}); "
                          "pass the same --config/--set, or --fresh to start over")
    done = rounds_saved(out)
    if config.federation.rounds < done:
        raise ConfigError(f"--resume: federation.rounds={config.federation.rounds} is fewer than the {done} "
                          f"round(s) already done in {out}")


def start_over(out: Path) -> None:
    """``--fresh``: remove the run's files from ``out`` (its credentials are kept)."""
    import shutil

    for name in (RESULT_JSON, FINAL_STATE, STATUS_JSON, "analysis.safetensors"):
        (out / name).unlink(missing_ok=True)
    root = out / "deploy"
    if root.is_dir():
        for child in root.iterdir():
            if child.name != "credentials":
                shutil.rmtree(child) if child.is_dir() else child.unlink()


def main(argv: list[str] | None = None) -> int:
    """``python -m fedpurel_lite flower deploy --config FILE [--set k=v ...] --out DIR [--certs DIR | --insecure]``.

    ``--resume`` / ``--fresh``: continue or start over a deployment in ``--out`` whose launcher died.
    """
    from ..cli.run import load_config, print_results
    from ..cli.run import parser as cli_parser
    from ..engine.preflight import preflight
    from .procs import interrupt_on_signals

    p = cli_parser("flower deploy", __doc__ or "")
    p.add_argument("--out", default=None, help="result folder (default runs/flower-deploy-<method>-seed<seed>)")
    p.add_argument("--certs", default=None, metavar="DIR",
                   help="credentials of `flower certs DIR` (written there if DIR holds none; default OUT/deploy)")
    p.add_argument("--insecure", action="store_true", help="no TLS and no SuperNode authentication (not advised)")
    p.add_argument("--min-replies", type=int, default=1, help="successful replies needed per step")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds the whole run may take")
    p.add_argument("--step-timeout", type=float, default=900.0, help="seconds a step waits for client replies")
    p.add_argument("--overwrite", action="store_true", help="replace a result already in --out")
    p.add_argument("--resume", action="store_true",
                   help="--out holds a deployment whose launcher died: continue it from its saved rounds")
    p.add_argument("--fresh", action="store_true",
                   help="--out holds a deployment whose launcher died: start over (its results are replaced)")
    args = p.parse_args(argv)
    if args.insecure and args.certs:
        raise ConfigError("--insecure and --certs exclude each other")
    if args.resume and args.fresh:
        raise ConfigError("--resume and --fresh exclude each other")
    config = load_config(args)
    out = Path(args.out or f"runs/flower-deploy-{config.method.name}-seed{config.run.seed}")
    record = orphaned(out)
    if record is not None and record["launcher_running"]:
        raise ConfigError(f"--out {out} is in use by a running `flower deploy` (pid {record['launcher']['pid']}); "
                          "stop it or choose another --out")
    if record is None and (args.resume or args.fresh):
        raise ConfigError(f"{'--resume' if args.resume else '--fresh'}: --out {out} holds no deployment whose "
                          "launcher died")
    if record is not None:
        left = surviving(record)
        if not (args.resume or args.fresh):
            raise ConfigError(
                f"--out {out} holds a deployment whose launcher (pid {record['launcher']['pid']}) died after "
                f"{rounds_saved(out)} of {config.federation.rounds} round(s)"
                + (f", {len(left)} of its processes still running" if left else "")
                + "; pass --resume to continue it from its saved rounds or --fresh to start over")
        if args.resume:
            check_resumable(config, out)
    elif (out / RESULT_JSON).exists() and not args.overwrite:
        raise ConfigError(f"--out {out} already holds a result; pass --overwrite to replace it")
    preflight(config, outputs=[("--out", out)])
    from .server_app import check_servable

    check_servable(config)
    if record is not None:
        ended = end_survivors(record)
        if ended:
            print(f"deploy: ended {ended} process(es) left running by the launcher that died")
        if args.fresh:
            start_over(out)
        else:
            print(f"deploy: continuing {out} from round {rounds_saved(out)}")
    interrupt_on_signals()
    try:
        res = deploy(config, out, not args.insecure, args.certs, args.min_replies, args.timeout, args.step_timeout,
                     resume=bool(args.resume))
    except FlowerRunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_results({res.result.method: res.result})
    for f in res.failures:
        print(f"failure: round {f['round']} {f['stage']} client {f['partition']}: {f['reason']}")
    print(f"wrote {out}")
    return 0
