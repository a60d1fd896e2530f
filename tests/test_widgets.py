import numpy as np

from fedpurel_lite.widgets import PartitionExplorer, ProfileExplorer

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
