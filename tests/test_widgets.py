import numpy as np

from conftest import explorer_config
from fedpurel_lite.views.widgets import PartitionExplorer, ProfileExplorer

ORDER = np.random.default_rng(0).permutation(100)
TRAIN = np.repeat(np.arange(100), 500)
TEST = np.repeat(np.arange(100), 100)


def test_profile_slider_moves_groups_not_zero_shot():
    zs = np.random.default_rng(1).uniform(30, 70, 100)
    ex = ProfileExplorer(zs, ORDER, imbalance_ratio=100, draw=False)
    assert ex.data["group_sizes"].tolist() == [35, 34, 31] and ex.data["counts"].sum() == 10_847
    assert ex.data["counts"][ORDER[0]] == 500 and ex.data["counts"][ORDER[-1]] == 5
    ex.ratio.value = 10  # what a user's drag does: the observer recomputes
    assert ex.data["group_sizes"].tolist() == [69, 31, 0]  # no tail at IF = 10
    assert ex.data["counts"][ORDER[-1]] == 50
    np.testing.assert_allclose(ex.data["zero_shot"]["head"], zs[ex.data["groups"] == 0].mean())


def test_partition_sliders_rebuild_the_federation():
    ex = PartitionExplorer(TRAIN, TEST, ORDER, imbalance_ratio=100, dirichlet_alpha=1.0, draw=False)
    assert ex.data["table"].sum() == 10_847 and ex.data["table"].shape == (20, 100)
    skew_before = ex.data["entropy"].mean()
    ex.alpha.value = 0.1
    assert ex.data["entropy"].mean() < skew_before - 0.5
    ex.ratio.value = 50
    assert ex.data["table"].sum() == 12_608
    np.testing.assert_allclose(ex.data["group_shares"].sum(axis=1), 100, atol=0.2)


def test_drawing_headless_does_not_fail():
    ex = ProfileExplorer(np.full(100, 50.0), ORDER)
    ex.ratio.value = 20
    PartitionExplorer(TRAIN, TEST, ORDER)


# ----------------------------------------------------------------------------- FederationExplorer (notebook 06)
def test_federation_view_runs_a_reduced_federation(core_bank, core_one_thread):
    from fedpurel_lite.views.widgets import federation_view

    view = federation_view(core_bank, explorer_config(), imbalance_ratio=20, dirichlet_alpha=0.5,
                           methods=("zero-shot", "fedavg"), rounds=2)
    cfg = view["config"]
    assert (cfg.federation.rounds, cfg.longtail.imbalance_ratio, cfg.federation.dirichlet_alpha) == (2, 20.0, 0.5)
    assert list(view["table"].index) == ["zero-shot", "fedavg"]
    assert {"GM all", "GM tail", "PM all"} <= set(view["table"].columns)
    assert all(len(v) == 2 for v in view["curves"].values())
    # zero-shot does not train: flat curve; its table row is its last round
    assert view["curves"]["zero-shot"][0] == view["curves"]["zero-shot"][1]
    assert view["table"].loc["zero-shot", "GM all"] == round(view["curves"]["zero-shot"][-1], 1)
    assert view["results"]["fedavg"].history[-1]["gm"]["accuracy"] == view["curves"]["fedavg"][-1]


def test_federation_sliders_rerun_the_federation(core_bank, core_one_thread):
    from fedpurel_lite.views.widgets import FederationExplorer

    ex = FederationExplorer(core_bank, explorer_config(imbalance_ratio=2), methods=("zero-shot", "fedpurel"),
                            rounds=2, draw=False)
    assert ex.data["config"].longtail.imbalance_ratio == 2 and ex.data["config"].federation.rounds == 2
    assert ex.store is None, "the shipped grid is for the embedded bank, not this one"
    assert 2 in ex.ratio.options, "the protocol's own ratio is a choice, off the grid"
    assert np.isnan(ex.data["table"].loc["zero-shot", "GM tail"])  # no tail group at IF = 2 (60 -> 30 images)
    sizes_before = ex.data["results"]["fedpurel"].federation["client_train_sizes"]
    ex.alpha.value = 0.1  # a user's drag: the observer re-runs the reduced federation
    assert ex.data["config"].federation.dirichlet_alpha == 0.1
    sizes_after = ex.data["results"]["fedpurel"].federation["client_train_sizes"]
    assert sizes_after != sizes_before and sum(sizes_after) == sum(sizes_before)
    ex.ratio.value = 10
    assert ex.data["config"].longtail.imbalance_ratio == 10
    assert sum(ex.data["results"]["fedpurel"].federation["client_train_sizes"]) < sum(sizes_after)
    assert np.isfinite(ex.data["table"].loc["zero-shot", "GM tail"])


def test_federation_explorer_draws_headless(core_bank, core_one_thread):
    from fedpurel_lite.views.widgets import FederationExplorer

    ex = FederationExplorer(core_bank, explorer_config(), methods=("zero-shot", "fedavg"), rounds=1)
    ex.ratio.value = 20
    assert ex.data["config"].longtail.imbalance_ratio == 20 and len(ex.table.outputs) == 1
    assert ex.output.outputs[0]["data"]["image/png"]


def test_federation_explorer_answers_its_grid_from_the_file(core_bank, core_one_thread, tmp_path):
    from fedpurel_lite.views.explore_grid import fingerprint, point_key, write_grid
    from fedpurel_lite.views.widgets import FederationExplorer, federation_point, federation_view

    cfg, methods, runs = explorer_config(), ("zero-shot", "fedavg"), {}
    points = {point_key(r, a): federation_point(core_bank, cfg, r, a, methods, 2, runs)
              for r in (10, 20) for a in (0.5, 1.0)}
    path = write_grid(tmp_path / "federation.json", "federation", fingerprint(cfg, 2, methods, core_bank),
                      {"imbalance_ratio": [10, 20], "dirichlet_alpha": [0.5, 1.0]}, points)
    ex = FederationExplorer(core_bank, cfg, methods=methods, rounds=2, grid=path)
    assert ex.store is not None and ex.runs == {}
    fig = ex.draw()
    limits = [ax.get_ylim() for ax in fig.axes]
    ex.ratio.value, ex.alpha.value = 20, 0.5
    assert ex.runs == {}, "a grid setting runs nothing"
    live = federation_view(core_bank, cfg, 20, 0.5, methods, 2, runs)
    assert (ex.data["table"] - live["table"]).abs().max().max() <= 0.1 + 1e-9  # 1-decimal rounding of 3-decimal values
    np.testing.assert_allclose(ex.data["curves"]["fedavg"], live["curves"]["fedavg"], atol=1e-3)
    assert [ax.get_ylim() for ax in ex.draw().axes] == limits, "the same axes at every setting"
    ex.ratio.value = 50  # off the file's grid: run here
    assert len(ex.runs) == 2 and ex.data["config"].longtail.imbalance_ratio == 50
    other = FederationExplorer(core_bank, cfg, methods=methods, rounds=3, grid=path, draw=False)
    assert other.store is None, "a file of other rounds is not used"
