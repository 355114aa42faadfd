# SPDX-License-Identifier: Apache-2.0
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_discrete.carms as carms
from pyro_discrete import CARMSELBO, TraceScoreELBO, config_estimator
from pyro_discrete.errors import EstimatorError

from common import check_unbiased, gradient_draws, init_params, make_family, reference


@pytest.mark.parametrize("num", [2, 3, 6])
def test_draws_are_exact_and_pair_probabilities_are_the_formula(num):
    torch.manual_seed(0)
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    draws = carms.copula_categorical_draws(p.expand(200000, 5), num)  # (num, 200000)
    n = draws.shape[1]
    freq = torch.bincount(draws[0], minlength=5).to(p.dtype) / n
    assert torch.allclose(freq, p, atol=5 * (p * (1 - p) / n).sqrt().max().item())
    joint = torch.zeros(5, 5, dtype=p.dtype)
    joint.index_put_((draws[0], draws[1]), torch.ones(n, dtype=p.dtype), accumulate=True)
    expected = carms.copula_pair_probabilities(p.unsqueeze(0), num)[0]
    assert torch.allclose(joint / n, expected, atol=5 * (expected.max() / n) ** 0.5)
    assert torch.allclose(expected.sum(-1), p)  # its margins are the categorical's
    off_diagonal = expected[~torch.eye(5, dtype=torch.bool)]
    assert (off_diagonal > 0).all()  # every pair of categories can be drawn together: the weights exist


def test_unbiased_and_the_test_fails_without_the_pair_weights(monkeypatch):
    family = make_family("amortized_vae")
    init_params(family)
    ref = reference(family)
    stats = gradient_draws(CARMSELBO(num_particles=4), family, num_batches=50, draws_per_batch=40)
    check_unbiased(stats, ref, num_se=5.0, what="carms")
    # leave-one-out on the coupled draws (every pair weight 1): biased, and the same check says so
    monkeypatch.setattr(carms, "pair_probabilities_at", _independent)
    stats = gradient_draws(CARMSELBO(num_particles=4), family, num_batches=50, draws_per_batch=40)
    with pytest.raises(AssertionError, match="biased beyond"):
        check_unbiased(stats, ref, num_se=5.0, what="unweighted")


def _independent(probs, num, a, b):
    p = probs.detach().to(torch.float64)
    return p.gather(-1, a) * p.gather(-1, b)


def test_lower_variance_than_leave_one_out_at_equal_particles():
    # measured on this family (2000 draws): 0.71x leave-one-out's variance at 4 particles, 0.75x at 8 (the
    # variance estimates themselves are noisy: leave-one-out's ranged over 6.7-11 at 1000 draws)
    family = make_family("amortized_vae")
    init_params(family)
    variances = {}
    candidates = [("carms", CARMSELBO(num_particles=8)), ("loo", TraceScoreELBO(num_particles=8, baseline="loo"))]
    for label, elbo in candidates:
        stats = gradient_draws(elbo, family, num_batches=60, draws_per_batch=50)
        variances[label] = sum(v.sum().item() for v in stats.variance.values())
    assert variances["carms"] < 0.9 * variances["loo"], variances


def test_a_categorical_site_drawn_per_particle_is_an_error_naming_it():
    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("z", dist.Categorical(logits=torch.stack([a, -a, a * 0])))

    def guide():
        a = pyro.sample("a", dist.Normal(pyro.param("m", torch.tensor(0.1)), 1.0))
        pyro.sample("z", dist.Categorical(logits=torch.stack([a, a * 0, -a])))

    pyro.clear_param_store()
    with pytest.raises(EstimatorError) as info:
        CARMSELBO(num_particles=3).differentiable_loss(model, guide)
    assert info.value.sites[-1] == "z" and "carms" not in info.value.alternatives


def test_carms_on_one_site_and_leave_one_out_on_another():
    # per site: the categorical z coupled by CARMS, the Bernoulli b independent with leave-one-out
    data = torch.tensor([0.3, -0.8, 1.4])

    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(4)))
            b = pyro.sample("b", dist.Bernoulli(0.4))
            pyro.sample("x", dist.Normal(torch.tensor([-1.0, 0.0, 1.0, 2.0])[z] + b, 1.0), obs=data)

    def guide():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Categorical(logits=pyro.param("q", torch.zeros(3, 4) + 0.1)))
            pyro.sample("b", dist.Bernoulli(logits=pyro.param("r", torch.zeros(3))))

    elbo = TraceScoreELBO(num_particles=4, max_plate_nesting=1)
    annotated = config_estimator(guide, {"z": "carms"})
    pyro.clear_param_store()
    elbo.differentiable_loss(model, annotated)
    assert [(c.site, c.method) for c in elbo.site_methods(model, annotated)] == [("z", "carms"), ("b", "loo")]


def test_quadratic_pair_weights_are_refused_before_allocation():
    # the pair weights grow as n**2 per latent: past max_pair_bytes, a named error before anything large exists
    import resource

    def model():
        pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(5)))

    def guide():
        pyro.sample("z", dist.OneHotCategorical(logits=pyro.param("q", torch.zeros(5))))

    pyro.clear_param_store()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(EstimatorError) as info:
        CARMSELBO(num_particles=8, max_pair_bytes=2**20).differentiable_loss(model, guide)
    assert info.value.requirement == "memory" and info.value.sites == ("z",)
    assert set(info.value.alternatives) == {"coupled_disarm", "loo"}
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) < 200 * 1024  # kB
    assert torch.isfinite(CARMSELBO(num_particles=8).differentiable_loss(model, guide))
