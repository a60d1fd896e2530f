"""Flower's Deployment Runtime on real processes on 127.0.0.1: TLS, authenticated SuperNodes, a node crash.

Two secure deployments (TLS with a local CA, ``--enable-supernode-auth``) run side by side with the
simulator, so the heartbeat wait of the crash test overlaps the other run's work:

- ``main``: 4 registered SuperNodes, 3 rounds; while it runs, a SuperNode with a valid key that was never
  registered and a registered SuperNode without the CA certificate try to join;
- ``crash``: 4 SuperNodes, 2 rounds; SuperNode 1 is killed (SIGKILL, with its children) once round 0 is saved.

Every wait is bounded, ports are chosen at run time, and every process is stopped (checked) at the end.
A pytest run killed from outside (CI time limit, Ctrl-C) strands none of them: each deployment's
watchdog process ends them once this process is gone (``tests/test_lifetimes.py`` kills such a process).
"""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
import torch

pytest.importorskip("flwr", reason="the Flower layer needs the 'flower' extra (pip install -e '.[flower]')")

from fedpurel_lite.config import RunConfig  # noqa: E402
from fedpurel_lite.engine.simulate import run  # noqa: E402
from fedpurel_lite.flower.certs import make_node_keys  # noqa: E402
from fedpurel_lite.flower.deploy import Deployment  # noqa: E402

CONFIG = RunConfig.load("configs/embedded.toml").with_overrides({"num_clients": 4, "rounds": 3, "min_client_size": 5})
RUN_TIMEOUT = 360.0  # seconds, per deployed run (on a loaded 2-core machine)
KILLED = 1


def _echo(lines: list[str], tag: str):
    def echo(line: str) -> None:
        lines.append(line)
        print(f"[{tag}] {line}", flush=True)

    return echo


def _main_deployment(root, box: dict) -> None:
    lines: list[str] = []
    with Deployment(CONFIG, root / "main", echo=_echo(lines, "main")) as d:
        box["deployment"] = d
        intruder_key, _ = make_node_keys(root / "intruder_keys", ["intruder"])[0]  # valid, never registered
        extra_key, extra_pub = make_node_keys(root / "extra_keys", ["extra"])[0]  # registered, started without CA
        d.start(extra_keys=[extra_pub])
        flwr_run = d.submit()
        data = d.root / "clients" / "client_0.safetensors"
        box["intruder"] = d.start_supernode("intruder", data, key=intruder_key, watch=False)
        box["no_ca"] = d.start_supernode("no_ca", data, key=extra_key, with_ca=False, watch=False)
        box["result"] = d.follow(flwr_run, RUN_TIMEOUT)
    box["lines"], box["left"] = lines, d.procs.still_running()


def _crash_deployment(root, box: dict) -> None:
    lines: list[str] = []
    config = CONFIG.with_overrides({"rounds": 2})

    def kill_after_round_0(d: Deployment, status: dict) -> None:
        if status.get("rounds_done", 0) >= 1 and "killed_at" not in box:
            box["saved_before_kill"] = json.loads((d.out / "result.json").read_text())
            box["killed_pid"] = d.nodes[f"supernode_{KILLED}"].pid
            d.procs.kill(f"supernode_{KILLED}", signal.SIGKILL)
            box["killed_at"] = time.monotonic()

    with Deployment(config, root / "crash", echo=_echo(lines, "crash")) as d:
        box["deployment"] = d
        box["result"] = d.run(RUN_TIMEOUT, on_tick=kill_after_round_0)
    box["lines"], box["left"] = lines, d.procs.still_running()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both deployments in threads, the simulator here; ``{name: box}``, a box holding ``error`` on failure."""
    root = tmp_path_factory.mktemp("deploy")
    boxes: dict[str, dict] = {"main": {}, "crash": {}}
    targets = {"main": _main_deployment, "crash": _crash_deployment}

    def guarded(name: str) -> None:
        try:
            targets[name](root, boxes[name])
        except BaseException as exc:  # noqa: BLE001 - reported by the test that needs this run
            boxes[name]["error"] = exc

    start = time.monotonic()
    threads = [threading.Thread(target=guarded, args=(n,), daemon=True) for n in targets]
    for t in threads:
        t.start()
    boxes["sim"] = {"result": run(CONFIG, progress=False)}
    for t in threads:
        t.join(timeout=2 * RUN_TIMEOUT + 300)
        assert not t.is_alive(), "a deployment did not end in time"
    print(f"deployment suite: {time.monotonic() - start:.0f} s", flush=True)
    return boxes


def _box(runs, name: str) -> dict:
    box = runs[name]
    if "error" in box:
        raise box["error"]
    assert box["left"] == [], f"processes left running: {box['left']}"
    return box


def test_deployed_run_equals_the_simulator(runs):
    dep, sim = _box(runs, "main")["result"], runs["sim"]["result"]
    assert dep.failures == []
    assert len(dep.result.history) == CONFIG.federation.rounds == 3
    assert dep.result.federation["engine"] == "flower-deployment"
    assert set(dep.result.final_state) == {k for k in sim.final_state if k.startswith("global/")}
    for name, value in dep.result.final_state.items():
        assert torch.max(torch.abs(value - sim.final_state[name])).item() <= 1e-5, name
    for h_sim, h_dep in zip(sim.history, dep.result.history, strict=True):
        assert h_dep["clients"] == h_sim["clients"]
        assert h_dep["gm"]["accuracy"] == pytest.approx(h_sim["gm"]["accuracy"], abs=1e-9)
    status = json.loads((runs["main"]["deployment"].out / "status.json").read_text())
    assert status["state"] == "finished" and status["rounds_done"] == 3


def test_a_killed_supernode_is_logged_and_the_run_goes_on(runs):
    box = _box(runs, "crash")
    res = box["result"]
    assert "killed_at" in box, "the run ended before round 0 was saved"
    assert len(res.result.history) == 2  # both rounds done with the remaining nodes
    assert res.failures, "the killed node's missing replies were not recorded"
    assert {f["partition"] for f in res.failures} == {KILLED}
    assert all("Node Unavailable" in f["reason"] for f in res.failures)
    assert res.result.history[1]["failures"] == res.failures
    assert KILLED not in res.result.history[1].get("trained", [])
    assert res.result.history[0] == box["saved_before_kill"]["history"][0]  # nothing already written is lost
    assert any(f"supernode_{KILLED} (pid {box['killed_pid']}) exited" in line for line in box["lines"])
    assert any("failure: round 1" in line for line in box["lines"])


def test_an_unregistered_supernode_is_refused(runs):
    box = _box(runs, "main")
    node = box["intruder"]
    assert node.popen.returncode not in (None, 0)
    assert "Failed to activate SuperNode" in node.log_tail(60)
    link_log = box["deployment"].procs.procs["superlink"].log_tail(100000)
    assert "No SuperNode found with the given public key" in link_log
    assert box["result"].failures == []  # and the run is unaffected (see the equality test)


def test_a_supernode_without_the_ca_cannot_connect(runs):
    box = _box(runs, "main")
    node = box["no_ca"]
    assert node.popen.returncode not in (None, 0)
    assert "CERTIFICATE_VERIFY_FAILED" in node.log_tail(60)


# ----------------------------------------------------------------------------- fast checks (no Flower processes)
def test_credentials_chain_and_key_formats(tmp_path):
    import stat

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    from fedpurel_lite.errors import ConfigError
    from fedpurel_lite.flower.certs import make_credentials

    paths = make_credentials(tmp_path / "creds", 2, hosts=["node.example", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    server = x509.load_pem_x509_certificate(paths["server_cert"].read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "node.example"} <= set(names.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.0.0.5"} <= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    for k in range(2):  # the formats flower-supernode and `flwr supernode register` read
        key = load_ssh_private_key(paths[f"node_{k}"].read_bytes(), None)
        pub = load_ssh_public_key((tmp_path / "creds" / f"supernode_{k}.pub").read_bytes())
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert key.public_key().public_numbers() == pub.public_numbers()
    for private in (paths["ca_key"], paths["server_key"], paths["node_0"]):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="already holds credentials"):
        make_credentials(tmp_path / "creds", 1)


def test_process_set_stops_its_processes_and_their_children(tmp_path):
    import sys

    from fedpurel_lite.flower.procs import ProcessSet

    spawn = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
             "start_new_session=True); time.sleep(120)")  # a child in its own session, like SuperExec
    with ProcessSet(grace=5.0) as procs:
        parent = procs.start("parent", [sys.executable, "-c", spawn], tmp_path / "parent.log")
        deadline = time.monotonic() + 30
        while len(procs.still_running()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            procs.track()
        running = procs.still_running()
        assert parent.pid in running and len(running) == 2
        watchdog = procs.watchdog
    assert procs.still_running() == []
    assert parent.popen.returncode is not None
    assert watchdog.popen.returncode == 0  # released with the set
