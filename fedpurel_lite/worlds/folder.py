"""Users' own (long-tailed) data: an image folder with one sub-folder per class and a split file.

Layout::

    root/
      <class name>/<image files>
      split.json        {"train": ["<class>/<file>", ...], "test": [...]}

Without a split file, ``root/train/<class>/...`` and ``root/test/<class>/...`` are used. Class ids
follow the sorted class-folder names; ``class_order`` ranks classes by decreasing training count
(ties by id), so head to tail is the data's own.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from fedpurel_lite.worlds.base import DEFAULT_TEMPLATES, World

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class ImageList:
    """A minimal dataset over ``(path, label)`` pairs, yielding ``(PIL RGB image, label)``."""

    def __init__(self, paths: list[Path], labels: np.ndarray) -> None:
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return img.convert("RGB"), int(self.labels[i])


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def load_folder(root: str | Path, split_file: str | Path | None = "split.json",
                templates: list[str] | None = None) -> World:
    """Load an image-folder world.

    Parameters
    ----------
    root : str or Path
        Dataset folder.
    split_file : str or Path, optional
        JSON file (relative to ``root`` or absolute) with ``"train"`` and ``"test"`` lists of
        ``"<class>/<file>"``; if it does not exist, ``root/train`` and ``root/test`` are used.
    templates : list of str, optional
        Prompt templates (default: CLIP-style photo templates).

    Returns
    -------
    World
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    split_path = None if split_file is None else (root / split_file if not Path(split_file).is_absolute()
                                                  else Path(split_file))
    if split_path is not None and split_path.is_file():
        split = json.loads(split_path.read_text())
        bases = {"train": root, "test": root}
    elif (root / "train").is_dir() and (root / "test").is_dir():
        split = {s: _listing(root / s) for s in ("train", "test")}
        bases = {"train": root / "train", "test": root / "test"}
    else:
        raise FileNotFoundError(f"{root}: no split file ({split_path}) and no train/ + test/ sub-folders")
    classes = sorted({Path(p).parts[0] for s in ("train", "test") for p in split[s]})
    index = {c: i for i, c in enumerate(classes)}
    pools, digest = {}, hashlib.sha256()
    for s in ("train", "test"):
        rel = list(split[s])
        paths = [bases[s] / p for p in rel]
        labels = np.asarray([index[Path(p).parts[0]] for p in rel], dtype=np.int64)
        for r, p in zip(rel, paths, strict=True):
            digest.update(f"{s}:{r}:{p.stat().st_size}\n".encode())
        pools[s] = ImageList(paths, labels)
    counts = np.bincount(pools["train"].labels, minlength=len(classes))
    order = np.lexsort((np.arange(len(classes)), -counts))
    return World(name="folder", class_names=[c.replace("_", " ") for c in classes],
                 templates=list(templates or DEFAULT_TEMPLATES), train_images=pools["train"],
                 train_labels=pools["train"].labels, test_images=pools["test"], test_labels=pools["test"].labels,
                 class_order=order, params={"version": 1, "root_name": root.name, "files": digest.hexdigest()})
