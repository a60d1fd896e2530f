"""Servers and a browser for the browser tests: JupyterLab / Voilà on 127.0.0.1, the system Chromium.

Every server runs in its own session (process group) on a free port with a random token, from a
temporary copy of the notebooks (so JupyterLab's autosave never touches the repository), and is
stopped by its PID when the fixture ends: SIGTERM to its group, SIGKILL after a bounded wait.

A test process that dies before its fixtures end (killed, timed out in CI, Ctrl-C at the wrong moment)
strands no server: each server is handed, as it starts, to one watchdog process per test process
(:mod:`fedpurel_lite.flower.watchdog`), which ends the server and its kernels (by PID and start stamp,
and the process groups they lead) as soon as the test process is gone, whatever the signal.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 15
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
LAB_SETTINGS = {
    # every cell stays in the DOM (no virtual scrolling), so outputs can be inspected
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
    # no news pop-up over the notebook
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": '{"fetchNews": "false"}',
}


def find_chromium() -> str | None:
    """The system Chromium (``$CHROMIUM`` first), or ``None``."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def unavailable(reason: str) -> None:
    """Skip with a visible reason on a developer machine; fail under CI (``CI=true``)."""
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"browser tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_tree(dest: Path) -> Path:
    """A working copy for the servers: notebooks and apps copied, configs and data linked."""
    for name in ("notebooks", "apps"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "*.py",
                                                                                    "__pycache__"))
    for name in ("configs", "data"):
        (dest / name).symlink_to(ROOT / name, target_is_directory=True)
    return dest


_WATCHDOG = None


def watchdog():
    """This test process's watchdog (started on first use): it ends every server handed to it if we die."""
    global _WATCHDOG
    if _WATCHDOG is None or not _WATCHDOG.alive():
        from fedpurel_lite.flower.watchdog import Watchdog

        _WATCHDOG = Watchdog()
    return _WATCHDOG


class Server:
    """A Jupyter server process (JupyterLab or Voilà) in its own process group, tied to this process's life."""

    def __init__(self, args: list[str], port: int, token: str, cwd: Path, log: Path, env: dict[str, str]) -> None:
        self.port, self.token, self.log = port, token, log
        guard = watchdog()  # running before the server starts
        self._log_file = open(log, "w")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        guard.watch(self.proc.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str) -> None:
        """Poll ``path`` until it answers 200 (bounded by :data:`START_TIMEOUT_S`)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {START_TIMEOUT_S} s; log:\n{self.log.read_text()[-3000:]}")

    def wait_listening(self) -> None:
        """Wait until the port accepts connections (a page request would already run the notebook)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log:\n{self.log.read_text()[-3000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"server not listening after {START_TIMEOUT_S} s; log:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM to the server's process group (its kernels included), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except ProcessLookupError:
                pass
        try:  # kernels that left the group still belong to this session id
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log_file.close()


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               IPYTHONDIR=str(home / "ipython"), MPLBACKEND="module://matplotlib_inline.backend_inline",
               PYTHONUNBUFFERED="1")
    env.pop("JUPYTER_TOKEN", None)
    return env


def start_lab(work: Path, home: Path) -> Server:
    """JupyterLab on 127.0.0.1 (free port, token auth) serving ``work``, app object exposed for the tests."""
    settings = home / "lab-settings"
    for rel, text in LAB_SETTINGS.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(text)
    port, token = free_port(), secrets.token_hex(16)
    args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
            "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={home / 'workspaces'}", "--ServerApp.port_retries=0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        args.append("--allow-root")
    server = Server(args, port, token, work, home / "lab.log", _env(home))
    server.wait_ready(f"/api/status?token={token}")
    return server


def start_voila(notebook: Path, work: Path, home: Path) -> Server:
    """Voilà serving one notebook on 127.0.0.1 (free port, token auth)."""
    port, token = free_port(), secrets.token_hex(16)
    args = [sys.executable, "-m", "voila", str(notebook), "--no-browser", "--Voila.ip=127.0.0.1",
            f"--Voila.port={port}", f"--Voila.token={token}", "--Voila.port_retries=0"]
    server = Server(args, port, token, work, home / "voila.log", _env(home))
    server.wait_listening()
    return server


# ----------------------------------------------------------------------------- fixtures (imported by the test modules)
LATENCY_FILE = ROOT / "build" / "browser" / "latency.json"
# JupyterLab: find the open notebook panel at `path` once its kernel is idle, keep it as window.__panel
FIND_PANEL = """(path) => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return false;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.context.isReady && w.sessionContext.session
        && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle') {
      window.__panel = w; app.shell.activateById(w.id); return true;
    }
  }
  return false;
}"""
PAGE_TIMEOUT_MS = 60_000


def browser_usable() -> bool:
    """Whether the browser tests can run here: a system Chromium and the playwright package."""
    import importlib.util

    return find_chromium() is not None and importlib.util.find_spec("playwright") is not None


@pytest.fixture(scope="session")
def chromium_browser():
    """The system Chromium under Playwright (skipped with the reason, or failed under CI, when unusable)."""
    path = find_chromium()
    if path is None:
        unavailable("no system Chromium found (install it: apt-get update && apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is missing (pip install -e '.[dev]')")
    driver = sync_playwright().start()
    try:
        browser = driver.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"],
                                         timeout=PAGE_TIMEOUT_MS)
    except Exception as exc:  # noqa: BLE001  (any launch failure means: no usable browser)
        driver.stop()
        unavailable(f"Chromium at {path} does not start under Playwright: {exc}")
    yield browser
    browser.close()
    driver.stop()


@pytest.fixture(scope="module")
def work_copy(tmp_path_factory) -> Path:
    """A temporary copy of the notebooks and apps, with configs/ and data/ linked."""
    return copy_tree(tmp_path_factory.mktemp("browser-work"))


@pytest.fixture(scope="session")
def lab(chromium_browser, tmp_path_factory):
    """One JupyterLab for the session over a copy of the notebooks and, in ``student/``, the student edition."""
    from fedpurel_lite.cli.student import write_student_edition

    work = copy_tree(tmp_path_factory.mktemp("lab-work"))
    write_student_edition(work / "student")
    server = start_lab(work, tmp_path_factory.mktemp("lab-home"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def lab_page(chromium_browser, lab):
    """One JupyterLab page for the session (loading JupyterLab once saves a minute); tests close what they open."""
    context = chromium_browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    page.goto(f"{lab.url}/lab?token={lab.token}&reset")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.started", timeout=120_000)
    page.evaluate("() => window.jupyterapp.started")
    yield page
    context.close()


def open_notebook(page, rel: str) -> None:
    """Open ``rel`` in JupyterLab and wait until its kernel is idle (the panel is then ``window.__panel``)."""
    page.evaluate("async (path) => { await window.jupyterapp.commands.execute('docmanager:open', {path}); "
                  "return true; }", rel)
    page.wait_for_function(FIND_PANEL, arg=rel, timeout=120_000, polling=500)


def close_notebook(page) -> None:
    """Shut the open notebook's kernel down and close it without a save dialog."""
    page.evaluate("""async () => {
      const panel = window.__panel;
      await panel.sessionContext.shutdown();
      panel.context.model.dirty = false;
      panel.dispose();
    }""")


@pytest.fixture
def new_page(chromium_browser):
    """A fresh page (own context) with bounded default timeouts."""
    context = chromium_browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def record_latency(name: str, seconds: float) -> None:
    """Add one measured widget latency (seconds) to ``build/browser/latency.json`` (a benchmark record)."""
    import fcntl
    import json

    LATENCY_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LATENCY_FILE.with_suffix(".lock"), "w") as lock:  # the test workers record side by side
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(LATENCY_FILE.read_text()) if LATENCY_FILE.exists() else {}
        data[name] = {"seconds": round(float(seconds), 3), "at": time.time()}
        LATENCY_FILE.write_text(json.dumps(data, indent=1) + "\n")
