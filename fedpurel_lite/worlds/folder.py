"""Users' own (long-tailed) data: an image folder with one sub-folder per class and a split file.

Layout::

    root/
      <class name>/<image files>
      split.json        {"train": ["<class>/<file>", ...], "test": [...]}

Without a split file, ``root/train/<class>/...`` and ``root/test/<class>/...`` are used. Class ids
follow the sorted class-folder names; ``class_order`` ranks classes by decreasing training count
(ties by id), so head to tail is the data's own.

Standard long-tail benchmarks (ImageNet-LT, Places-LT, iNaturalist-2018) ship OLTR-style text
lists instead, one ``relative/path label`` per line (:func:`load_oltr`): a split file
ending in ``.txt`` is such a training list, with its test list next to it.

Split files are checked before use: valid JSON, lists of ``"<class>/<file>"`` strings, every path
relative and inside ``root`` (no absolute paths, ``..`` or symlinks leading out), every listed
image present. A bad file raises :class:`~fedpurel_lite.errors.IntegrityError`, missing images
:class:`~fedpurel_lite.errors.ResourceMissingError`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from fedpurel_lite.data.safe_load import load_json
from fedpurel_lite.errors import ConfigError, IntegrityError, ResourceMissingError
from fedpurel_lite.worlds.base import DEFAULT_TEMPLATES, World, WorldInfo, by_count, knob, register_world

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

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return img.convert("RGB"), int(self.labels[i])


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _read_split(path: Path) -> dict[str, list[str]]:
    """Parse and type-check a split file (no file-system checks of its entries)."""
    try:
        split = load_json(path, "split file")
    except IntegrityError as exc:
        raise IntegrityError(f"{exc}; {_FORMAT}") from None
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


def _check_entries(root: Path, base: Path, entries: list[str], source: str, class_folder: bool = True) -> None:
    """Every entry relative, inside ``root`` (symlinks resolved), an existing file; in a folder (``class_folder``)."""
    real_root = root.resolve()
    for e in entries:
        parts = PurePosixPath(e).parts
        if not e or "\0" in e or PurePosixPath(e).is_absolute() or Path(e).is_absolute() or ".." in parts:
            raise IntegrityError(f"{source}: entry {e!r} is not a relative path inside {root} (absolute paths and "
                                 "'..' are refused); list images as '<class>/<file>'")
        if class_folder and len(parts) < 2:
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
        raise ConfigError("world 'folder' needs root=<image folder> (world.folder.root; CLI: --set "
                          "root=/path/to/images)")
    root = Path(root)
    if not root.is_dir():
        raise ResourceMissingError(f"image folder {root} does not exist (setting world.folder.root); point root=... at "
                                   "the dataset folder")
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
        raise ResourceMissingError(f"split file {split_path} does not exist (setting world.folder.split_file); fix "
                                   f"the path or leave it empty to use {root / DEFAULT_SPLIT_FILE} or {root}/train + "
                                   "test/")
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
                templates: list[str] | None = None, test_split_file: str | Path | None = None,
                class_names_file: str | Path | None = None) -> World:
    """Load an image-folder world.

    Parameters
    ----------
    root : str or Path
        Dataset folder.
    split_file : str or Path, optional
        JSON file (relative to ``root`` or absolute) with ``"train"`` and ``"test"`` lists of
        ``"<class>/<file>"``; if it does not exist, ``root/train`` and ``root/test`` are used. A
        ``.txt`` file is an OLTR-style training list (:func:`load_oltr`).
    templates : list of str, optional
        Prompt templates (default: CLIP-style photo templates).
    test_split_file, class_names_file : str or Path, optional
        OLTR lists only: the test list and the class names (see :func:`load_oltr`).

    Returns
    -------
    World

    Raises
    ------
    ConfigError, ResourceMissingError, IntegrityError
        As :func:`resolve_split`.
    """
    if str(split_file or "").endswith(".txt"):
        return load_oltr(root, str(split_file), None if test_split_file is None else str(test_split_file),
                         None if class_names_file is None else str(class_names_file), templates)
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


# ---------------------------------------------------------------------- OLTR-style text lists
_OLTR_FORMAT = "expected one 'relative/path label' per line (label an integer >= 0), paths relative to the folder"


def oltr_test_file(split_file: str, test_split_file: str | None = None) -> str:
    """The test list of an OLTR training list: ``test_split_file``, else the name with ``train`` -> ``test``.

    Raises
    ------
    ConfigError
        No test list given and the training list's name has no ``train`` in it.
    """
    if test_split_file:
        return str(test_split_file)
    head, sep, tail = str(split_file).rpartition("train")
    if not sep:
        raise ConfigError(f"world.folder.split_file={split_file!r} is an OLTR list (.txt) without 'train' in its name; "
                          "set world.folder.test_split_file to its test list")
    return head + "test" + tail


def read_oltr_list(path: Path) -> tuple[list[str], np.ndarray]:
    """Entries and labels of one OLTR list (blank lines skipped; no file-system checks of the entries).

    Raises
    ------
    IntegrityError
        Not UTF-8 text, or a line that is not ``path label``, naming the file and the line number.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise IntegrityError(f"split file {path} cannot be read as UTF-8 text ({exc}); {_OLTR_FORMAT}") from None
    entries, labels = [], []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.rsplit(None, 1)
        if len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit()) or len(fields[1]) > 18:
            raise IntegrityError(f"split file {path}, line {n}: {line.strip()!r} is not 'relative/path label'; "
                                 f"{_OLTR_FORMAT}")
        entries.append(fields[0].strip())
        labels.append(int(fields[1]))
    return entries, np.asarray(labels, dtype=np.int64)


def write_oltr_list(path: str | Path, entries: list[str], labels: list[int] | np.ndarray) -> None:
    """Write an OLTR list: one ``relative/path label`` line per entry."""
    Path(path).write_text("".join(f"{e} {int(y)}\n" for e, y in zip(entries, labels, strict=True)), encoding="utf-8")


def resolve_oltr(root: str | Path, split_file: str, test_split_file: str | None = None
                 ) -> tuple[dict[str, list[str]], dict[str, np.ndarray], dict[str, Path]]:
    """Find, read and check an OLTR train and test list without reading any image.

    Returns
    -------
    (entries, labels, lists)
        Per split (``"train"``, ``"test"``): paths relative to ``root``, integer labels, the list file.

    Raises
    ------
    ConfigError
        No ``root``.
    ResourceMissingError
        ``root`` or a list missing (naming both lists), or listed images missing.
    IntegrityError
        A malformed line (file and line number), an unsafe path, or a class with no training image.
    """
    if root is None or str(root) == "":
        raise ConfigError("world 'folder' needs root=<image folder> (world.folder.root; CLI: --set "
                          "root=/path/to/images)")
    root = Path(root)
    names = {"train": str(split_file), "test": oltr_test_file(split_file, test_split_file)}
    lists = {s: Path(n) if Path(n).is_absolute() else root / n for s, n in names.items()}
    if not root.is_dir():
        raise ResourceMissingError(f"image folder {root} does not exist (world.folder.root): it must hold the images "
                                   f"listed in {lists['train']} and {lists['test']} and those two split files "
                                   "(OLTR-style lists); download the dataset and its lists, then point "
                                   "world.folder.root at it")
    missing = [str(p) for p in lists.values() if not p.is_file()]
    if missing:
        raise ResourceMissingError(f"split file(s) {', '.join(missing)} not found (world.folder.split_file / "
                                   f"world.folder.test_split_file); {_OLTR_FORMAT}")
    entries, labels = {}, {}
    for s in _SPLITS:
        entries[s], labels[s] = read_oltr_list(lists[s])
        _check_entries(root, root, entries[s], f"split file {lists[s]}", class_folder=False)
    if not entries["train"]:
        raise IntegrityError(f"split file {lists['train']} lists no training images; a folder world needs some")
    num_classes = int(max(labels["train"].max(), labels["test"].max(initial=0))) + 1
    empty = np.flatnonzero(np.bincount(labels["train"], minlength=num_classes) == 0)
    if empty.size:
        raise IntegrityError(f"split file {lists['train']}: label(s) {', '.join(map(str, empty[:5]))} have no training "
                             f"image (labels must run 0..{num_classes - 1}, each with training images)")
    return entries, labels, lists


def _oltr_names(entries: list[str], labels: np.ndarray, num_classes: int, names_file: Path | None) -> list[str]:
    """Class names: from ``names_file`` (``"<label or folder> <name>"`` lines) or the images' folder names."""
    folders = [""] * num_classes
    for e, y in zip(entries, labels, strict=True):
        folders[y] = folders[y] or PurePosixPath(e).parent.name
    if names_file is None:
        return [f.replace("_", " ") or f"class {c}" for c, f in enumerate(folders)]
    if not names_file.is_file():
        raise ResourceMissingError(f"class-name file {names_file} not found (world.folder.class_names_file)")
    given: dict[str, str] = {}
    for n, line in enumerate(names_file.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.strip().split(None, 1)
        if len(parts) == 1:
            raise IntegrityError(f"class-name file {names_file}, line {n}: {line.strip()!r} is not '<label or folder> "
                                 "<name>'")
        if parts:
            given[parts[0]] = parts[1].strip()
    names = [given.get(str(c), given.get(folders[c], "")) for c in range(num_classes)]
    absent = [c for c, name in enumerate(names) if not name]
    if absent:
        raise IntegrityError(f"class-name file {names_file} names no class {absent[0]} (folder "
                             f"{folders[absent[0]]!r}); {len(absent)} class(es) missing")
    return names


def load_oltr(root: str | Path, split_file: str, test_split_file: str | None = None,
              class_names_file: str | None = None, templates: list[str] | None = None) -> World:
    """Load a folder world from OLTR-style lists (ImageNet-LT, Places-LT, iNaturalist-2018).

    Parameters
    ----------
    root : str or Path
        Folder the listed paths are relative to.
    split_file : str
        Training list (``ImageNet_LT_train.txt``), relative to ``root`` or absolute.
    test_split_file : str, optional
        Test list (default: ``split_file`` with its last ``train`` replaced by ``test``).
    class_names_file : str, optional
        ``"<label or folder> <class name>"`` per line (default: each class's image-folder name).
    templates : list of str, optional
        Prompt templates (default: CLIP-style photo templates).

    Returns
    -------
    World
        Labels as listed; the training list is the long-tailed set as it is (use
        ``longtail.profile = "given"``); ``class_order`` by decreasing training count.

    Raises
    ------
    ConfigError, ResourceMissingError, IntegrityError
        As :func:`resolve_oltr`, and a bad class-name file.
    """
    entries, labels, lists = resolve_oltr(root, split_file, test_split_file)
    root = Path(root)
    num_classes = int(max(labels["train"].max(), labels["test"].max(initial=0))) + 1
    names_path = None
    if class_names_file:
        names_path = Path(class_names_file) if Path(class_names_file).is_absolute() else root / class_names_file
    names = _oltr_names(entries["train"] + entries["test"], np.concatenate([labels["train"], labels["test"]]),
                        num_classes, names_path)
    digest = hashlib.sha256("\n".join(names).encode())
    pools = {}
    for s in _SPLITS:
        paths = [root / e for e in entries[s]]
        for e, y, p in zip(entries[s], labels[s], paths, strict=True):
            digest.update(f"{s}:{e}:{y}:{p.stat().st_size}\n".encode())
        pools[s] = ImageList(paths, labels[s])
    counts = np.bincount(labels["train"], minlength=num_classes)
    order = np.lexsort((np.arange(num_classes), -counts))
    return World(name="folder", class_names=names, templates=list(templates or DEFAULT_TEMPLATES),
                 train_images=pools["train"], train_labels=labels["train"], test_images=pools["test"],
                 test_labels=labels["test"], class_order=order,
                 params={"version": 1, "format": "oltr", "root_name": root.name, "lists": lists["train"].name,
                         "files": digest.hexdigest()})


@dataclass(frozen=True)
class FolderConfig:
    """``[world.folder]``: the image folder and its split files."""

    root: str = knob("", "the image folder (required); list paths are relative to it")
    split_file: str = knob("", "split file relative to root: JSON, or an OLTR .txt training list ('' = split.json, "
                           "else train/ + test/)")
    test_split_file: str = knob("", "OLTR lists: the test list ('' = split_file with train -> test)")
    class_names_file: str = knob("", "OLTR lists: '<label or folder> <name>' lines ('' = the folder names)")


def describe_folder(section: FolderConfig) -> WorldInfo:
    """Class count, per-class training counts and the class order from the split alone (no image read)."""
    if section.split_file.endswith(".txt"):
        _, labels, _ = resolve_oltr(section.root, section.split_file, section.test_split_file or None)
        n = int(max(labels["train"].max(), labels["test"].max(initial=0))) + 1
        counts = np.bincount(labels["train"], minlength=n)
        return WorldInfo("folder", n, counts, by_count(counts))
    split, _ = resolve_split(section.root, section.split_file or None)
    classes = split_classes(split)
    index = {c: i for i, c in enumerate(classes)}
    ids = np.asarray([index[PurePosixPath(p).parts[0]] for p in split["train"]], dtype=np.int64)
    counts = np.bincount(ids, minlength=len(classes))
    return WorldInfo("folder", len(classes), counts, by_count(counts))


#: largest class-name or OLTR list file read (the iNaturalist-2018 lists are about 30 MB)
MAX_LIST_BYTES = 1024 * 1024 * 1024


def _check_entry_text(entry: object, source: Path) -> None:
    """A listed path the file system can be asked about (no NUL character)."""
    if isinstance(entry, str) and "\x00" in entry:
        raise IntegrityError(f"split file {source}: the entry {entry!r} holds a NUL character; not a file path")


def check_folder_files(section: FolderConfig) -> None:
    """Read the split and class-name files now, bounded, before any image is read (the pre-flight).

    A split file is parsed through :func:`fedpurel_lite.data.safe_load.load_json` (size, nesting, UTF-8);
    with OLTR lists and ``world.folder.class_names_file``, every class must be named, checked from
    the lists alone, so a bad class-name file is reported before the world's images are loaded.

    Raises
    ------
    UserError
        Naming the file (and the line).
    """
    from fedpurel_lite.data.safe_load import read_bounded

    if not section.root:
        return
    root = Path(section.root)
    split_file = section.split_file or DEFAULT_SPLIT_FILE
    split_path = Path(split_file) if Path(split_file).is_absolute() else root / split_file
    if not split_file.endswith(".txt"):
        if split_path.is_file():
            split = load_json(split_path, "split file")
            for part in split.values() if isinstance(split, dict) else ():
                for entry in part if isinstance(part, list) else ():
                    _check_entry_text(entry, split_path)
        return
    test_file = Path(oltr_test_file(split_file, section.test_split_file or None))
    lists = [split_path, test_file if test_file.is_absolute() else root / test_file]
    if not all(p.is_file() for p in lists):
        return  # describe names the missing list
    read = []
    for path in lists:
        read_bounded(path, "split file", MAX_LIST_BYTES)
        try:
            read.append(read_oltr_list(path))
        except (ValueError, OverflowError) as exc:  # a label that is not a plain integer
            raise IntegrityError(f"split file {path}: a label is not an integer in 0..2^63 ({exc})") from None
    for (entries, _), path in zip(read, lists, strict=True):
        for entry in entries:
            _check_entry_text(entry, path)
    train, labels = read[0][1], np.concatenate([r[1] for r in read])
    if labels.size and int(labels.max()) >= max(len(train), 1):
        raise IntegrityError(f"split file {lists[int(read[1][1].max(initial=-1)) == int(labels.max())]}: label "
                             f"{int(labels.max())}, but labels must run 0..C-1 with training images for each, and "
                             f"{lists[0]} lists {len(train)} training images")
    if not section.class_names_file:
        return
    names_path = Path(section.class_names_file)
    names_path = names_path if names_path.is_absolute() else root / names_path
    if not names_path.is_file():
        raise ResourceMissingError(f"class-name file {names_path} not found (world.folder.class_names_file)")
    read_bounded(names_path, "class-name file", MAX_LIST_BYTES)
    if labels.size:
        _oltr_names(read[0][0] + read[1][0], labels, int(labels.max()) + 1, names_path)


@register_world("folder", config=FolderConfig, describe=describe_folder, check_files=check_folder_files,
                description="your own images: one sub-folder per class and a split file (or OLTR lists)")
def load_folder_world(section: FolderConfig, **extra: Any) -> World:
    """The folder world of a config section (``extra``: :func:`load_folder`'s ``templates``)."""
    return load_folder(section.root, section.split_file or DEFAULT_SPLIT_FILE,
                       test_split_file=section.test_split_file or None,
                       class_names_file=section.class_names_file or None, **extra)
