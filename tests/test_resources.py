"""Resources bounded before a run: threads clipped to the cores, estimates printed, runs that do not fit refused."""

from __future__ import annotations

import warnings

import pytest

import fedpurel_lite.engine.resources as resources
from fedpurel_lite.config import RunConfig
from fedpurel_lite.engine.workers import available_cores
from fedpurel_lite.errors import ConfigError


def test_threads_are_clipped_to_the_cores_with_a_warning():
    cores = available_cores()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = resources.clip_threads(RunConfig().with_overrides({"workers": 1024, "num_threads": 1024}))
    assert f"run.workers=1024: this machine gives this process {cores} cores" in str(caught[0].message)
    assert config.run.workers == cores and config.run.workers * config.run.num_threads <= cores
    same = RunConfig().with_overrides({"workers": 1})
    assert resources.clip_threads(same) is same


def test_cost_grows_with_the_run_and_counts_the_token_cache():
    small = resources.estimate_cost(RunConfig(), 50_000, 10_000, 10_000, 100)
    big = resources.estimate_cost(RunConfig().with_overrides({"rounds": 1000, "local_epochs": 10}), 50_000, 10_000,
                                  10_000, 100)
    assert big.seconds > 10 * small.seconds and big.disk > small.disk
    lora = resources.estimate_cost(RunConfig().with_overrides({"peft": "lora"}), 50_000, 10_000, 10_000, 100)
    assert lora.caches["vision-token cache"] == 60_000 * 17 * 128 * 4  # the embedded world: 522 MB


def test_a_run_that_does_not_fit_is_refused_naming_the_override(monkeypatch, capsys):
    monkeypatch.setattr(resources, "free_disk", lambda path: 1000)
    with pytest.raises(ConfigError, match=r"needs about .* of disk, .* free .*--ignore-resources"):
        resources.bound_resources(RunConfig())
    with pytest.warns(UserWarning, match="--ignore-resources: starting although"):
        resources.bound_resources(RunConfig(), ignore=True)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=r"more than 7.0 days"):
        resources.bound_resources(RunConfig().with_overrides({"rounds": 1_000_000, "local_epochs": 1000}))
    assert "estimate: about" in capsys.readouterr().out
