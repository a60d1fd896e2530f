"""Users' own (long-tailed) data: an image folder with one sub-folder per class and a split file.

Layout::

    root/
      <class name>/<image files>
      split.json        {"train": ["<class>/<file>", ...], "test": [...]}

Without a split file, ``root/train/<class>/...`` and ``root/test/<class>/...`` are used. Class ids
follow the sorted class-folder names; ``class_order`` ranks classes by decreasing training count
(ties by id), so head to tail is the data's own.

Split files are checked before use: valid JSON, lists of ``"<class>/<file>"`` strings, every path
relative and inside ``root`` (no absolute paths, ``..`` or symlinks leading out), every listed
image present. A bad file raises :class:`~fedpurel_lite.errors.IntegrityError`, missing images
:class:`~fedpurel_lite.errors.ResourceMissingError`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

import numpy as np

from fedpurel_lite.errors import ConfigError, IntegrityError, ResourceMissingError
from fedpurel_lite.worlds.base import DEFAULT_TEMPLATES, World

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
DEFAULT_SPLIT_FILE = "split.json"
_SPLITS = ("train", "test")
_FORMAT = 'expected {"train": ["<class>/<file>", ...], "test": [...]} with paths relative to the folder'


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
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _read_split(path: Path) -> dict[str, list[str]]:
    """Parse and type-check a split file (no file-system checks of its entries)."""
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"split file {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column "
                             f"{exc.colno}; fix it ({_FORMAT})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise IntegrityError(f"split file {path} cannot be read as UTF-8 text ({exc}); {_FORMAT}") from None
    if not isinstance(split, dict) or any(s not in split for s in _SPLITS):
        got = sorted(split) if isinstance(split, dict) else type(split).__name__
        raise IntegrityError(f"split file {path} needs the keys 'train' and 'test' (got {got}); {_FORMAT}")
    for s in _SPLITS:
        entries = split[s]
        if not isinstance(entries, list):
            raise IntegrityError(f"split file {path}: {s!r} must be a list of '<class>/<file>' strings, not "
                                 f"{type(entries).__name__}; {_FORMAT}")
        for i, e in enumerate(entries):
            if not isinstance(e, str):
                raise IntegrityError(f"split file {path}: {s}[{i}] is {e!r} ({type(e).__name__}), not a "
                                     f"'<class>/<file>' string; {_FORMAT}")
    return {s: list(split[s]) for s in _SPLITS}


def _check_entries(root: Path, base: Path, entries: list[str], source: str) -> None:
    """Every entry relative, ``<class>/<file>``, inside ``root`` (symlinks resolved) and an existing file."""
    real_root = root.resolve()
    for e in entries:
        parts = PurePosixPath(e).parts
        if not e or PurePosixPath(e).is_absolute() or Path(e).is_absolute() or ".." in parts:
            raise IntegrityError(f"{source}: entry {e!r} is not a relative path inside {root} (absolute paths and "
                                 "'..' are refused); list images as '<class>/<file>'")
        if len(parts) < 2:
            raise IntegrityError(f"{source}: entry {e!r} is not inside a class folder; list images as "
                                 "'<class>/<file>'")
        if not (base / e).resolve().is_relative_to(real_root):
            raise IntegrityError(f"{source}: entry {e!r} leads outside {root} (through a symbolic link); "
                                 f"only images inside the folder are read")
    missing = [e for e in entries if not (base / e).is_file()]
    if missing:
        raise ResourceMissingError(f"{len(missing)} of the {len(entries)} images listed in {source} do not exist "
                                   f"under {base}, e.g. {', '.join(repr(m) for m in missing[:3])}; restore them or "
                                   "fix the listing")


def resolve_split(root: str | Path, split_file: str | Path | None = DEFAULT_SPLIT_FILE
                  ) -> tuple[dict[str, list[str]], dict[str, Path]]:
    """Find, read and check a folder world's split without reading any image.

    Parameters
    ----------
    root : str or Path
        Dataset folder.
    split_file : str or Path, optional
        Split file relative to ``root`` or absolute (``None`` / ``""``: ``split.json``). When it does
        not exist, ``root/train`` and ``root/test`` are listed instead.

    Returns
    -------
    split : dict
        ``{"train": [...], "test": [...]}`` entries ``"<class>/<file>"``.
    bases : dict
        The folder each split's entries are relative to.

    Raises
    ------
    ConfigError
        No ``root`` given.
    ResourceMissingError
        No such folder, neither a split file nor ``train/`` + ``test/``, or listed images missing.
    IntegrityError
        Malformed split file, or an entry that is absolute, not in a class folder or leads outside ``root``.
    """
    if root is None or str(root) == "":
        raise ConfigError("world 'folder' needs root=<image folder> (CLI: --set root=/path/to/images)")
    root = Path(root)
    if not root.is_dir():
        raise ResourceMissingError(f"image folder {root} does not exist (setting root); point root=... at the "
                                   "dataset folder")
    split_file = split_file or DEFAULT_SPLIT_FILE
    split_path = Path(split_file) if Path(split_file).is_absolute() else root / split_file
    if split_path.is_file():
        split, bases = _read_split(split_path), {s: root for s in _SPLITS}
        sources = {s: f"split file {split_path} ({s})" for s in _SPLITS}
    elif (root / "train").is_dir() and (root / "test").is_dir():
        split = {s: _listing(root / s) for s in _SPLITS}
        bases = {s: root / s for s in _SPLITS}
        sources = {s: f"folder {root / s}" for s in _SPLITS}
    elif str(split_file) != DEFAULT_SPLIT_FILE:
        raise ResourceMissingError(f"split file {split_path} does not exist (setting split_file); fix the path or "
                                   f"leave it empty to use {root / DEFAULT_SPLIT_FILE} or {root}/train + test/")
    else:
        raise ResourceMissingError(f"{root}: no split file ({split_path}) and no train/ + test/ sub-folders; "
                                   f"add one of them ({_FORMAT})")
    for s in _SPLITS:
        _check_entries(root, bases[s], split[s], sources[s])
    if not split["train"]:
        raise IntegrityError(f"{sources['train']} lists no training images; a folder world needs some")
    return split, bases


def split_classes(split: dict[str, list[str]]) -> list[str]:
    """Sorted class-folder names of a checked split (class id = index)."""
    return sorted({PurePosixPath(p).parts[0] for s in _SPLITS for p in split[s]})


def load_folder(root: str | Path, split_file: str | Path | None = DEFAULT_SPLIT_FILE,
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

    Raises
    ------
    ConfigError, ResourceMissingError, IntegrityError
        As :func:`resolve_split`.
    """
    split, bases = resolve_split(root, split_file)
    root = Path(root)
    classes = split_classes(split)
    index = {c: i for i, c in enumerate(classes)}
    pools, digest = {}, hashlib.sha256()
    for s in _SPLITS:
        rel = split[s]
        paths = [bases[s] / p for p in rel]
        labels = np.asarray([index[PurePosixPath(p).parts[0]] for p in rel], dtype=np.int64)
        for r, p in zip(rel, paths, strict=True):
            digest.update(f"{s}:{r}:{p.stat().st_size}\n".encode())
        pools[s] = ImageList(paths, labels)
    counts = np.bincount(pools["train"].labels, minlength=len(classes))
    order = np.lexsort((np.arange(len(classes)), -counts))
    return World(name="folder", class_names=[c.replace("_", " ") for c in classes],
                 templates=list(templates or DEFAULT_TEMPLATES), train_images=pools["train"],
                 train_labels=pools["train"].labels, test_images=pools["test"], test_labels=pools["test"].labels,
                 class_order=order, params={"version": 1, "root_name": root.name, "files": digest.hexdigest()})
