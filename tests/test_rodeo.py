# SPDX-License-Identifier: Apache-2.0
"""
RODEO and Double CV: unbiased with their control variates switched on (fixed
random ones, and while they learn), lower variance once learned, and the errors.
The registry's checks run them at their initial values, where both are
leave-one-out.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_discrete import RODEOELBO, TraceScoreELBO
from pyro_discrete.errors import EstimatorError
from pyro_discrete.statistics import draw_statistics, draws_plate

from common import check_unbiased, init_params, make_family, reference


def _switch_on(elbo, seed=0):
    torch.manual_seed(seed)
    network = elbo.surrogate.auxiliary.module
    with torch.no_grad():
        network.alpha.fill_(0.7)
        network.beta.fill_(-0.4)
        for p in network.parameters():
            if p.dim() > 0:
                p.normal_(0, 0.5)
    return elbo


def _draws(elbo, family, batches=50, draws=40, learn=None):
    model = draws_plate(family.model, draws, -(family.max_plate_nesting + 1))
    guide = draws_plate(family.guide, draws, -(family.max_plate_nesting + 1))
    store = pyro.get_param_store()
    names = sorted(n for n in store.keys() if not n.startswith("rodeo_control"))
    tensors = [store.get_param(n).unconstrained() for n in names]
    network = list(elbo.surrogate.auxiliary.module.parameters()) if hasattr(elbo.surrogate, "auxiliary") else []
    results = []
    for _ in range(batches):
        loss = elbo.differentiable_loss(model, guide, *family.args)
        grads = torch.autograd.grad(loss, tensors + network, allow_unused=True)
        if learn is not None:
            for p, g in zip(network, grads[len(tensors) :]):
                p.grad = g
            learn.step()
        results.append((loss.item(), [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]))
    return names, draw_statistics(results, names, draws)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["rodeo", "double_cv"])
@pytest.mark.parametrize("family_name", ["bernoulli_vector", "continuous_global_discrete_local"])
def test_unbiased_with_control_variates_on(family_name, variant):
    family = make_family(family_name)
    init_params(family)
    ref_loss, ref_se, ref_grads, ref_ses = reference(family)
    elbo = _switch_on(RODEOELBO(num_particles=3, variant=variant))
    pyro.set_rng_seed(0)
    names, stats = _draws(elbo, family)
    check_unbiased(
        stats, (ref_loss, ref_se, {n: ref_grads[n] for n in names}, {n: ref_ses[n] for n in names}), what=variant
    )


@pytest.mark.slow
def test_unbiased_while_the_control_variates_learn():
    family = make_family("bernoulli_vector")
    init_params(family)
    ref_loss, ref_se, ref_grads, ref_ses = reference(family)
    elbo = RODEOELBO(num_particles=2)
    learn = torch.optim.Adam(elbo.surrogate.auxiliary.module.parameters(), lr=0.05)
    pyro.set_rng_seed(1)
    names, stats = _draws(elbo, family, learn=learn)
    assert elbo.surrogate.auxiliary.module.alpha.item() != 0.0  # it moved
    check_unbiased(stats, (ref_loss, ref_se, {n: ref_grads[n] for n in names}, {n: ref_ses[n] for n in names}))


@pytest.mark.slow
def test_learned_control_variates_lower_the_variance():
    family = make_family("bernoulli_vector")
    init_params(family)
    trained = RODEOELBO(num_particles=2)
    learn = torch.optim.Adam(trained.surrogate.auxiliary.module.parameters(), lr=0.02)
    pyro.set_rng_seed(2)
    for _ in range(300):  # the control variates learn at fixed model and guide
        learn.zero_grad()
        loss = trained.differentiable_loss(family.model, family.guide, *family.args)
        params = list(trained.surrogate.auxiliary.module.parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
            p.grad = g
        learn.step()
    measured = RODEOELBO(num_particles=2)  # takes the learned weights from the param store
    pyro.set_rng_seed(3)
    _, learned = _draws(measured, family, batches=40)
    assert measured.surrogate.auxiliary.module.alpha.item() == trained.surrogate.auxiliary.module.alpha.item()
    _, loo = _draws(TraceScoreELBO(num_particles=2, baseline="loo"), family, batches=40)
    print(
        "\nbernoulli_vector, K = 2: total variance RODEO (learned) {:.4g}, leave-one-out {:.4g}".format(
            learned.total_variance(), loo.total_variance()
        )
    )
    assert learned.total_variance() < loo.total_variance()


def test_initially_equals_leave_one_out():
    family = make_family("bernoulli_vector")
    params = init_params(family)
    results = []
    for elbo in (RODEOELBO(num_particles=3), TraceScoreELBO(num_particles=3, baseline="loo")):
        pyro.set_rng_seed(4)
        loss = elbo.differentiable_loss(family.model, family.guide, *family.args)
        results.append(torch.autograd.grad(loss, list(params.values())))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-10)


def test_errors_and_non_differentiable_models():
    family = make_family("to_event_onehot")
    init_params(family)
    with pytest.raises(NotImplementedError, match=r"RODEOELBO: guide site 'z' is not a Bernoulli site") as info:
        RODEOELBO().differentiable_loss(family.model, family.guide, *family.args)
    assert info.value.requirement == "site_kind" and info.value.alternatives and "rodeo" not in info.value.alternatives

    def model():
        b = pyro.sample("b", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(torch.tensor([0.0, 2.0])[b.long()], 1.0), obs=torch.tensor(1.0))

    def guide():
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.0))))

    # not differentiable in the value (an index): still runs, weaker control variates
    assert torch.isfinite(RODEOELBO().differentiable_loss(model, guide))
    with pytest.raises(ValueError, match="RODEOELBO: variant must be"):
        RODEOELBO(variant="relax")


def test_quadratic_memory_is_refused_before_allocation():
    # Pyro's test_elbo_bern setting (2000 particles, one Bernoulli site): the process once grew past 24 GB (a
    # hidden layer per pair of particles); the pairs now hold a few numbers each (about 0.45 GB here), and a
    # count of particles whose pairs would not fit is refused before anything is allocated
    import resource

    def model():
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.5))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.0))))

    pyro.clear_param_store()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(EstimatorError) as info:
        RODEOELBO(20000).differentiable_loss(model, guide)
    assert info.value.requirement == "memory" and info.value.sites == ("z",)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) < 500 * 1024  # kB: nothing large allocated
    pyro.clear_param_store()
    loss = RODEOELBO(2000).differentiable_loss(model, guide)
    assert torch.isfinite(loss)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) < 1024 * 1024  # kB: under 1 GB
    # the linear variant runs the same particles
    pyro.clear_param_store()
    loss = RODEOELBO(2000, variant="double_cv").differentiable_loss(model, guide)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_piecewise_linear_network_equals_its_forward(dtype, tol):
    # the sorted-breakpoint evaluation against the network's own forward at every pair, values and gradients,
    # with flat units (zero input weight) and points on both sides of every breakpoint
    from pyro_discrete.rodeo import ControlNetwork

    torch.manual_seed(0)
    net = ControlNetwork(50).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
        net.taylor.weight[:4] = 0
    K, n, P = 4, 6, 9
    taylor = 3 * torch.randn(K, K, n, P, dtype=dtype)
    cost = 2 * torch.randn(K, n, dtype=dtype)
    h1, h2 = net(taylor, cost.unsqueeze(0).unsqueeze(-1).expand(taylor.shape))
    mask = (~torch.eye(K, dtype=torch.bool)).reshape(K, K, 1, 1).to(dtype) / (K - 1)
    expected = ((h1 * mask).sum(1), (h2 * mask).sum(1))
    got = net.mean_over_others(taylor, cost)
    u = [torch.randn_like(e) for e in expected]
    params = [net.taylor.weight, net.taylor.bias, net.cost.weight, net.out.weight, net.out.bias]
    g_expected = torch.autograd.grad(sum((e * w).sum() for e, w in zip(expected, u)), params)
    g_got = torch.autograd.grad(sum((e * w).sum() for e, w in zip(got, u)), params)
    for a, b in zip(got + g_got, expected + g_expected):
        assert torch.allclose(a, b, rtol=tol, atol=tol * b.abs().max().item())
