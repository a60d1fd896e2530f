"""RunConfig: typed nested sections, strict types, keys, overrides and TOML round trips."""

from pathlib import Path

import pytest

from fedpurel_lite.config import MOVED, RunConfig, resolve_key
from fedpurel_lite.config.registry import knob, register_section
from fedpurel_lite.errors import ConfigError
from fedpurel_lite.peft import LoRAConfig, PromptConfig
from fedpurel_lite.personal.residual import ResidualHeadConfig
from fedpurel_lite.purify import ProxConfig
from fedpurel_lite.worlds.folder import FolderConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_sections_match_the_toml_tables():
    cfg = RunConfig()
    assert list(cfg.to_dict()) == ["world", "longtail", "federation", "method", "stage1", "purification",
                                   "personalization", "run"]
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
    ("class_specific=False", "peft.prompt.class_specific='False': allowed true or false"),
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
    ({"peft": {"prompt": {"class_specific": 1}}}, "peft.prompt.class_specific=1 is a int; allowed true or false"),
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
def test_presets_load_with_the_protocol(preset):
    cfg = RunConfig.load(CONFIGS / preset)
    fed = cfg.federation
    assert fed.num_clients == 20 and fed.participation == 0.4 and cfg.longtail.imbalance_ratio == 100
    assert fed.dirichlet_alpha == 1.0


def test_paper_preset_matches_protocol():
    cfg = RunConfig.load(CONFIGS / "paper_cifar100_lt.toml")
    assert (cfg.world.name, cfg.federation.rounds, cfg.stage1.lr, cfg.stage1.batch_size, cfg.get("n_ctx")) == (
        "cifar100", 100, 0.001, 32, 4)


# ----------------------------------------------------------------------------- the plugins' own sections
def test_each_plugin_has_its_own_table_set_dotted_or_bare():
    cfg = RunConfig().with_overrides(["peft=lora", "peft.lora.rank=4", "n_ctx=8", "towers=both"])
    assert cfg.section(LoRAConfig) == LoRAConfig(rank=4, alpha=16.0, towers="both")
    assert cfg.section(PromptConfig).n_ctx == 8 and cfg.get("peft.prompt.n_ctx") == 8 and cfg.get("rank") == 4
    data = cfg.to_dict()
    assert data["peft"] == {"lora": {"rank": 4, "alpha": 16.0, "towers": "both"},
                            "prompt": {"n_ctx": 8, "ctx_init": "", "class_specific": False}}
    assert data["world"]["shapes"] == {"variant": "stratified"}  # the selected world's section, in full
    assert cfg.differences(RunConfig()) == ["method.peft", "peft.lora.rank", "peft.lora.towers", "peft.prompt.n_ctx"]


def test_a_bare_name_of_several_worlds_means_the_selected_one():
    cfg = RunConfig().with_overrides({"root": "/data/x", "world": "folder"})  # the selection applies first
    assert cfg.section(FolderConfig).root == "/data/x" and cfg.get("world.folder.root") == "/data/x"
    assert RunConfig().with_overrides(["world=cifar100", "root=/c"]).get("world.cifar100.root") == "/c"
    with pytest.raises(ConfigError, match="'root' is ambiguous: write one of .*world.folder.root"):
        RunConfig().with_overrides(["root=/x"])  # the shapes world has no root


def test_a_section_round_trips_through_toml_and_equal_configs_compare_equal(tmp_path):
    cfg = RunConfig().with_overrides(["peft=prompt", "ctx_init=a photo of a", "variant=shape-grouped"])
    cfg.save(tmp_path / "run.toml")
    text = (tmp_path / "run.toml").read_text()
    assert "[peft.prompt]" in text and "[world.shapes]" in text
    assert RunConfig.load(tmp_path / "run.toml") == cfg
    assert RunConfig.from_dict(RunConfig().to_dict()) == RunConfig()  # defaults written in full load as defaults


@pytest.mark.parametrize(("table", "message"), [
    ({"peft": {"lora": {"rank": 0}}}, r"peft.lora.rank=0: allowed \[1, 1024\]"),
    ({"peft": {"lora": {"towers": "audio"}}}, "peft.lora.towers='audio': allowed one of vision, text, both"),
    ({"peft": {"lora": {"ranks": 2}}}, r"unknown key\(s\) peft.lora.ranks; \[peft.lora\] has rank, alpha, towers"),
    ({"peft": {"vera": {"rank": 2}}}, r"unknown table \[peft.vera\]; known: .*\[peft.lora\]"),
    ({"peft": {"rank": 2}}, r"\[peft\] holds one table per plugin"),
    ({"world": {"name": "cifar100", "shapes": {"variant": "shape-grouped"}}},
     "world.shapes.variant='shape-grouped' is a setting of the shapes world, but world.name='cifar100'"),
])
def test_section_values_are_checked_with_the_full_key(table, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(table)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_moved_key_is_one_error_naming_its_new_key(old, tmp_path):
    table, key = old.split(".")
    axis, plugin, new_key = MOVED[old]
    new = f"{axis}.{plugin or 'folder'}.{new_key}"
    world = "folder" if not plugin else "shapes"
    value = RunConfig().with_overrides({"world": world}).get(new)
    path = tmp_path / "old.toml"
    path.write_text(f'[world]\nname = "{world}"\n\n[{table}]\n{key} = {value!r}\n'.replace("'", '"')
                    .replace("True", "true").replace("False", "false") if table != "world" else
                    f'[world]\nname = "{world}"\n{key} = {value!r}\n'.replace("'", '"')
                    .replace("True", "true").replace("False", "false"))
    for build in (lambda: RunConfig.load(path), lambda: RunConfig().with_overrides([f"world={world}", f"{old}=1"])):
        with pytest.raises(ConfigError) as err:
            build()
        text = str(err.value)
        assert f"{old} moved to {new} (" in text and "\n" not in text, text


def test_old_bare_names_that_changed_name_the_new_key_and_unchanged_ones_still_work():
    with pytest.raises(ConfigError, match=r"^lora_rank moved to peft.lora.rank \("):
        RunConfig().with_overrides(["lora_rank=4"])
    with pytest.raises(ConfigError, match=r"^adapter_ratio moved to peft.adapter.ratio \("):
        RunConfig().with_overrides({"adapter_ratio": 0.5})
    cfg = RunConfig().with_overrides({"variant": "shape-grouped", "n_ctx": 2, "class_specific": True})
    assert (cfg.get("world.shapes.variant"), cfg.get("peft.prompt.n_ctx"), cfg.get("class_specific")) == (
        "shape-grouped", 2, True)


@pytest.mark.parametrize(("old", "new"), [
    ("prox_mu", "objective.prox.mu"), ("la_tau", "objective.la.tau"), ("interp_beta", "personal.interp.beta"),
    ("folio_theta", "personal.folio.theta"), ("residual_scale", "personal.residual.scale"),
    ("residual_bias", "personal.residual.bias"),
])
def test_old_bare_names_of_objective_and_personalization_knobs_name_the_new_key(old, new, tmp_path):
    value = "true" if old == "residual_bias" else "0.5"
    for build in (lambda: RunConfig().with_overrides([f"{old}={value}"]),
                  lambda: RunConfig().with_overrides({old: 0.5}),
                  lambda: RunConfig.from_dict({old: 0.5})):
        with pytest.raises(ConfigError, match=rf"{old} moved to {new} \(.*--set {new}=\.\.\."):
            build()
    path = tmp_path / "old.toml"
    path.write_text("[baselines]\n")  # the whole table is gone: its keys are listed with their new places
    with pytest.raises(ConfigError, match=r"the table \[baselines\] is gone; its keys moved to objective.prox.mu, "
                                          r"objective.la.tau, personal.interp.beta, personal.folio.theta"):
        RunConfig.load(path)


def test_the_method_selects_its_objective_and_personalization_sections():
    fedprox = RunConfig().with_overrides(["method=fedprox", "mu=0.5"])
    assert (fedprox.selected("objective"), fedprox.selected("personal")) == ("prox", "")
    assert fedprox.section(ProxConfig).mu == 0.5 == fedprox.get("objective.prox.mu")
    assert fedprox.to_dict()["objective"] == {"prox": {"mu": 0.5}} and "personal" not in fedprox.to_dict()
    linear = RunConfig().with_overrides({"method": "fedpurel-linear", "bias": True})
    assert linear.section(ResidualHeadConfig) == ResidualHeadConfig(scale=0.0, bias=True)
    assert linear.to_dict()["personal"] == {"residual": {"scale": 0.0, "bias": True}}
    assert "objective" not in linear.to_dict()  # purify has no section of its own: [purification] is core
    interp = RunConfig().with_overrides({"method": "interp"})  # the selected kind's section is written in full
    assert interp.to_dict()["personal"] == {"interp": {"beta": 0.5}} and interp.get("beta") == 0.5
    # a knob of another method's plugin is kept (it does nothing here) and round-trips
    kept = RunConfig().with_overrides({"method": "fedavg", "tau": 2.0, "theta": 0.3})
    assert kept.to_dict()["objective"] == {"la": {"tau": 2.0}} and kept.to_dict()["personal"] == {
        "folio": {"theta": 0.3}}
    assert RunConfig.from_dict(kept.to_dict()) == kept and kept.differences(RunConfig().with_overrides(
        {"method": "fedavg"})) == ["objective.la.tau", "personal.folio.theta"]
    assert RunConfig().with_overrides({"method": "no-such-method"}).selected("objective") == ""


@pytest.mark.parametrize(("table", "message"), [
    ({"objective": {"prox": {"mu": -1.0}}}, r"objective.prox.mu=-1.0: allowed \[0, 1000\]"),
    ({"objective": {"la": {"tau": 101}}}, r"objective.la.tau=101.0: allowed \[0, 100\]"),
    ({"personal": {"interp": {"beta": 1.5}}}, r"personal.interp.beta=1.5: allowed \[0, 1\]"),
    ({"personal": {"folio": {"theta": "x"}}}, r"personal.folio.theta='x' is a str; allowed a finite number"),
    ({"personal": {"residual": {"bias": 1}}}, r"personal.residual.bias=1 is a int; allowed true or false"),
    ({"objective": {"purify": {"lambda_proj": 1.0}}}, r"unknown table \[objective.purify\]; known: "
                                                      r"\[objective.prox\], \[objective.la\]"),
])
def test_objective_and_personalization_sections_are_checked_with_the_full_key(table, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(table)


def test_a_section_must_be_a_frozen_dataclass_of_documented_fields():
    from dataclasses import dataclass

    @dataclass
    class Loose:
        rank: int = knob(1, "r")

    @dataclass(frozen=True)
    class Undocumented:
        rank: int = 1

    for cls in (Loose, Undocumented):
        with pytest.raises(TypeError):
            register_section("peft", "never-registered", cls)


def test_core_keys_and_world_sections_are_checked_without_importing_torch():
    """A config of core keys and world sections loads and fails fast: the PEFT plugins (torch) load only when named."""
    import subprocess
    import sys

    code = ("import sys; from fedpurel_lite.config import RunConfig; "
            "c = RunConfig.load(sys.argv[1]).with_overrides(['lr=0.02', 'world.shapes.variant=shape-grouped']); "
            "assert c.get('world.shapes.variant') == 'shape-grouped'; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code, str(CONFIGS / "embedded.toml")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
