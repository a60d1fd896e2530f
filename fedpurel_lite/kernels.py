"""Pinned CPU kernel paths: the main job and the notebook tests give the same bytes on any x86-64 CPU with AVX2.

PyTorch chooses its CPU kernels when a process starts, from what the processor offers, and the
last bits of a float32 result depend on that choice:

- ATen's vectorised kernels (element-wise ops, reductions, softmax) come in ``default``, ``avx2``
  and ``avx512`` builds; ``ATEN_CPU_CAPABILITY`` selects one (the processor's best otherwise).
- MKL's BLAS (the matrix products) dispatches by instruction set; its *conditional numerical
  reproducibility* mode ``MKL_CBWR=AVX2,STRICT`` makes it run the AVX2 path, with the same results
  on every processor that has AVX2.
- oneDNN (convolutions and some fused ops) dispatches by ISA; ``ONEDNN_MAX_CPU_ISA`` caps it.
- NumPy's own loops (``exp``, ``log``, ``einsum``) dispatch by CPU feature too
  (``NPY_DISABLE_CPU_FEATURES`` turns the AVX-512 ones off), and its OpenBLAS picks a matrix
  kernel per processor family (``OPENBLAS_CORETYPE=Haswell`` is its AVX2 kernel).
- A parallel reduction adds in an order that depends on the thread count; one thread fixes it.

The variables are read once, when the libraries initialise, so they must be in the environment
before ``torch`` is imported: :func:`pin` sets them for this process and everything it starts
(the notebook kernels of ``python -m fedpurel_lite demo``, the kernels nbval starts under
``pytest``), and :func:`pinned_env` gives them to a subprocess. A user's own ``run`` or ``compare``
is not pinned and keeps the fastest path; its numbers can differ from a pinned run's in the last
digits (see the README's "Reproducibility" note for the measured size).

Matplotlib is part of the same environment: its font list, cached per user, records the font files of the
installation that wrote it, and a list written by another (or since deleted) matplotlib lacks the fonts
this one ships (the figures then fall back to other fonts, with warnings in the notebooks' outputs); a
user's own ``matplotlibrc`` would change the figures too. :func:`pin` therefore gives matplotlib a
configuration folder of this installation's own (:func:`matplotlib_dir`).

A processor without AVX2 cannot run the pinned path (forcing it would stop the process on an
illegal instruction), so there :func:`pin` leaves the kernel paths alone and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

PINNED: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2,STRICT",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "OPENBLAS_CORETYPE": "Haswell",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
"""The environment of a pinned process: AVX2 kernels everywhere and one thread."""


def has_avx2(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this processor offers AVX2 (read from ``/proc/cpuinfo``; ``False`` where it cannot tell)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return "avx2" in flags.split()


def matplotlib_dir() -> Path:
    """Matplotlib's configuration folder for pinned processes: one per Python installation.

    ``<sys.prefix>/var/fedpurel-lite/matplotlib`` inside a virtual environment (it goes with the environment),
    else a folder under the temporary directory named after ``sys.prefix``. Matplotlib's font list is
    cached there, written by the matplotlib of this installation, and no user ``matplotlibrc`` is read.
    """
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "var" / "fedpurel-lite" / "matplotlib"
    key = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"fedpurel-lite-matplotlib-{os.getuid()}-{key}"


def pinned_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (``os.environ`` by default) with :data:`PINNED` and :func:`matplotlib_dir` set.

    Parameters
    ----------
    base : Mapping[str, str], optional
        The environment to start from.
    """
    env = dict(os.environ if base is None else base)
    env.update(PINNED, MPLCONFIGDIR=str(matplotlib_dir()))
    return env


def is_pinned(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``env`` (``os.environ`` by default) holds every pinned setting."""
    env = os.environ if env is None else env
    return all(env.get(k) == v for k, v in PINNED.items())


def pin() -> bool:
    """Pin the kernel paths of this process and of every process it starts from now on.

    Returns ``True`` when pinned. On a processor without AVX2 only matplotlib's folder is set and a
    warning says the figures may differ from the committed ones in their last bits.

    Raises
    ------
    RuntimeError
        If ``torch`` is already imported with other settings: they can no longer change in this
        process (start a new one).
    """
    os.environ["MPLCONFIGDIR"] = str(matplotlib_dir())
    if not has_avx2():
        warnings.warn("this processor has no AVX2: kernel paths are not pinned, so numbers and figures can "
                      "differ from the committed ones in their last digits", stacklevel=2)
        return False
    if "torch" in sys.modules and not is_pinned():
        raise RuntimeError("pin() must run before torch is imported (the kernel paths are chosen at import)")
    os.environ.update(PINNED)
    return True


def tag(env: Mapping[str, str] | None = None) -> str:
    """``"pinned-<hash of PINNED>"`` for a pinned environment, ``"native"`` otherwise: part of a feature cache's key.

    The hash changes with :data:`PINNED`, so a cache encoded under other pinned settings is never reused.
    """
    if not is_pinned(env):
        return "native"
    return "pinned-" + hashlib.sha256(json.dumps(PINNED, sort_keys=True).encode()).hexdigest()[:12]
