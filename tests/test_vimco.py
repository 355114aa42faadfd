# SPDX-License-Identifier: Apache-2.0
"""
VIMCO and the multi-sample bound: unbiased for the K-sample bound and its
gradient (computed exactly by enumerating every K-tuple of the support), the
same gradient as RenyiELBO(alpha=0) on a continuous model, and the errors.
"""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO

from pyro_discrete import TraceScoreELBO
from pyro_discrete.statistics import draw_statistics, draws_plate
from pyro_discrete.vimco import VIMCOELBO

from common import check_unbiased

DATA = torch.tensor([0.4, -1.3, 2.1])
C = 3


def local_model():
    loc = pyro.param("loc", torch.tensor([-1.0, 0.5, 2.0]))
    with pyro.plate("data", 3):
        z = pyro.sample("z", dist.Categorical(logits=torch.tensor([0.3, -0.2, 0.1])))
        pyro.sample("x", dist.Normal(loc[z], 0.9), obs=DATA)


def local_guide():
    q = pyro.param("q", torch.tensor([[0.5, -0.5, 0.2], [0.0, 1.0, -1.0], [-0.3, 0.2, 0.8]]))
    with pyro.plate("data", 3):
        pyro.sample("z", dist.Categorical(logits=q))


def local_log_w(z_values):
    """log w of every value of z, per data point: (C, 3), with its graph."""
    loc, q = pyro.param("loc"), pyro.param("q")
    prior = torch.tensor([0.3, -0.2, 0.1]).log_softmax(-1)
    z = torch.arange(C)
    log_p = prior[z].unsqueeze(-1) + dist.Normal(loc[z].unsqueeze(-1), 0.9).log_prob(DATA)
    return log_p - q.log_softmax(-1).T


def global_model():
    shift = pyro.param("shift", torch.tensor(0.8))
    g = pyro.sample("g", dist.Bernoulli(0.4))
    with pyro.plate("data", 3):
        pyro.sample("x", dist.Normal(shift * g, 1.0), obs=DATA)


def global_guide():
    pyro.sample("g", dist.Bernoulli(logits=pyro.param("qg", torch.tensor(0.3))))


def exact_bound(log_w_of_value, log_q_of_value, K):
    """E over K i.i.d. draws from q of log mean_k w_k, for one discrete latent with values along dim 0."""
    values = log_w_of_value.shape[0]
    total = 0.0
    for draw in itertools.product(range(values), repeat=K):
        index = torch.tensor(draw)
        log_prob = log_q_of_value[index].sum(0)
        bound = log_w_of_value[index].logsumexp(0) - math.log(K)
        total = total + log_prob.exp() * bound
    return total


def _init(model, guide):
    pyro.clear_param_store()
    guide()
    model()
    store = pyro.get_param_store()
    names = sorted(store.keys())
    return names, [store.get_param(n).unconstrained() for n in names]


def _draws(elbo, model, guide, names, tensors, dim, batches=50, draws=200):
    model, guide = draws_plate(model, draws, dim), draws_plate(guide, draws, dim)
    results = []
    for _ in range(batches):
        loss = elbo.differentiable_loss(model, guide)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        results.append((loss.item(), [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]))
    return draw_statistics(results, names, draws)


@pytest.mark.slow
@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("K", [2, 3])
def test_unbiased_for_the_bound_per_data_point(K, vectorize):
    names, tensors = _init(local_model, local_guide)
    log_q = pyro.param("q").log_softmax(-1).T  # (C, 3)
    exact = exact_bound(local_log_w(None), log_q, K).sum()
    grads = torch.autograd.grad(exact, tensors)
    ref = (
        -exact.item(),
        0.0,
        {n: -g for n, g in zip(names, grads)},
        {n: torch.zeros_like(g) for n, g in zip(names, grads)},
    )
    pyro.set_rng_seed(0)
    elbo = VIMCOELBO(num_particles=K, vectorize_particles=vectorize)
    stats = _draws(elbo, local_model, local_guide, names, tensors, dim=-2 if vectorize else -2, batches=40, draws=100)
    check_unbiased(stats, ref, what="VIMCO(K={})".format(K))


@pytest.mark.slow
def test_unbiased_for_the_bound_of_a_global_latent():
    # a latent outside every plate: one bound for the whole model
    names, tensors = _init(global_model, global_guide)
    shift, qg = pyro.param("shift"), pyro.param("qg")
    g = torch.tensor([0.0, 1.0])
    log_p = dist.Bernoulli(0.4).log_prob(g) + dist.Normal((shift * g).unsqueeze(-1), 1.0).log_prob(DATA).sum(-1)
    log_q = dist.Bernoulli(logits=qg).log_prob(g)
    exact = exact_bound((log_p - log_q).unsqueeze(-1), log_q.unsqueeze(-1), 3).sum()
    grads = torch.autograd.grad(exact, tensors)
    ref = (
        -exact.item(),
        0.0,
        {n: -g for n, g in zip(names, grads)},
        {n: torch.zeros_like(g) for n, g in zip(names, grads)},
    )
    pyro.set_rng_seed(1)
    stats = _draws(VIMCOELBO(num_particles=3), global_model, global_guide, names, tensors, dim=-2)
    check_unbiased(stats, ref, what="VIMCO, global latent")


def test_the_check_detects_the_elbo_gradient_as_biased():
    # the bound's check can fail: the ELBO's (unbiased) gradient is not the K-sample bound's
    names, tensors = _init(local_model, local_guide)
    log_q = pyro.param("q").log_softmax(-1).T
    exact = exact_bound(local_log_w(None), log_q, 3).sum()
    grads = torch.autograd.grad(exact, tensors)
    ref = (
        -exact.item(),
        0.0,
        {n: -g for n, g in zip(names, grads)},
        {n: torch.zeros_like(g) for n, g in zip(names, grads)},
    )
    pyro.set_rng_seed(2)
    stats = _draws(TraceScoreELBO(num_particles=3), local_model, local_guide, names, tensors, dim=-2)
    with pytest.raises(AssertionError, match="biased beyond"):
        check_unbiased(stats, ref)


def continuous_model():
    loc = pyro.param("prior_loc", torch.tensor(0.3))
    with pyro.plate("data", 3):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=DATA)


def continuous_guide():
    m = pyro.param("m", torch.tensor([0.1, -0.5, 1.0]))
    with pyro.plate("data", 3):
        pyro.sample("z", dist.Normal(m, 0.8))


def test_continuous_model_equals_renyi_elbo_alpha_zero():
    # no score function: VIMCO is the IWAE gradient, draw for draw the same as Pyro's RenyiELBO(alpha=0)
    names, tensors = _init(continuous_model, continuous_guide)
    results = []
    for elbo in (
        VIMCOELBO(num_particles=5, max_plate_nesting=1),
        RenyiELBO(alpha=0.0, num_particles=5, vectorize_particles=True, max_plate_nesting=1),
    ):
        pyro.set_rng_seed(3)
        for t in tensors:
            t.grad = None
        loss = elbo.loss_and_grads(continuous_model, continuous_guide)
        results.append((loss, [t.grad.clone() for t in tensors]))
    (loss_v, grads_v), (loss_r, grads_r) = results
    assert loss_v == pytest.approx(loss_r, rel=1e-10)
    for a, b in zip(grads_v, grads_r):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_bound_is_between_elbo_and_log_likelihood():
    _init(local_model, local_guide)
    elbo = -TraceScoreELBO(num_particles=2000).loss(local_model, local_guide)
    log_q = pyro.param("q").log_softmax(-1).T
    log_p_x = (local_log_w(None) + log_q).logsumexp(0).sum().item()
    pyro.set_rng_seed(4)
    bound = -sum(VIMCOELBO(num_particles=8).loss(local_model, local_guide) for _ in range(200)) / 200
    assert elbo - 0.05 < bound < log_p_x + 0.05


def test_errors():
    with pytest.raises(ValueError, match=r"VIMCOELBO: .*num_particles >= 2"):
        VIMCOELBO(num_particles=1)

    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            with poutine.scale(scale=2.0):
                pyro.sample("x", dist.Normal(z, 1.0), obs=DATA)

    def guide():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(3))))

    with pytest.raises(ValueError, match=r"VIMCOELBO: sites 'z' and 'x' have different scales"):
        VIMCOELBO().loss(model, guide)


def test_subsampling_scales_the_bounds():
    def model(size):
        with pyro.plate("data", 3, subsample_size=size) as idx:
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=DATA[idx])

    def guide(size):
        with pyro.plate("data", 3, subsample_size=size) as idx:
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(3))[idx]))

    pyro.set_rng_seed(5)
    full = sum(VIMCOELBO(num_particles=4).loss(model, guide, 3) for _ in range(400)) / 400
    pyro.set_rng_seed(6)
    sub = sum(VIMCOELBO(num_particles=4).loss(model, guide, 1) for _ in range(4000)) / 4000
    assert sub == pytest.approx(full, rel=0.03)
