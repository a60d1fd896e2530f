"""Nothing outlives its launcher: processes started through the toolkit die with the process that started them.

A small Python parent starts processes the way the toolkit does -- a :class:`ProcessSet` (as a
deployment does), a Jupyter server of the browser tests, a whole Flower deployment in a thread (as the
deployment tests do), the real ``flower deploy`` command -- and is then killed (SIGKILL: no cleanup
runs; SIGTERM: Python's default, no cleanup either). Every process of its tree, identified by PID and
start stamp so a reused PID cannot pass for a survivor, must be gone within ``GONE_S`` seconds.
Without the watchdog the grandchildren started in sessions of their own (like Flower's SuperExec, or a
Jupyter kernel) would be re-parented to init and keep running.

The Flower tests start deployments through a :class:`ProcessSet` of this test process, so a pytest run
killed from outside leaves nothing behind either.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedpurel_lite.flower.procs import Proc, ProcessSet, descendants, wait_gone

ROOT = Path(__file__).resolve().parents[1]
GONE_S = 10.0  # the bound the processes of a dead launcher must be gone within
START_S = 600.0  # bound for a deployment to reach its first saved round on a loaded machine


def _parent(tmp_path: Path, body: str) -> subprocess.Popen:
    """A Python parent running ``body`` (it prints ``ready`` when its processes are up), in its own session."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests" / "browser")]),
               PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            start_new_session=True)


def _wait_ready(parent: subprocess.Popen, timeout: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(parent.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=1.0):
            line = parent.stdout.readline()
            if line.startswith("ready"):
                return line
            if not line:
                break
    parent.kill()
    raise AssertionError(f"the parent did not get ready (exit code {parent.wait()})")


def _tree(pid: int, at_least: int, timeout: float = 60.0) -> list[Proc]:
    """``pid`` and its descendants once there are at least ``at_least`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        me = Proc.of(pid)
        tree = ([me] if me else []) + descendants(pid)
        if len(tree) >= at_least or time.monotonic() > deadline:
            return tree
        time.sleep(0.2)


def _kill_and_check(parent: subprocess.Popen, tree: list[Proc], sig: int) -> None:
    in_own_session = [p for p in tree if p.pid != parent.pid and os.getsid(p.pid) == p.pid]
    assert in_own_session, "the test needs a process in a session of its own (one that would be stranded)"
    os.kill(parent.pid, sig)
    start = time.monotonic()
    parent.wait(timeout=30)
    left = wait_gone(tree, GONE_S)
    print(f"{len(tree)} processes, signal {sig}: {len(left)} left after {time.monotonic() - start:.1f} s")
    for p in left:  # clean up before failing (only the processes this test started, by PID and stamp)
        p.signal(signal.SIGKILL)
    assert left == [], f"still running {GONE_S:.0f} s after the parent got signal {sig}: {left}"


SPAWNER = ("import subprocess, sys, time; "
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True); "
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_process_sets_processes_die_with_their_launcher(tmp_path, sig):
    parent = _parent(tmp_path, f"""
        import sys, time
        from pathlib import Path
        from fedpurel_lite.flower.procs import ProcessSet
        procs = ProcessSet()
        procs.start("spawner", [sys.executable, "-c", {SPAWNER!r}], Path({str(tmp_path / "spawner.log")!r}))
        print("ready", flush=True)
        time.sleep(300)
    """)
    _wait_ready(parent, 60)
    tree = _tree(parent.pid, at_least=5)  # parent, watchdog, spawner, its two children
    assert len(tree) == 5, tree
    _kill_and_check(parent, tree, sig)


def test_the_watchdog_leaves_a_stopped_set_alone_and_exits(tmp_path):
    """A normal stop: the set's processes end, then the watchdog exits; nothing else is touched."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    try:
        with ProcessSet(grace=5.0) as procs:
            procs.start("spawner", [sys.executable, "-c", SPAWNER], tmp_path / "spawner.log")
            wd = procs.watchdog
            tree = _tree(procs.procs["spawner"].pid, at_least=3)
        assert wait_gone(tree, GONE_S) == []
        assert wd.popen.wait(timeout=GONE_S) == 0
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_jupyter_server_of_the_browser_tests_dies_with_the_test_process(tmp_path, sig):
    """The browser tests' :class:`Server` (a stand-in server that starts a 'kernel' in its own session)."""
    parent = _parent(tmp_path, f"""
        import os, sys, time
        from pathlib import Path
        from servers import Server, free_port
        Server([sys.executable, "-c", {SPAWNER!r}], free_port(), "t", Path({str(tmp_path)!r}),
               Path({str(tmp_path / "server.log")!r}), dict(os.environ))
        print("ready", flush=True)
        time.sleep(300)
    """)
    _wait_ready(parent, 60)
    tree = _tree(parent.pid, at_least=5)
    assert len(tree) == 5, tree
    _kill_and_check(parent, tree, sig)


def test_jupyterlab_and_its_kernel_die_with_the_test_process(tmp_path):
    """The real ``start_lab`` of the browser tests, with a kernel started through its REST API; SIGKILL."""
    pytest.importorskip("jupyterlab")
    parent = _parent(tmp_path, f"""
        import json, time, urllib.request
        from pathlib import Path
        from servers import start_lab
        work, home = Path({str(tmp_path / "work")!r}), Path({str(tmp_path / "home")!r})
        work.mkdir(); home.mkdir()
        lab = start_lab(work, home)
        req = urllib.request.Request(f"{{lab.url}}/api/kernels?token={{lab.token}}", data=b"{{}}", method="POST",
                                     headers={{"Content-Type": "application/json"}})
        urllib.request.urlopen(req, timeout=60).read()
        print("ready", flush=True)
        time.sleep(300)
    """)
    _wait_ready(parent, 240)
    tree = _tree(parent.pid, at_least=4, timeout=60)  # parent, watchdog, JupyterLab, the kernel
    assert len(tree) >= 4, tree
    _kill_and_check(parent, tree, signal.SIGKILL)


# ------------------------------------------------------------------- flower deploy into a dead launcher's --out
def _fake_dead_launcher(out: Path, processes: dict | None = None) -> int:
    """Write ``out/deploy/launcher.json`` naming a launcher that has ended (a real, reaped process)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / "deploy").mkdir(parents=True)
    (out / "deploy" / "launcher.json").write_text(json.dumps(
        {"launcher": {"pid": gone.pid, "stamp": "1"}, "stopped": False, "processes": processes or {}}))
    return gone.pid


def test_deploy_into_an_out_whose_launcher_died_names_resume_and_fresh(tmp_path):
    out = tmp_path / "d"
    pid = _fake_dead_launcher(out)
    cmd = [sys.executable, "-m", "fedpurel_lite", "flower", "deploy", "--config", "configs/embedded.toml",
           "--set", "rounds=3", "--out", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert f"launcher (pid {pid}) died after 0 of 3 round(s)" in lines[0]
    assert "--resume" in lines[0] and "--fresh" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["deploy"]  # nothing written before the error


def test_deploy_refuses_a_running_launchers_out_and_contradictory_flags(tmp_path):
    pytest.importorskip("flwr")
    from fedpurel_lite.errors import ConfigError
    from fedpurel_lite.flower.deploy import main

    args = ["--config", "configs/embedded.toml", "--out", str(tmp_path / "d")]
    with pytest.raises(ConfigError, match="exclude each other"):
        main([*args, "--resume", "--fresh"])
    with pytest.raises(ConfigError, match="holds no deployment whose launcher died"):
        main([*args, "--resume"])
    me = Proc.of(os.getpid())
    (tmp_path / "d" / "deploy").mkdir(parents=True)
    (tmp_path / "d" / "deploy" / "launcher.json").write_text(json.dumps(
        {"launcher": {"pid": me.pid, "stamp": me.stamp}, "stopped": False, "processes": {}}))
    with pytest.raises(ConfigError, match=f"in use by a running `flower deploy` \\(pid {me.pid}\\)"):
        main([*args, "--fresh"])


def test_fresh_ends_the_survivors_of_a_dead_launcher(tmp_path):
    """A deployment whose launcher *and* watchdog were killed: ``--fresh``/``--resume`` end what survived first."""
    pytest.importorskip("flwr")
    from fedpurel_lite.flower.deploy import end_survivors, orphaned, surviving

    survivor = subprocess.Popen([sys.executable, "-c", SPAWNER], start_new_session=True)
    try:
        tree = _tree(survivor.pid, at_least=3)
        out = tmp_path / "d"
        _fake_dead_launcher(out, {str(survivor.pid): {"name": "superlink", "stamp": tree[0].stamp}})
        record = orphaned(out)
        assert record is not None and not record["launcher_running"]
        assert surviving(record) == [tree[0]]
        assert end_survivors(record, grace=2.0) >= 3  # the survivor and both children (one in its own session)
        survivor.wait(timeout=GONE_S)
        assert wait_gone(tree, GONE_S) == []
    finally:
        survivor.kill()
        survivor.wait()


# ----------------------------------------------------------------------------- real Flower deployments
SETS = ["num_clients=3", "rounds=3", "min_client_size=5"]


def _status(out: Path) -> dict:
    try:
        return json.loads((out / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _deploy_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fedpurel_lite", "flower", "deploy", "--config", "configs/embedded.toml",
            "--set", *SETS, "--out", str(out), *extra]


def test_kill_9_of_flower_deploy_mid_run_leaves_nothing_and_resume_finishes_the_run(tmp_path):
    """The real command, started through this test's :class:`ProcessSet` (a killed pytest strands nothing):
    SIGKILL once round 0 is saved; everything it started is gone; a second ``flower deploy`` names
    ``--resume`` and ``--fresh``; ``--resume`` finishes the run equal to the simulator."""
    pytest.importorskip("flwr")
    import torch

    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.engine.results import RunResult
    from fedpurel_lite.engine.simulate import run

    out = tmp_path / "d"
    with ProcessSet(grace=10.0) as procs:
        first = procs.start("deploy", _deploy_cmd(out), tmp_path / "deploy_1.log", cwd=ROOT)
        deadline = time.monotonic() + START_S
        while _status(out).get("rounds_done", 0) < 1:
            assert first.alive(), f"flower deploy ended early:\n{first.log_tail(40)}"
            assert time.monotonic() < deadline, f"no round saved within {START_S:.0f} s:\n{first.log_tail(40)}"
            time.sleep(0.5)
        saved = json.loads((out / "result.json").read_text())["history"]
        record = json.loads((out / "deploy" / "launcher.json").read_text())
        names = {info["name"] for info in record["processes"].values()}
        assert {"superlink", "supernode_0", "supernode_2", "flwr_run", "watchdog", "superlink/child"} <= names
        tree = {p.pid: p for p in [Proc.of(first.pid), *descendants(first.pid)] if p is not None}
        tree.update({int(pid): Proc(int(pid), info["stamp"]) for pid, info in record["processes"].items()})
        assert len(tree) >= 10  # launcher, watchdog, SuperLink + SuperExec, 3 SuperNodes + SuperExecs, flwr run, ...
        os.kill(first.pid, signal.SIGKILL)
        start = time.monotonic()
        first.popen.wait(timeout=30)
        left = wait_gone(list(tree.values()), GONE_S)
        print(f"kill -9 of flower deploy: {len(tree)} processes, {len(left)} left after "
              f"{time.monotonic() - start:.1f} s")
        for p in left:
            p.signal(signal.SIGKILL)
        assert left == [], f"still running {GONE_S:.0f} s after kill -9 of flower deploy: {left}"

        again = subprocess.run(_deploy_cmd(out), cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert again.returncode == 2
        error = [line for line in again.stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "died after" in error[0] and "--resume" in error[0] and "--fresh" in error[0]

        second = procs.start("resume", _deploy_cmd(out, "--resume"), tmp_path / "deploy_2.log", cwd=ROOT)
        second.popen.wait(timeout=START_S)
        assert second.popen.returncode == 0, second.log_tail(40)
    assert f"continuing {out} from round {len(saved)}" in second.log_tail(400)
    result = RunResult.load(out)
    sim = run(RunConfig.load("configs/embedded.toml").with_overrides(SETS), progress=False)
    assert len(result.history) == 3 and result.history[:len(saved)] == saved  # nothing already done is lost
    for name, value in result.final_state.items():
        assert torch.max(torch.abs(value - sim.final_state[name])).item() <= 1e-5, name
    for h_sim, h_dep in zip(sim.history, result.history, strict=True):
        assert h_dep["clients"] == h_sim["clients"]
        for part in ("gm", "pm"):  # pm: the nodes continued from their own saved private branches
            assert h_dep[part]["accuracy"] == pytest.approx(h_sim[part]["accuracy"], abs=1e-9), (h_sim["round"], part)
    assert json.loads((out / "deploy" / "launcher.json").read_text())["stopped"] is True


def test_a_deployment_in_a_thread_of_a_terminated_test_process_leaves_nothing(tmp_path):
    """As the deployment tests run it (``Deployment`` in a thread of the test process); SIGTERM to that process."""
    pytest.importorskip("flwr")
    parent = _parent(tmp_path, f"""
        import threading, time
        from fedpurel_lite.config import RunConfig
        from fedpurel_lite.flower.deploy import Deployment
        cfg = RunConfig.load("configs/embedded.toml").with_overrides({SETS[:1]!r} + ["rounds=50", "min_client_size=5"])

        def go():
            with Deployment(cfg, {str(tmp_path / "d")!r}, echo=lambda line: None) as d:
                d.start()
                run = d.submit()
                print("ready", flush=True)
                d.follow(run, 3000)

        threading.Thread(target=go, daemon=True).start()
        time.sleep(3000)
    """)
    _wait_ready(parent, START_S)
    tree = _tree(parent.pid, at_least=11, timeout=START_S)  # ... and the ServerApp below the SuperLink's SuperExec
    assert len(tree) >= 11, tree
    _kill_and_check(parent, tree, signal.SIGTERM)
