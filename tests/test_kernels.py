"""Pinned kernel paths: the same bytes on another machine, emulated by a different kernel path.

``tests/kernel_probe.py`` is the short pipeline behind a figure (encode images with the tiny
CLIP, a few purified steps, a PNG). It runs in subprocesses on two "machines": this processor
as it is, and one emulated by other kernel choices (ATen's ``default`` kernels instead of its
best, MKL and oneDNN limited to AVX2, NumPy without its AVX2/AVX-512 loops, OpenBLAS on an older
core's kernel, two threads). Without the pinned settings the
two give different bytes (so the test can fail); with them (:data:`fedpurel_lite.kernels.PINNED`
added on top of either machine) the features, the trained head and the figure are identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fedpurel_lite import kernels

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "kernel_probe.py"
OTHER_MACHINE = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                 "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR", "OPENBLAS_CORETYPE": "Prescott",
                 "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}

pytestmark = pytest.mark.skipif(not kernels.has_avx2(), reason="the pinned path needs a processor with AVX2")


def _machine(extra: dict[str, str]) -> dict[str, str]:
    """This test process's environment without any kernel setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in kernels.PINNED and k not in OTHER_MACHINE}
    env.update(extra)
    return env


def _probe(env: dict[str, str], out: Path) -> dict[str, str]:
    done = subprocess.run([sys.executable, str(PROBE), str(out)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pinned_paths_give_the_same_bytes_on_another_machine(tmp_path):
    this, other = _machine({}), _machine(OTHER_MACHINE)
    runs = {"this": this, "other": other, "this pinned": kernels.pinned_env(this),
            "other pinned": kernels.pinned_env(other)}
    with ThreadPoolExecutor(2) as pool:
        found = dict(zip(runs, pool.map(lambda kv: _probe(kv[1], tmp_path / kv[0].replace(" ", "-")), runs.items()),
                         strict=True))
    assert found["this"]["features"] != found["other"]["features"], "the emulated machine must differ unpinned"
    assert found["this"]["head"] != found["other"]["head"]
    assert found["this"]["numpy"] != found["other"]["numpy"]
    assert found["this pinned"] == found["other pinned"]


def test_pinned_env_and_tag():
    env = kernels.pinned_env({"PATH": "/bin", "ATEN_CPU_CAPABILITY": "avx512"})
    assert env["PATH"] == "/bin" and env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert kernels.is_pinned(env) and kernels.tag(env).startswith("pinned-")
    assert kernels.tag(env) != kernels.tag({**env, **kernels.PINNED, "OMP_NUM_THREADS": "2"})
    assert not kernels.is_pinned({}) and kernels.tag({}) == "native"


def test_has_avx2_reads_the_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert kernels.has_avx2(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx\n")
    assert not kernels.has_avx2(info)
    assert not kernels.has_avx2(tmp_path / "missing")


def test_the_test_session_and_its_kernels_are_pinned():
    assert kernels.is_pinned()
    import torch

    assert torch.backends.cpu.get_cpu_capability() == "AVX2"


FONT_PROBE = """
import logging, sys
logging.basicConfig(level=logging.WARNING)
import matplotlib
from matplotlib import font_manager
path = font_manager.findfont("STIXGeneral")
print(matplotlib.get_configdir())
print(path)
print(matplotlib.rcParams["figure.dpi"])
"""


def test_matplotlib_uses_its_own_fonts_and_no_user_rc(tmp_path):
    """A font list cached by another matplotlib (here: one listing no bundled font) and a user's matplotlibrc
    in ``$HOME`` would change the figures; a pinned process reads neither."""
    home = tmp_path / "home"
    cache, config = home / ".cache" / "matplotlib", home / ".config" / "matplotlib"
    cache.mkdir(parents=True)
    config.mkdir(parents=True)
    import shutil

    import matplotlib
    from matplotlib import font_manager

    other = tmp_path / "other-matplotlib"  # another installation, which ships DejaVu Sans but no STIX
    other.mkdir()
    shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", other)
    stale = font_manager.FontManager()
    stale.ttflist = [font_manager.FontEntry(**{**vars(e), "fname": str(other / "DejaVuSans.ttf")})
                     for e in stale.ttflist if Path(e.fname).name == "DejaVuSans.ttf"]
    font_manager.json_dump(stale, cache / f"fontlist-v{font_manager.FontManager.__version__}.json")
    (config / "matplotlibrc").write_text("figure.dpi: 37\n")
    base = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")}
    base["HOME"] = str(home)

    def probe(env: dict[str, str]) -> list[str]:
        done = subprocess.run([sys.executable, "-c", FONT_PROBE], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return [*done.stdout.split("\n")[:3], done.stderr]

    configdir, font, dpi, stderr = probe(base)
    assert configdir == str(config) and dpi == "37.0" and "not found" in stderr, "the stale list must bite unpinned"
    configdir, font, dpi, stderr = probe(kernels.pinned_env(base))
    assert configdir == str(kernels.matplotlib_dir()) and dpi == "100.0"
    assert Path(font).name == "STIXGeneral.ttf" and Path(font).is_relative_to(Path(matplotlib.get_data_path()))
    assert "findfont" not in stderr
