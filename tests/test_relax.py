# SPDX-License-Identifier: Apache-2.0
"""
RELAX and REBAR: the conditional relaxed sample, unbiasedness with a network
control variate (categorical index sites too), with both, and while the
control variate learns; the variance objective reaches only its parameters.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_discrete import RELAXELBO
from pyro_discrete.relax import relaxed_and_conditional
from pyro_discrete.statistics import draw_statistics, draws_plate

from common import check_unbiased, init_params, make_family, reference


def test_conditional_bernoulli_sample_matches_rejection_sampling():
    torch.manual_seed(0)
    logits = torch.full((400000,), 0.8)
    z, b, z_tilde = relaxed_and_conditional("bernoulli", logits)
    assert torch.equal((z_tilde > 0).to(b.dtype), b)  # H(z_tilde) = b, always
    for value in (0.0, 1.0):
        chosen = b == value
        # z given b, by rejection: the z that produced b; z_tilde must have the same law
        quantiles = torch.tensor([0.1, 0.5, 0.9], dtype=z.dtype)
        assert torch.allclose(z[chosen].quantile(quantiles), z_tilde[chosen].quantile(quantiles), atol=0.03)


def test_conditional_categorical_sample_matches_rejection_sampling():
    torch.manual_seed(1)
    logits = torch.tensor([0.5, -1.0, 1.5, 0.0]).expand(300000, 4)
    z, index, z_tilde = relaxed_and_conditional("categorical", logits)
    assert torch.equal(z_tilde.argmax(-1), index)
    chosen = index == 2
    assert torch.allclose((z[chosen] / 0.7).softmax(-1).mean(0), (z_tilde[chosen] / 0.7).softmax(-1).mean(0), atol=3e-3)


def _net(inputs):
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(inputs, 8), nn.Tanh(), nn.Linear(8, 1))


def _draws(elbo, family, batches=50, draws=40, learn=None):
    model = draws_plate(family.model, draws, -(family.max_plate_nesting + 1))
    guide = draws_plate(family.guide, draws, -(family.max_plate_nesting + 1))
    store = pyro.get_param_store()
    names = sorted(n for n in store.keys() if not n.startswith("relax_control"))
    tensors = [store.get_param(n).unconstrained() for n in names]
    control = [p for p in elbo.surrogate.auxiliary.module.parameters() if p.requires_grad]
    results = []
    for _ in range(batches):
        loss = elbo.differentiable_loss(model, guide, *family.args)
        grads = torch.autograd.grad(loss, tensors + control, allow_unused=True)
        if learn is not None:
            for p, g in zip(control, grads[len(tensors) :]):
                p.grad = g
            learn.step()
        results.append((loss.item(), [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]))
    return names, draw_statistics(results, names, draws)


def _check(family, stats, names):
    ref_loss, ref_se, ref_grads, ref_ses = reference(family)
    check_unbiased(stats, (ref_loss, ref_se, {n: ref_grads[n] for n in names}, {n: ref_ses[n] for n in names}))


@pytest.mark.slow
@pytest.mark.parametrize(
    "family_name,inputs", [("local_categorical_subsampled", 3), ("amortized_vae", 6), ("bernoulli_vector", 4)]
)
def test_unbiased_with_a_network(family_name, inputs):
    # RELAX with a network only: categorical index sites too
    family = make_family(family_name)
    init_params(family)
    pyro.set_rng_seed(0)
    names, stats = _draws(RELAXELBO(control_variate=_net(inputs), num_particles=2), family)
    _check(family, stats, names)


@pytest.mark.slow
def test_unbiased_with_rebar_and_a_network():
    family = make_family("amortized_vae")
    init_params(family)
    pyro.set_rng_seed(1)
    names, stats = _draws(RELAXELBO(control_variate="rebar", network=_net(6), eta=0.8), family)
    _check(family, stats, names)


@pytest.mark.slow
def test_unbiased_while_the_control_variate_learns():
    family = make_family("bernoulli_vector")
    init_params(family)
    elbo = RELAXELBO(control_variate="rebar", network=_net(4))
    learn = torch.optim.Adam([p for p in elbo.surrogate.auxiliary.module.parameters() if p.requires_grad], lr=0.05)
    pyro.set_rng_seed(2)
    names, stats = _draws(elbo, family, learn=learn)
    assert abs(elbo.temperature - 0.5) > 1e-3  # it learned
    _check(family, stats, names)


def test_variance_objective_reaches_only_the_control_variate():
    # the same draws with learning on and off: identical model and guide gradients
    family = make_family("bernoulli_vector")
    params = init_params(family)
    grads = []
    for learn_temperature in (True, False):
        elbo = RELAXELBO(learn_temperature=learn_temperature, name="cv{}".format(learn_temperature))
        pyro.set_rng_seed(3)
        loss = elbo.differentiable_loss(family.model, family.guide, *family.args)
        control = [p for p in elbo.surrogate.auxiliary.module.parameters() if p.requires_grad]
        g = torch.autograd.grad(loss, list(params.values()) + control)
        grads.append(g[: len(params)])
        assert all(c.abs().sum() > 0 for c in g[len(params) :])  # eta (and the temperature) get a gradient
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="RELAXELBO: control_variate must be"):
        RELAXELBO(control_variate=None)
    with pytest.raises(ValueError, match="RELAXELBO: temperature must be positive"):
        RELAXELBO(temperature=0.0)
    family = make_family("local_categorical_subsampled")
    init_params(family)
    with pytest.raises(NotImplementedError, match=r"RELAXELBO: guide site 'z' is a Categorical \(index\) site"):
        RELAXELBO().loss(family.model, family.guide, *family.args)

    def model():
        y = pyro.sample("y", dist.Bernoulli(0.5))
        pyro.sample("w", dist.Normal(y, 1.0))

    def guide():
        y = pyro.sample("y", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.0))))
        pyro.sample("w", dist.Normal(2 * y, 1.0))

    with pytest.raises(NotImplementedError, match=r"RELAXELBO: guide site 'w' depends on .*'y'"):
        RELAXELBO().differentiable_loss(model, guide)
