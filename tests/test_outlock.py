"""Output folders are locked for a whole command: a second writer is refused naming the holder, a lock left by a
killed run is taken over after checking its holder is gone, and every output destination is checked before work."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from fedpurel_lite.__main__ import main
from fedpurel_lite.engine import outlock
from fedpurel_lite.engine.outlock import LOCK_NAME, FolderLockedError, check_unlocked, holder_alive, output_lock

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "configs" / "embedded.toml"
HOLD = ("import sys, time; from fedpurel_lite.engine.outlock import output_lock\n"
        "with output_lock(sys.argv[1], command='holder'):\n    print('held', flush=True); time.sleep(300)\n")


class WorkStarted(Exception):
    """Raised by the trapped work functions: every check passed."""


@pytest.fixture
def trapped(monkeypatch):
    import fedpurel_lite.engine.assembly as assembly
    import fedpurel_lite.engine.simulate as simulate

    def work(*args, **kwargs):
        raise WorkStarted

    for module, name in ((assembly, "load_bank"), (simulate, "run"), (simulate, "compare")):
        monkeypatch.setattr(module, name, work)


def _one_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with output_lock(tmp_path / "out", command="run fedavg"):
        assert (tmp_path / "out" / LOCK_NAME).is_file()
        with pytest.raises(FolderLockedError, match=rf"pid {os.getpid()} on host {socket.gethostname()}, started "
                                                    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(run fedavg\)"):
            with output_lock(tmp_path / "out"):
                pass
        with pytest.raises(FolderLockedError, match="being written by another command"):
            check_unlocked(tmp_path / "out")
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # released and removed
    check_unlocked(tmp_path / "out")
    with output_lock(tmp_path / "out"):
        pass


def test_holder_liveness_compares_the_process_start_time():
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": outlock.process_start_ticks(os.getpid())}
    assert holder_alive(me) is True
    assert holder_alive({**me, "start_ticks": me["start_ticks"] + 1}) is False  # the PID now names another process
    assert holder_alive({**me, "pid": 2**22 + 17}) is False  # no such process
    assert holder_alive({**me, "host": "elsewhere"}) is None  # cannot be told from here


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    folder = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=f"pid {holder.pid} .*\\(holder\\)"):
            with output_lock(folder):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    finally:
        holder.kill()
    assert (folder / LOCK_NAME).is_file()  # left behind, but no longer held
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with output_lock(folder):
            pass
    assert any(f"taking over the lock left by pid {holder.pid}" in str(w.message)
               and "no longer running" in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_a_second_run_into_a_locked_folder_is_refused_before_any_work(tmp_path, capsys, trapped):
    out = tmp_path / "run"
    with output_lock(out, command="run fedpurel"):
        before = _files(tmp_path)
        code = main(["run", "--config", str(EMBEDDED), "--out", str(out), "--set", "rounds=1"])
        line = _one_error(code, capsys.readouterr().err)
        assert f"--out='{out}' is being written by another command: pid {os.getpid()}" in line
        assert _files(tmp_path) == before
        code = main(["report", str(tmp_path), "--out", str(out)])
        assert "is being written by another command" in _one_error(code, capsys.readouterr().err)
        code = main(["compare", "--config", str(EMBEDDED), "--methods", "fedavg", "--report", str(out)])
        assert "--report=" in _one_error(code, capsys.readouterr().err)


@pytest.mark.slow  # whole processes started, killed or resumed: the complete suite's tier, not make check's
def test_a_run_killed_mid_way_leaves_a_lock_the_next_run_takes_over(tmp_path, capsys, trapped):
    """The real command in a subprocess, SIGKILLed while it holds the folder; the next run checks and takes over."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "fedpurel_lite", "run", "--config", str(EMBEDDED), "--quiet",
                              "--out", str(out), "--set", "rounds=100"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not outlock.read_holder(out) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert outlock.read_holder(out).get("pid") == first.pid
        code = main(["run", "--config", str(EMBEDDED), "--out", str(out), "--overwrite"])
        assert f"pid {first.pid}" in _one_error(code, capsys.readouterr().err)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        first.kill()
    with pytest.raises(WorkStarted):  # the checks pass and the lock is taken: work would start
        main(["run", "--config", str(EMBEDDED), "--out", str(out), "--overwrite"])
    assert f"taking over the lock left by pid {first.pid}" in capsys.readouterr().err
    assert not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("case", ["out-is-a-file", "checkpoint-is-a-file", "result-is-a-folder", "csv-is-a-folder",
                                  "report-out-is-a-file", "compare-report-is-a-file"])
def test_output_destinations_are_checked_before_any_work(case, tmp_path, capsys, trapped):
    out = tmp_path / "out"
    (tmp_path / "a-file").write_text("mine")
    args = {"out-is-a-file": ["run", "--out", str(tmp_path / "a-file")],
            "checkpoint-is-a-file": ["run", "--out", str(out)],
            "result-is-a-folder": ["run", "--out", str(out)],
            "csv-is-a-folder": ["compare", "--methods", "fedavg", "--csv", str(tmp_path)],
            "report-out-is-a-file": ["report", str(tmp_path), "--out", str(tmp_path / "a-file")],
            "compare-report-is-a-file": ["compare", "--methods", "fedavg", "--report", str(tmp_path / "a-file")]}[case]
    if case == "checkpoint-is-a-file":
        out.mkdir()
        (out / "checkpoint").write_text("mine")
    if case == "result-is-a-folder":
        (out / "result.json").mkdir(parents=True)
    if args[0] != "report":
        args[1:1] = ["--config", str(EMBEDDED)]
    before = _files(tmp_path)
    line = _one_error(main(args), capsys.readouterr().err)
    assert any(s in line for s in ("is an existing file", "is a folder", "is in the way")), line
    assert _files(tmp_path) == before
