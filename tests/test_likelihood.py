# SPDX-License-Identifier: Apache-2.0
"""log_likelihood (importance-weighted) against the exact log p(x) of an enumerable model."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_discrete import TraceScoreELBO
from pyro_discrete.diagnostics import exact_log_likelihood, log_likelihood

from common import init_params, make_family
from tutorial_vae import make_tutorial_vae


def test_exact_log_likelihood_by_hand():
    data = torch.tensor([0.4, -1.0])

    def model():
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Categorical(logits=torch.tensor([0.2, -0.1, 0.5])))
            pyro.sample("x", dist.Normal(z.to(data.dtype), 1.0), obs=data)

    exact = exact_log_likelihood(model)
    prior = torch.tensor([0.2, -0.1, 0.5]).log_softmax(-1)
    by_hand = (prior.unsqueeze(-1) + dist.Normal(torch.arange(3.0).unsqueeze(-1), 1.0).log_prob(data)).logsumexp(0)
    assert torch.allclose(exact, by_hand, atol=1e-12)
    assert type(exact) is torch.Tensor  # not the enumeration's provenance-tracking subclass


@pytest.mark.parametrize("vectorize", [True, False])
def test_importance_weighted_estimate_equals_exact_within_its_se(vectorize):
    family = make_family("amortized_vae")  # 2 latents x 3 categories per data point: 9 values, enumerable
    init_params(family)
    exact = exact_log_likelihood(family.model, *family.args)
    pyro.set_rng_seed(0)
    estimate = log_likelihood(
        family.model,
        family.guide,
        *family.args,
        num_samples=4000 if vectorize else 200,
        batch_size=1000,
        vectorize=vectorize,
    )
    assert estimate.per_element.shape == exact.shape == (6,)
    z = (estimate.per_element - exact).abs() / estimate.se
    assert (z < 5).all(), (estimate.per_element, exact, estimate.se)
    assert estimate.se.max() < (0.2 if vectorize else 0.5)
    assert abs(estimate.total - exact.sum().item()) < 5 * estimate.total_se


def test_the_check_can_fail():
    # the same check tells an estimate from a value off by half a nat
    family = make_family("amortized_vae")
    init_params(family)
    exact = exact_log_likelihood(family.model, *family.args)
    pyro.set_rng_seed(0)
    estimate = log_likelihood(family.model, family.guide, *family.args, num_samples=4000, batch_size=1000)
    z = (estimate.per_element - (exact + 0.5)).abs() / estimate.se
    assert (z > 5).all()


def test_tutorial_vae_estimate_equals_exact_within_its_se():
    # the Storchastic tutorial's VAE, 2 x 10 latents: 100 joint values per image, enumerable; a few
    # training steps first, so that the guide is not the uniform one
    pyro.clear_param_store()
    model, guide, batches = make_tutorial_vae(num_batches=3, batch_size=16)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=TraceScoreELBO(num_particles=4))
    for x in batches[:2]:
        svi.step(x)
    x = batches[2]
    exact = exact_log_likelihood(model, x)
    pyro.set_rng_seed(0)
    estimate = log_likelihood(model, guide, x, num_samples=2000, batch_size=500)
    assert estimate.per_element.shape == exact.shape == (16,)
    z = (estimate.per_element - exact).abs() / estimate.se
    assert (z < 5).all(), (estimate.per_element, exact, estimate.se)
    assert abs(estimate.total - exact.sum().item()) < 5 * estimate.total_se
    print(
        "\ntutorial VAE, 16 images: exact log p(x) {:.3f}, importance-weighted {:.3f} +- {:.3f} (2000 samples)".format(
            exact.sum().item(), estimate.total, estimate.total_se
        )
    )
