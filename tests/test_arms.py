# SPDX-License-Identifier: Apache-2.0
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

import pyro_discrete.arms as arms
from pyro_discrete import ARMSELBO, ARSMELBO, TraceScoreELBO
from pyro_discrete.errors import EstimatorError

from common import check_unbiased, gradient_draws, init_params, make_family, reference


@pytest.mark.parametrize("num", [3, 4, 8])
def test_copula_draws_are_exact_and_their_pair_probability_is_the_formula(num):
    # each draw is Bernoulli(p); two of them are jointly 1 with the probability the correction assumes
    torch.manual_seed(0)
    p = torch.tensor([0.002, 0.1, 0.3, 0.5, 0.7, 0.95], dtype=torch.float64)
    theta = (p / (1 - p)).log().expand(100000, 6)
    b = arms.dirichlet_copula_draws(theta, num, 0)  # (num, 100000, 6)
    n = b.shape[1]
    assert torch.allclose(b.mean((0, 1)), p, atol=5 * (p * (1 - p) / n).sqrt().max().item())
    joint = (b[0] * b[1]).mean(0)
    factor = arms.dirichlet_copula_factor(theta[0], num)
    # 1 / (1 - rho) = p (1 - p) / (p - r): r = p - p (1 - p) / factor
    r = p - p * (1 - p) / factor
    assert torch.allclose(joint, r, atol=5 * (r.clamp(min=1e-4) / n).sqrt().max().item())
    assert (factor > 0).all() and (factor <= 1).all()


def test_factor_is_stable_at_extreme_logits():
    theta = torch.tensor([-40.0, -15.0, -1e-4, 0.0, 1e-4, 15.0, 40.0])
    for num in (2, 3, 10, 100):
        factor = arms.dirichlet_copula_factor(theta, num)
        assert torch.isfinite(factor).all() and (factor > 0).all() and (factor <= 1 + 1e-6).all()
        # nearly deterministic latents are nearly independent: 1 / (1 - rho) -> 1
        assert torch.allclose(factor[[0, -1]], torch.ones(2), atol=1e-5)


def _bernoulli_model_guide():
    w = torch.tensor([0.5, -1.0, 2.0, 0.3, -0.7])
    data = torch.tensor([0.4, -1.2, 2.5])

    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.3 * torch.ones(5)).to_event(1))
            pyro.sample("x", dist.Normal((z * w).sum(-1), 1.0), obs=data)

    def guide():
        logits = pyro.param("arms_logits", torch.linspace(-2, 2, 15).reshape(3, 5))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=logits).to_event(1))

    return model, guide


def test_two_particles_are_disarm_draw_for_draw():
    model, guide = _bernoulli_model_guide()
    pyro.clear_param_store()
    grads = {}
    for label, elbo in [("arms", ARMSELBO(num_particles=2)), ("disarm", ARSMELBO(num_particles=1))]:
        rows = []
        for seed in range(5):
            pyro.set_rng_seed(seed)
            guide()
            param = pyro.param("arms_logits").unconstrained()
            (grad,) = torch.autograd.grad(elbo.differentiable_loss(model, guide), param)
            rows.append(grad)
        grads[label] = torch.stack(rows)
    assert grads["arms"].abs().sum() > 0
    assert torch.allclose(grads["arms"], grads["disarm"], atol=1e-6)


def test_unbiased_and_the_uncorrected_estimator_is_caught(monkeypatch):
    # the statistical check passes ARMS and fails it without the 1 / (1 - rho) correction (leave-one-out on
    # antithetic draws), on the same draws
    family = make_family("bernoulli_vector")
    init_params(family)
    ref = reference(family)
    stats = gradient_draws(ARMSELBO(num_particles=4), family, num_batches=50, draws_per_batch=40)
    check_unbiased(stats, ref, num_se=5.0, what="arms")
    monkeypatch.setattr(arms, "dirichlet_copula_factor", lambda logits, num: torch.ones_like(logits))
    stats = gradient_draws(ARMSELBO(num_particles=4), family, num_batches=50, draws_per_batch=40)
    with pytest.raises(AssertionError, match="biased beyond"):
        check_unbiased(stats, ref, num_se=5.0, what="uncorrected")


def test_lower_variance_than_leave_one_out_at_equal_particles():
    # measured on this family (1000 draws): 0.78x leave-one-out's variance at 2 particles, 0.98x at 4, 1.01x at 8
    family = make_family("bernoulli_vector")
    init_params(family)
    variances = {}
    for label, elbo in [("arms", ARMSELBO(num_particles=2)), ("loo", TraceScoreELBO(num_particles=2, baseline="loo"))]:
        stats = gradient_draws(elbo, family, num_batches=20, draws_per_batch=40)
        variances[label] = sum(v.sum().item() for v in stats.variance.values())
    assert variances["arms"] < variances["loo"]


def test_a_bernoulli_site_drawn_per_particle_is_an_error_naming_it():
    def model():
        a = pyro.sample("a", dist.Bernoulli(0.5))
        pyro.sample("b", dist.Bernoulli(0.2 + 0.6 * a))

    def guide():
        a = pyro.sample("a", dist.Bernoulli(logits=pyro.param("qa", torch.tensor(0.1))))
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("qb", torch.tensor(-0.2)) + a))

    pyro.clear_param_store()
    with pytest.raises(EstimatorError) as info:
        ARMSELBO(num_particles=4).differentiable_loss(model, guide)
    error = info.value
    assert "b" in error.sites and error.estimator == "ARMSELBO"
    assert "arms" not in error.alternatives and "loo" in error.alternatives


def test_categorical_sites_get_leave_one_out_and_the_value_is_the_elbo():
    family = make_family("global_bernoulli_local_categorical")
    init_params(family)
    pyro.set_rng_seed(0)
    loss = ARMSELBO(num_particles=200).loss(family.model, family.guide, *family.args)
    pyro.set_rng_seed(0)
    expected = Trace_ELBO(num_particles=2000, vectorize_particles=True).loss(family.model, family.guide, *family.args)
    assert math.isfinite(loss) and abs(loss - expected) < 0.05 * (1 + abs(expected))


def test_needs_two_vectorized_particles():
    with pytest.raises(EstimatorError):
        ARMSELBO(num_particles=1)
    with pytest.raises(EstimatorError, match="vectorize_particles"):
        ARMSELBO(num_particles=4, vectorize_particles=False)
