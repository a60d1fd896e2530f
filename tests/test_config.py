from pathlib import Path

import pytest

from fedpurel_lite.config import RunConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("imbalance_ratio", 0.01, ">= 1"),
        ("dirichlet_alpha", 0.0, "> 0"),
        ("dirichlet_alpha", -1.0, "> 0"),
        ("participation", 0.0, r"\(0, 1\]"),
        ("participation", 1.5, r"\(0, 1\]"),
        ("rounds", 0, ">= 1"),
        ("peft", "lora", "one of"),
        ("personal_alpha", 1.2, r"\[0, 1\]"),
        ("workers", -1, ">= 0"),
    ],
)
def test_invalid_values_raise_naming_field_value_and_range(field, value, allowed):
    with pytest.raises(ValueError, match=rf"{field}={value!r}.*allowed: {allowed}"):
        RunConfig(**{field: value})


def test_more_clients_than_samples():
    cfg = RunConfig(num_clients=2000, min_client_size=10)
    with pytest.raises(ValueError, match=r"num_clients=2000.*10847 samples"):
        cfg.validate(num_train_samples=10_847)
    RunConfig(num_clients=20).validate(num_train_samples=10_847)


def test_unknown_keys_and_bad_overrides():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['clients'\]"):
        RunConfig.from_dict({"clients": 20})
    with pytest.raises(ValueError, match="key=value"):
        RunConfig().with_overrides(["rounds"])
    with pytest.raises(ValueError, match=r"rounds='many'.*int"):
        RunConfig().with_overrides(["rounds=many"])


def test_overrides_are_typed():
    cfg = RunConfig().with_overrides(["rounds=5", "dirichlet_alpha=0.5", "method=fedavg"])
    assert cfg.rounds == 5 and cfg.dirichlet_alpha == 0.5 and cfg.method == "fedavg"
    assert isinstance(RunConfig.from_dict({"imbalance_ratio": 50}).imbalance_ratio, float)


def test_extra_overrides_set_one_key_with_toml_values():
    cfg = RunConfig(extra={"keep": 1}).with_overrides(
        ["extra.num_threads=2", "extra.class_specific=true", "extra.ctx_init=a photo of a", "extra.ratio=0.3"])
    assert cfg.extra == {"keep": 1, "num_threads": 2, "class_specific": True, "ctx_init": "a photo of a", "ratio": 0.3}
    assert RunConfig().extra == {}  # the default is not shared or mutated


def test_toml_round_trip(tmp_path):
    cfg = RunConfig(rounds=7, seed=3, extra={"note": "x"})
    cfg.save(tmp_path / "run.toml")
    assert RunConfig.load(tmp_path / "run.toml") == cfg


@pytest.mark.parametrize("preset", ["embedded.toml", "paper_cifar100_lt.toml"])
def test_presets_load(preset):
    cfg = RunConfig.load(CONFIGS / preset)
    assert cfg.num_clients == 20 and cfg.participation == 0.4 and cfg.imbalance_ratio == 100
    assert cfg.dirichlet_alpha == 1.0


def test_paper_preset_matches_protocol():
    cfg = RunConfig.load(CONFIGS / "paper_cifar100_lt.toml")
    assert (cfg.world, cfg.rounds, cfg.lr, cfg.batch_size, cfg.n_ctx) == ("cifar100", 100, 0.001, 32, 4)
