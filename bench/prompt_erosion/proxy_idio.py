"""Proxy runs on the re-rendered class-idiosyncratic-drift world (build it first: shift_worlds.py idio).

    .venv/bin/python bench/prompt_erosion/proxy_idio.py [CONDITION ...]
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_sweep  # noqa: E402
import shift_worlds  # noqa: E402

from fedpurel_lite.data.backbone import load_backbone  # noqa: E402

if __name__ == "__main__":
    kind = os.environ.get("WORLD", "idio")
    bank = shift_worlds.load(kind)
    proxy_sweep.main(sys.argv[1:] or ["stratified", "flat_shape"], bank=bank, backbone=load_backbone(), world_tag=kind)
