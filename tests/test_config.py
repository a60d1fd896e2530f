"""RunConfig: typed nested sections, strict types, keys, overrides and TOML round trips."""

from pathlib import Path

import pytest

from fedpurel_lite.config import RunConfig, resolve_key
from fedpurel_lite.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_sections_match_the_toml_tables():
    cfg = RunConfig()
    assert list(cfg.to_dict()) == ["world", "longtail", "federation", "method", "stage1", "purification",
                                   "personalization", "baselines", "run"]
    assert cfg.stage1.lr == 0.01 and cfg.federation.rounds == 100 and cfg.method.name == "fedpurel"
    assert cfg.get("lr") == cfg.get("stage1.lr") == 0.01 and cfg.get("method") == "fedpurel"


def test_bare_dotted_and_alias_keys_resolve():
    assert resolve_key("lr") == "stage1.lr" and resolve_key("stage1.lr") == "stage1.lr"
    assert resolve_key("world") == "world.name" and resolve_key("method") == "method.name"
    with pytest.raises(ConfigError, match="ambiguous: write one of world.name, method.name"):
        resolve_key("name")
    with pytest.raises(ConfigError, match="unknown config key 'lrr'; did you mean lr"):
        resolve_key("lrr")


@pytest.mark.parametrize(("pair", "message"), [
    ("lr=inf", "stage1.lr=inf: allowed a finite number"),
    ("lr=nan", "stage1.lr=nan: allowed a finite number"),
    ("rounds=1.5", "federation.rounds='1.5': allowed an integer"),
    ("rounds=true", "federation.rounds='true': allowed an integer"),
    ("class_specific=False", "method.class_specific='False': allowed true or false"),
    ("seed=-1", r"run.seed=-1: allowed \[0, 4294967295\]"),
    ("participation=0", r"federation.participation=0.0: allowed \(0, 1\]"),
    ("peft=3", None),  # a string field takes any text; the registry checks it in preflight
])
def test_set_values_are_parsed_by_type(pair, message):
    if message is None:
        assert RunConfig().with_overrides([pair]).method.peft == "3"
        return
    with pytest.raises(ConfigError, match=message):
        RunConfig().with_overrides([pair])


@pytest.mark.parametrize(("table", "message"), [
    ({"federation": {"rounds": 1.5}}, "federation.rounds=1.5 is a float; allowed an integer"),
    ({"federation": {"num_clients": True}}, "federation.num_clients=True is a bool; allowed an integer"),
    ({"stage1": {"batch_size": 2.7}}, "stage1.batch_size=2.7 is a float; allowed an integer"),
    ({"stage1": {"lr": "0.1"}}, "stage1.lr='0.1' is a str; allowed a finite number"),
    ({"method": {"class_specific": 1}}, "method.class_specific=1 is a int; allowed true or false"),
    ({"optimisation": {"lr": 0.1}}, r"unknown table\(s\) \[optimisation\]"),
    ({"stage1": {"learning_rate": 0.1}}, r"unknown key\(s\) stage1.learning_rate"),
    ({"run": 3}, r"\[run\] must be a table"),
])
def test_tables_are_strict(table, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(table)


def test_python_values_in_overrides_are_checked_too():
    assert RunConfig().with_overrides({"imbalance_ratio": 50}).longtail.imbalance_ratio == 50.0
    with pytest.raises(ConfigError, match="is a float; allowed an integer"):
        RunConfig().with_overrides({"rounds": 2.0})
    with pytest.raises(ConfigError, match="given twice"):
        RunConfig().with_overrides(["lr=0.1", "stage1.lr=0.2"])
    with pytest.raises(ConfigError, match="key=value"):
        RunConfig().with_overrides(["rounds"])


def test_sections_are_frozen_and_differences_named():
    cfg = RunConfig()
    with pytest.raises(AttributeError):
        cfg.stage1.lr = 1.0  # type: ignore[misc]
    other = cfg.with_overrides(["lr=0.02", "seed=4"])
    assert cfg.differences(other) == ["stage1.lr", "run.seed"]


def test_toml_round_trip(tmp_path):
    cfg = RunConfig().with_overrides(["rounds=7", "seed=3", "ctx_init=a photo of a", "track_cos=true"])
    cfg.save(tmp_path / "run.toml")
    assert RunConfig.load(tmp_path / "run.toml") == cfg


def test_toml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[stage1]\nlr = 0.1\nlr = 0.2\n")
    with pytest.raises(ConfigError, match=r"bad.toml' is not valid TOML"):
        RunConfig.load(bad)
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.load(tmp_path / "missing.toml")


@pytest.mark.parametrize("preset", ["embedded.toml", "paper_cifar100_lt.toml"])
def test_presets_load(preset):
    cfg = RunConfig.load(CONFIGS / preset)
    fed = cfg.federation
    assert fed.num_clients == 20 and fed.participation == 0.4 and cfg.longtail.imbalance_ratio == 100
    assert fed.dirichlet_alpha == 1.0


def test_paper_preset_matches_protocol():
    cfg = RunConfig.load(CONFIGS / "paper_cifar100_lt.toml")
    assert (cfg.world.name, cfg.federation.rounds, cfg.stage1.lr, cfg.stage1.batch_size, cfg.method.n_ctx) == (
        "cifar100", 100, 0.001, 32, 4)
