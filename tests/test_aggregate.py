"""FedAvg weights and the seeded client sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpurel_lite.engine.aggregate import ClientSampler, fedavg, num_sampled

pytestmark = pytest.mark.usefixtures("core_one_thread")


def test_fedavg_is_sample_size_weighted():
    s1 = {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor(2.0)}
    s2 = {"w": torch.tensor([0.0, 1.0]), "b": torch.tensor(4.0)}
    out = fedavg([s1, s2], [30, 10])
    torch.testing.assert_close(out["w"], torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(out["b"], torch.tensor(2.5))
    assert out["w"].dtype == torch.float32
    # equal weights = plain mean; a single client = its own state
    torch.testing.assert_close(fedavg([s1, s2], [1, 1])["b"], torch.tensor(3.0))
    torch.testing.assert_close(fedavg([s2], [7])["w"], s2["w"])
    # scale invariance of the weights
    torch.testing.assert_close(fedavg([s1, s2], [3, 1])["w"], out["w"])


def test_fedavg_rejects_bad_input():
    s = {"w": torch.zeros(2)}
    with pytest.raises(ValueError):
        fedavg([], [])
    with pytest.raises(ValueError):
        fedavg([s, s], [1])
    with pytest.raises(ValueError):
        fedavg([s, s], [0, 0])
    with pytest.raises(ValueError):
        fedavg([s, {"v": torch.zeros(2)}], [1, 1])


def test_sampler_round_zero_all_then_fraction():
    sampler = ClientSampler(20, 0.4, seed=1)
    assert np.array_equal(sampler.sample(0), np.arange(20))
    for r in range(1, 30):
        chosen = sampler.sample(r)
        assert len(chosen) == 8 == num_sampled(20, 0.4)
        assert len(set(chosen.tolist())) == 8 and chosen.min() >= 0 and chosen.max() < 20
    assert num_sampled(20, 0.01) == 1 and num_sampled(10, 1.0) == 10


def test_sampler_reproducible_and_seed_dependent():
    a, b, c = ClientSampler(20, 0.4, 1), ClientSampler(20, 0.4, 1), ClientSampler(20, 0.4, 2)
    ra = [a.sample(r).tolist() for r in range(1, 20)]
    assert ra == [b.sample(r).tolist() for r in range(1, 20)]
    assert ra != [c.sample(r).tolist() for r in range(1, 20)]
    # stateless: asking in a different order (as a resumed run does) gives the same draws
    assert [a.sample(r).tolist() for r in reversed(range(1, 20))] == ra[::-1]
    # independent of the global RNGs that training might touch
    np.random.seed(0)  # noqa: NPY002 - the legacy global RNG must not matter
    torch.manual_seed(0)
    assert ClientSampler(20, 0.4, 1).sample(5).tolist() == ra[4]


def test_sampler_is_roughly_uniform():
    sampler = ClientSampler(10, 0.3, seed=3)
    counts = np.zeros(10)
    for r in range(1, 2001):
        counts[sampler.sample(r)] += 1
    assert np.allclose(counts / 2000, 0.3, atol=0.04)
    with pytest.raises(ValueError):
        ClientSampler(0, 0.5, 1)
