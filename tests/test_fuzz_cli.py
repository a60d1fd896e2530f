"""Property-based tests of the command line and the files it reads: no input ends in a traceback.

Hypothesis drives the real entry points -- ``python -m fedpurel_lite <command>`` through
:func:`fedpurel_lite.__main__.main`, in this process -- with arbitrary values, types, bytes, nesting
and sizes: split files (JSON and OLTR lists), class-name files, ``pretrain``, ``flower certs``,
``report`` and ``demo`` options and every command's argument list; and the loaders behind them
with damaged feature-cache and checkpoint manifests. One property everywhere: **the command
either reaches its work (every check passed) or ends with exactly one ``error:`` line, exit code 2,
with every file already on disk unchanged**. The work itself (loading, encoding, training, drawing,
key generation) is trapped here: reaching it is the "accepted" outcome, and its results are tested
elsewhere. A feature cache whose manifest is damaged in any way is moved aside and rebuilt; a
damaged checkpoint gives a :class:`~fedpurel_lite.errors.UserError` naming it.

Examples are derandomised (the same every run) and few per property, so the file stays within
about a minute and a half on a loaded 2-core machine; inputs that once failed are kept as
explicit ``@example`` cases. The examples of the hardening list are one table at the end.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fedpurel_lite.__main__ import main
from fedpurel_lite.engine.simulate import run as REAL_RUN  # captured before the module's trap replaces it

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "configs" / "embedded.toml"
SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


class WorkStarted(Exception):
    """Raised by every trapped work function: the input passed every check."""


@pytest.fixture(scope="module", autouse=True)
def trapped():
    """Trap the work of every command (loading, training, drawing, keys, notebooks) for the whole module."""
    import fedpurel_lite.cli.demo as demo
    import fedpurel_lite.cli.pretrain as pretrain
    import fedpurel_lite.engine.assembly as assembly
    import fedpurel_lite.engine.simulate as simulate
    import fedpurel_lite.flower.certs as certs
    import fedpurel_lite.views.report as report

    def work(*args, **kwargs):
        raise WorkStarted

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        for module, name in ((assembly, "load_bank"), (simulate, "run"), (simulate, "compare"),
                             (pretrain, "pretrain"), (pretrain, "report"), (certs, "make_ca"),
                             (report, "write_report"), (demo, "execute"), (demo.kernels, "pin")):
            mp.setattr(module, name, work if name != "pin" else (lambda: None))
        yield
    torch.set_num_threads(threads)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def outcome(argv: list[str], watched: Path) -> str:
    """Run the command; ``"work"``, ``"done"`` (exit 0) or ``"error"`` (checked: one line, exit 2, no file changed)."""
    before = _files(watched)
    err, out = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings.catch_warnings():
            code = main(list(argv))
    except WorkStarted:
        return "work"
    finally:
        torch.set_num_threads(threads)
    text = err.getvalue()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("warning: ")]
    if code == 0:
        assert not lines, text
        return "done"
    assert code == 2, (argv, text)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text, (argv, text)
    assert _files(watched) == before, argv
    return "error"


# ----------------------------------------------------------------------------- values
ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                        max_leaves=20)
ENTRIES = st.sampled_from(["cat/0.png", "cat/1.png", "dog/0.png", "dog/2.png", "cat/9.png", "../cat/0.png",
                           "/etc/passwd", "", "cat", "cat/../../x.png", "cat/\x00.png", "ca t/0.png", "dog//1.png"])
NUMBER_TEXT = st.one_of(st.integers().map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                        st.sampled_from(["", "nan", "-inf", "1e308", "9223372036854775808", "0x10", "1_000", "½",
                                         "٣", " 5", "5 "]),
                        st.text(max_size=6))

#: mostly in-range numbers (so the checks after parsing run), sometimes anything
INT_TEXT = st.one_of(st.integers(-5, 3000).map(str), st.integers(-5, 3000).map(str), NUMBER_TEXT)
FLOAT_TEXT = st.one_of(st.floats(-1, 2).map(repr), st.floats(-1, 2).map(repr), NUMBER_TEXT)


def deep(n: int, open_: str = "[", close: str = "]") -> str:
    return open_ * n + close * n


def _nested_text(kind: str) -> st.SearchStrategy[str]:
    """JSON text: structured, raw, or nested 1..20,000 levels (arrays, objects)."""
    nested = st.integers(1, 20_000).map(lambda n: '{"train": ' + deep(n) + ', "test": []}')
    objects = st.integers(1, 5_000).map(lambda n: '{"a":' * n + "1" + "}" * n)
    split = st.fixed_dictionaries({"train": st.lists(ENTRIES, max_size=6), "test": st.lists(ENTRIES, max_size=4)})
    return st.one_of(split.map(json.dumps), ANY_JSON.map(json.dumps), nested, objects, st.text(max_size=40))


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """Two class folders of three 8x8 PNGs."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fuzz_images")
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, c * 90, 0)).save(root / cls / f"{i}.png")
    return root


def _folder_run(root: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--config", str(EMBEDDED), "--out", str(out), "--set", "world=folder", f"world.folder.root={root}",
            "num_clients=2", "min_client_size=1", "participation=1", "profile=given", *extra]


# ----------------------------------------------------------------------------- split and class-name files
@settings(max_examples=12, **SETTINGS)
@given(text=_nested_text("split"))
@example(text='{"train": ' + deep(5000) + ', "test": []}')
@example(text=json.dumps({"train": ["cat/0.png", "dog/0.png"], "test": ["cat/1.png"]}))
def test_split_files(image_root, text):
    (image_root / "split.json").write_text(text, encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        outcome(_folder_run(image_root, Path(tmp) / "out"), image_root)


OLTR_LINE = st.one_of(st.tuples(ENTRIES, NUMBER_TEXT).map(" ".join), st.text(max_size=20),
                      st.sampled_from(["cat/0.png 0", "dog/0.png 1", "cat/1.png 0", "dog/1.png 99999999999999999999",
                                       "cat/2.png ²", "cat/2.png 1000000000", "", "   "]))


@settings(max_examples=12, **SETTINGS)
@given(train=st.lists(OLTR_LINE, max_size=6), test=st.lists(OLTR_LINE, max_size=4),
       names=st.none() | st.binary(max_size=60) | st.lists(st.text(max_size=12), max_size=4).map("\n".join))
@example(train=["cat/0.png 0", "dog/0.png 99999999999999999999"], test=[], names=None)
@example(train=["cat/0.png 0", "dog/0.png 1"], test=["cat/1.png 0"], names=b"\xff\xfe0 cat\n")
@example(train=["cat/0.png 0", "dog/0.png 1"], test=["cat/1.png 0"], names="0 cat\n1 dog")
@example(train=["cat/0.png 0", "dog/0.png 1000000000"], test=[], names=None)
def test_oltr_lists_and_class_name_files(image_root, train, test, names):
    (image_root / "x_train.txt").write_text("\n".join(train), encoding="utf-8")
    (image_root / "x_test.txt").write_text("\n".join(test), encoding="utf-8")
    extra = ["world.folder.split_file=x_train.txt"]
    if names is not None:
        path = image_root / "names.txt"
        path.write_bytes(names if isinstance(names, bytes) else names.encode("utf-8", "surrogatepass"))
        extra.append("world.class_names_file=names.txt")
    with tempfile.TemporaryDirectory() as tmp:
        outcome(_folder_run(image_root, Path(tmp) / "out", *extra), image_root)


# ----------------------------------------------------------------------------- command options
@settings(max_examples=25, **SETTINGS)
@given(steps=INT_TEXT, batch=INT_TEXT, lr=FLOAT_TEXT, threads=INT_TEXT, seed=INT_TEXT, shift=FLOAT_TEXT,
       out=st.sampled_from(["new", "file", "dir", "shipped", "under-file", ""]),
       flags=st.lists(st.sampled_from(["--overwrite", "--replace-shipped", "--report"]), max_size=2, unique=True))
@example(steps="-5", batch="256", lr="0.001", threads="1", seed="0", shift="0.5", out="new", flags=[])
@example(steps="800", batch="256", lr="0.001", threads="1", seed="0", shift="0.5", out="shipped", flags=[])
@example(steps="800", batch="0", lr="nan", threads="-1", seed="0", shift="0.5", out="new", flags=[])
def test_pretrain_options(steps, batch, lr, threads, seed, shift, out, flags, tmp_path):
    from fedpurel_lite.data.backbone import EMBEDDED_WEIGHTS

    shipped_before = EMBEDDED_WEIGHTS.read_bytes() if EMBEDDED_WEIGHTS.exists() else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "file").write_text("mine")
        (tmp / "dir").mkdir()
        target = {"new": str(tmp / "new.safetensors"), "file": str(tmp / "file"), "dir": str(tmp / "dir"),
                  "shipped": str(EMBEDDED_WEIGHTS), "under-file": str(tmp / "file" / "w"), "": ""}[out]
        argv = ["pretrain", "--steps", steps, "--batch-size", batch, "--lr", lr, "--threads", threads, "--seed", seed,
                "--shift", shift, "--out", target, *flags]
        result = outcome(argv, tmp)
        if result == "work" and "--report" not in flags:
            assert 1 <= int(steps) and 1 <= int(batch) and 0 < float(lr) <= 1 and math.isfinite(float(lr))
            assert out in ("new", "shipped", "file") and (out != "shipped" or "--replace-shipped" in flags)
            assert out != "file" or "--overwrite" in flags
    assert (EMBEDDED_WEIGHTS.read_bytes() if EMBEDDED_WEIGHTS.exists() else None) == shipped_before


@settings(max_examples=25, **SETTINGS)
@given(days=INT_TEXT, nodes=INT_TEXT, hosts=st.lists(st.text(max_size=12) | st.sampled_from(
    ["localhost", "10.0.0.1", "::1", "a..b", "-x", "ü.example", "x" * 300]), max_size=3),
    where=st.sampled_from(["new", "file", "credentials"]))
@example(days="-5", nodes="20", hosts=[], where="new")
@example(days="30", nodes="2", hosts=["ü.example"], where="new")
def test_flower_certs_options(days, nodes, hosts, where):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "file").write_text("mine")
        (tmp / "credentials").mkdir()
        (tmp / "credentials" / "ca.crt").write_text("old")
        argv = ["flower", "certs", str(tmp / where), "--days", days, "--nodes", nodes]
        if hosts:
            argv += ["--host", *hosts]
        if outcome(argv, tmp) == "work":
            assert 1 <= int(days) <= 3650 and 0 <= int(nodes) <= 1000 and where == "new"


@pytest.fixture(scope="module")
def run_folder(core_bank, tmp_path_factory) -> Path:
    """A one-round run folder of the synthetic bank (made with the simulator the module trap replaced)."""
    from fedpurel_lite.config import RunConfig

    config = RunConfig().with_overrides(dict(num_clients=4, participation=0.5, rounds=1, imbalance_ratio=10,
                                             min_client_size=5, batch_size=16, seed=3, method="fedavg"))
    return REAL_RUN(config, bank=core_bank, progress=False).save(tmp_path_factory.mktemp("fuzz_run") / "fedavg")


@settings(max_examples=15, **SETTINGS)
@given(mass=FLOAT_TEXT, title=st.text(max_size=30), out=st.sampled_from(["new", "file", "runs", ""]),
       extra=st.lists(st.sampled_from(["missing", "file", "same"]), max_size=2))
@example(mass="0.5", title="\udc80", out="new", extra=[])
@example(mass="nan", title="t", out="new", extra=[])
def test_report_options(run_folder, mass, title, out, extra):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "file").write_text("mine")
        runs = [str(run_folder)] + [{"missing": str(tmp / "nowhere"), "file": str(tmp / "file"),
                                     "same": str(run_folder)}[e] for e in extra]
        target = {"new": str(tmp / "rep"), "file": str(tmp / "file"), "runs": str(tmp), "": ""}[out]
        result = outcome(["report", *runs, "--out", target, "--local-mass", mass, "--title", title], tmp)
        if result == "work":
            assert 0 < float(mass) <= 1 and out in ("new", "runs") and not {"missing", "file"} & set(extra)


@settings(max_examples=15, **SETTINGS)
@given(argv=st.lists(st.sampled_from(["--only", "01", "99", "0", "--no-html", "--no-site", "--bogus", "-x", "",
                                      "--only=02"]) | st.text(max_size=6), max_size=4))
def test_demo_options(argv, tmp_path):
    outcome(["demo", *argv, "--no-site"] if "--bogus" not in argv else ["demo", *argv], tmp_path)


OPTIONS = ["--config", "--set", "--out", "--resume", "--resume-round", "--overwrite", "--methods", "--csv", "--report",
           "--quiet", "--steps", "--lr", "--local-mass", "--title", "-h", "x", "1", "-1", "nan", "rounds=1", "lr=1e308",
           "="]


@settings(max_examples=25, **SETTINGS)
@given(command=st.sampled_from(["run", "compare", "features", "report", "pretrain", "flower", "bogus", ""]),
       argv=st.lists(st.sampled_from(OPTIONS) | st.text(max_size=8), max_size=5))
@example(command="run", argv=["--resume-round", "x"])
@example(command="", argv=[])
def test_argument_lists_of_every_command(command, argv):
    if "-h" in argv or "--help" in argv:
        return  # help prints the usage block by design
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        outcome([command, *argv] if command else argv, Path(tmp))


# ----------------------------------------------------------------------------- manifests
def _tiny_bank(seed: int = 0):
    from fedpurel_lite.data.features import FeatureBank

    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=-1)
    return FeatureBank(f, torch.tensor([0, 1, 2, 0, 1, 2]), f[:3].clone(), torch.tensor([0, 1, 2]), f[:3].clone(),
                       20.0, ["a", "b", "c"], np.array([0, 1, 2]),
                       {"inputs": INPUTS, "class_names": ["a", "b", "c"], "class_order": [0, 1, 2],
                        "logit_scale": 20.0})


INPUTS = {"world": "fuzz:1", "model": "tiny"}


def _entry(folder: str | Path) -> Path:
    from fedpurel_lite.data.features import _key

    return Path(folder) / _key(INPUTS)


def _damage(manifest: dict, how: str, key: str, value, n: int) -> str:
    from fedpurel_lite.data.cache_entry import DIGEST, manifest_digest

    if how == "nested":
        return '{"inputs": ' + deep(n) + "}"
    if how == "nested-object":
        return '{"x":' * n + "1" + "}" * n
    edited = {**manifest, key: value}
    if how == "re-digested":  # a valid digest over wrong content: the field checks must catch it
        try:
            edited[DIGEST] = manifest_digest(edited)
        except (TypeError, ValueError):
            pass
    return json.dumps(edited)


MANIFEST_KEYS = ["inputs", "class_names", "class_order", "logit_scale", "content_sha256", "shapes",
                 "manifest_sha256", "format", "round", "method", "config", "history", "tensors"]


@settings(max_examples=25, **SETTINGS)
@given(how=st.sampled_from(["nested", "nested-object", "edited", "re-digested"]), key=st.sampled_from(MANIFEST_KEYS),
       value=ANY_JSON, n=st.integers(1, 20_000))
@example(how="nested", key="inputs", value=None, n=5000)
def test_damaged_feature_cache_manifests_are_moved_aside_and_rebuilt(how, key, value, n):
    from fedpurel_lite.data.features import FeatureBank, FeatureCacheWarning

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        base = _entry(tmp)
        bank = _tiny_bank()
        bank.save(base)
        mpath = base.with_suffix(".json")
        mpath.write_text(_damage(json.loads(mpath.read_text()), how, key, value, n))
        mp.setattr(FeatureBank, "build", classmethod(lambda cls, *a, **k: _tiny_bank()))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = FeatureBank._load_or_build(tmp, INPUTS, lambda: (None, None), False, 8, None)
        damaged = [w for w in caught if issubclass(w.category, FeatureCacheWarning)]
        assert torch.isfinite(got.train_features).all()
        if damaged:  # moved aside, rebuilt, and the rebuilt entry reads back without a warning
            assert len(damaged) == 1 and list(Path(tmp).glob(f"{base.name}.json.corrupt-*"))
            with warnings.catch_warnings():
                warnings.simplefilter("error", FeatureCacheWarning)
                FeatureBank._load_or_build(tmp, INPUTS, lambda: (None, None), False, 8, None)
        else:  # an edit that leaves the entry intact (a stale entry is rebuilt silently)
            assert how != "nested"


@settings(max_examples=15, **SETTINGS)
@given(how=st.sampled_from(["nested", "nested-object", "edited", "re-digested"]), key=st.sampled_from(MANIFEST_KEYS),
       value=ANY_JSON, n=st.integers(1, 20_000))
@example(how="nested", key="history", value=None, n=5000)
@example(how="edited", key="config", value=None, n=1)
@example(how="re-digested", key="config", value=[1], n=1)
def test_damaged_checkpoint_manifests_give_one_error(how, key, value, n):
    from fedpurel_lite.config import RunConfig
    from fedpurel_lite.engine.checkpoint import check_output_dir, check_resumable, find_resume_point, save_checkpoint
    from fedpurel_lite.errors import UserError

    config = RunConfig().with_overrides({"rounds": 3}).to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "checkpoint"
        path = save_checkpoint(ckpt, 0, config, "fedpurel", [{"round": 0}], {"global/w": torch.ones(3)})
        from fedpurel_lite.engine.checkpoint import canonical_json, sha256_bytes

        meta = json.loads(path.read_text())
        text = _damage(meta, "edited" if how == "re-digested" else how, key, value, n)
        if how == "re-digested":
            try:
                edited = json.loads(text)
                edited.pop("manifest_sha256", None)
                edited["manifest_sha256"] = sha256_bytes(canonical_json(edited).encode())
                text = json.dumps(edited)
            except (TypeError, ValueError, AttributeError):
                pass
        path.write_text(text)
        try:
            check_output_dir(tmp, config, "fedpurel")
        except UserError:
            pass
        try:
            check_resumable(find_resume_point(ckpt), config, "fedpurel")
        except UserError as exc:
            assert "\n" not in str(exc)


# ----------------------------------------------------------------------------- the hardening list, one row each
def _lines(argv: list[str]) -> tuple[int, str, str]:
    """Exit code (-1: the work was reached), stdout and stderr of one command."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings.catch_warnings():
        try:
            code = main(argv)
        except WorkStarted:
            code = -1
    return code, out.getvalue(), err.getvalue()


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _deep_toml(tmp: Path) -> list[str]:
    (tmp / "deep.toml").write_text('[world]\nname = "shapes"\n[stage1]\nlr = ' + deep(3000) + "\n")
    return ["run", "--config", str(tmp / "deep.toml"), "--out", str(tmp / "out")]


def _deep_split(tmp: Path) -> list[str]:
    (tmp / "imgs").mkdir()
    (tmp / "imgs" / "split.json").write_text('{"train": ' + deep(3000) + ', "test": []}')
    return _folder_run(tmp / "imgs", tmp / "out")


def _deep_checkpoint(tmp: Path) -> list[str]:
    (tmp / "out" / "checkpoint").mkdir(parents=True)
    (tmp / "out" / "checkpoint" / "round_00000.json").write_text('{"history": ' + deep(3000) + "}")
    return ["run", "--config", str(EMBEDDED), "--out", str(tmp / "out"), "--resume"]


def _names_file(tmp: Path) -> list[str]:
    root = tmp / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    from PIL import Image

    for cls in ("cat", "dog"):
        Image.new("RGB", (8, 8)).save(root / cls / "0.png")
    (root / "t_train.txt").write_text("cat/0.png 0\ndog/0.png 1\n")
    (root / "t_test.txt").write_text("cat/0.png 0\n")
    (root / "names.txt").write_text("0 cat\n")  # class 1 unnamed
    return _folder_run(root, tmp / "out", "world.folder.split_file=t_train.txt",
                       "world.folder.class_names_file=names.txt")


TABLE = [  # (name, argv builder, what the one error line must say; None: must reach the work)
    ("deep TOML value in a config file", _deep_toml, "nested too deeply"),
    ("deep JSON split file", _deep_split, "nested too deeply"),
    ("deep checkpoint manifest, resumed", _deep_checkpoint, "nested too deeply"),
    ("class-name problem before loading", _names_file, "names no class 1"),
    ("pretrain --steps -5", lambda t: ["pretrain", "--steps", "-5", "--out", str(t / "w")], "--steps -5: allowed"),
    ("pretrain onto the shipped weights", lambda t: ["pretrain", "--out", "data/fedpurel-tiny.safetensors"],
     "is the shipped weights file.*--replace-shipped"),
    ("pretrain --batch-size 0", lambda t: ["pretrain", "--batch-size", "0", "--out", str(t / "w")],
     "--batch-size 0: allowed"),
    ("pretrain --lr nan", lambda t: ["pretrain", "--lr", "nan", "--out", str(t / "w")], "--lr nan: allowed"),
    ("pretrain --threads -1", lambda t: ["pretrain", "--threads", "-1", "--out", str(t / "w")], "--threads -1"),
    ("flower certs --days -5", lambda t: ["flower", "certs", str(t / "c"), "--days", "-5"], "--days -5: allowed"),
    ("compare --csv is a folder", lambda t: ["compare", "--config", str(EMBEDDED), "--methods", "fedavg", "--csv",
                                             str(t)], "is a folder; name a file"),
    ("report --out is a file", lambda t: (t / "f").write_text("x") and ["report", str(t), "--out", str(t / "f")],
     "is an existing file"),
    ("run folder's checkpoint is a file", lambda t: ((t / "o").mkdir(), (t / "o" / "checkpoint").write_text("x"),
                                                     ["run", "--config", str(EMBEDDED), "--out", str(t / "o")])[2],
     "checkpoint is in the way"),
    ("argparse error", lambda t: ["run", "--bogus"], "unrecognized arguments: --bogus"),
    ("rounds=1000000, 1,000 local epochs", lambda t: ["run", "--config", str(EMBEDDED), "--out", str(t / "o"), "--set",
                                                      "rounds=1000000", "local_epochs=1000"],
     "--ignore-resources to start anyway"),
]


@pytest.mark.parametrize(("build", "pattern"), [r[1:] for r in TABLE], ids=[r[0] for r in TABLE])
def test_hardening_examples(build, pattern, tmp_path, monkeypatch):
    import re

    monkeypatch.chdir(ROOT)
    argv = build(tmp_path)
    before = _files(tmp_path)
    code, _, err = _lines(argv)
    assert code == 2, err
    assert re.search(pattern, _error_line(err)), err
    assert _files(tmp_path) == before


def test_threads_are_clipped_and_large_caches_announced(tmp_path, monkeypatch):
    """``workers=1024 num_threads=1024``: a warning each, clipped; a LoRA run announces its 522 MB token cache."""
    import fedpurel_lite.engine.simulate as simulate
    from fedpurel_lite.engine.workers import available_cores

    seen = {}

    def capture(config, **kwargs):
        seen["run"] = config.run
        raise WorkStarted

    monkeypatch.setattr(simulate, "run", capture)
    code, out, err = _lines(["run", "--config", str(EMBEDDED), "--out", str(tmp_path / "o"), "--set", "rounds=1",
                                "workers=1024", "num_threads=1024", "peft=lora"])
    assert code == -1, err
    cores = available_cores()
    assert seen["run"].workers == cores and seen["run"].workers * seen["run"].num_threads <= cores
    assert f"run.workers=1024: this machine gives this process {cores} cores" in err
    assert re.search(r"note: the vision-token cache .* takes 522 MB", out), out



def test_make_app_serves_with_a_token():
    recipe = (ROOT / "Makefile").read_text().split("\napp:", 1)[1].split("\n")[1]
    assert "voila" in recipe and "--token" in recipe.split() and "127.0.0.1" in recipe


def test_deep_feature_cache_manifest_is_moved_aside_and_rebuilt(tmp_path, monkeypatch):
    from fedpurel_lite.data.features import FeatureBank, FeatureCacheWarning

    base = _entry(tmp_path)
    _tiny_bank().save(base)
    base.with_suffix(".json").write_text('{"inputs": ' + deep(5000) + "}")
    monkeypatch.setattr(FeatureBank, "build", classmethod(lambda cls, *a, **k: _tiny_bank()))
    with pytest.warns(FeatureCacheWarning, match="nested too deeply"):
        FeatureBank._load_or_build(tmp_path, INPUTS, lambda: (None, None), False, 8, None)
    assert (tmp_path / f"{base.name}.json.corrupt-1").is_file() and base.with_suffix(".json").is_file()


def test_shipped_weights_are_untouched():
    from fedpurel_lite.data.backbone import EMBEDDED_SHA256, EMBEDDED_WEIGHTS, sha256_file

    assert not EMBEDDED_WEIGHTS.exists() or sha256_file(EMBEDDED_WEIGHTS) == EMBEDDED_SHA256
