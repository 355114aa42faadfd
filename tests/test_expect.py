# SPDX-License-Identifier: Apache-2.0
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam

from pyro_discrete import ExpectELBO
from pyro_discrete.expect import joint_support

from common import exact_gradient, init_params, make_family, poisson_model_guide
from tutorial_vae import make_tutorial_vae


def _loss_and_grads(elbo, model, guide, args, params):
    loss = elbo.differentiable_loss(model, guide, *args)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return loss.item(), [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads)]


@pytest.mark.parametrize(
    "family_name", ["local_categorical_subsampled", "global_bernoulli_local_categorical", "to_event_onehot"]
)
def test_equals_trace_enum_elbo(family_name):
    # ExpectELBO on the separate-site model (where TraceEnum_ELBO applies) equals
    # TraceEnum_ELBO with an enumerated guide, loss and every gradient, to 1e-6
    family = make_family(family_name)
    params = init_params(family)
    args = family.exact_args or family.args
    enum_loss, enum_grads = _loss_and_grads(
        TraceEnum_ELBO(max_plate_nesting=1),
        family.separate_model,
        config_enumerate(family.separate_guide, "parallel"),
        args,
        params,
    )
    loss, grads = _loss_and_grads(ExpectELBO(), family.separate_model, family.separate_guide, args, params)
    assert loss == pytest.approx(enum_loss, abs=1e-6)
    for g, e in zip(grads, enum_grads):
        assert torch.allclose(g, e, atol=1e-6)
    assert any(g.abs().max() > 1e-3 for g in grads)


def test_to_event_equals_separate_sites():
    # one site holding K one-hot latents with .to_event(1) (which TraceEnum_ELBO
    # cannot enumerate) equals the same model written with K separate sites
    family = make_family("to_event_onehot")
    params = init_params(family)
    joint_loss, joint_grads = _loss_and_grads(ExpectELBO(), family.model, family.guide, family.args, params)
    sep_loss, sep_grads = _loss_and_grads(
        TraceEnum_ELBO(max_plate_nesting=1),
        family.separate_model,
        config_enumerate(family.separate_guide, "parallel"),
        family.args,
        params,
    )
    assert joint_loss == pytest.approx(sep_loss, abs=1e-6)
    for a, b in zip(joint_grads, sep_grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_bernoulli_to_event_equals_brute_force():
    # the ELBO of a Bernoulli vector site, enumerated jointly, equals a hand-written
    # sum over all 2**L configurations
    family = make_family("bernoulli_vector")
    init_params(family)
    loss = ExpectELBO().loss(family.model, family.guide, *family.args)
    x = family.args[0]
    w = pyro.param("w")
    q = pyro.param("b_logits")
    L = q.shape[-1]
    configs = torch.tensor([[(i >> j) & 1 for j in range(L)] for i in range(2**L)], dtype=x.dtype)
    elbo = 0.0
    for b in configs:
        log_q = dist.Bernoulli(logits=q).log_prob(b).sum(-1)
        log_p = dist.Bernoulli(torch.full((L,), 0.4)).log_prob(b).sum(-1)
        log_lik = dist.Normal(torch.sin(b @ w) * 1.5, 0.7).log_prob(x).sum(-1)
        elbo = elbo + (log_q.exp() * (log_p + log_lik - log_q)).sum()
    assert loss == pytest.approx(-elbo.item(), rel=1e-10)


def test_joint_support_layout():
    d = dist.OneHotCategorical(logits=torch.zeros(5, 2, 3)).to_event(1)
    size, make = joint_support(d)
    values = make()
    assert size == 9 and values.shape == (9, 2, 3)
    assert len({tuple(v.argmax(-1).tolist()) for v in values}) == 9
    assert joint_support(dist.Normal(0.0, 1.0)) is None
    size, make = joint_support(dist.Bernoulli(torch.full((4,), 0.5)).to_event(1).mask(torch.tensor(True)))
    assert size == 16 and make().shape == (16, 4)


def test_budget_error():
    def model():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(20, 10)).to_event(1))

    def guide():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(20, 10)).to_event(1))

    with pytest.raises(ValueError, match=r"ExpectELBO: enumerating guide site 'z' \(10{20} values\).*budget=10000"):
        ExpectELBO().loss(model, guide)
    with pytest.raises(ValueError, match=r"would make 100000000000000000000 joint configurations"):
        ExpectELBO(budget=10**6).loss(model, guide)


def test_budget_counts_all_sites():
    def model():
        for i in range(3):
            pyro.sample("z{}".format(i), dist.Categorical(logits=torch.zeros(30)))

    guide = model
    assert ExpectELBO(budget=30 * 30 * 30).loss(model, guide) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(
        ValueError, match=r"'z2' \(30 values\) would make 27000 .*\(with 'z0': 30, 'z1': 30\).*budget=1000"
    ):
        ExpectELBO(budget=1000).loss(model, guide)


def test_error_site_outside_plate_depends_on_enumerated_local():
    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0), obs=torch.tensor(1.0))

    def guide():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(pyro.param("p", torch.full((3,), 0.4))))

    with pytest.raises(ValueError) as info:
        ExpectELBO().loss(model, guide)
    # loss() checks the plates by name; a gradient step's structural analysis says the same first
    assert info.value.estimator == "ExpectELBO" and "z" in info.value.sites
    assert info.value.requirement == "replayable_per_element"


def test_error_non_enumerable_discrete_site():
    model, guide = poisson_model_guide()
    with pytest.raises(NotImplementedError, match=r"ExpectELBO: guide site 'n' \(Poisson\)") as info:
        ExpectELBO().loss(model, guide)
    assert info.value.requirement == "site_kind" and info.value.sites == ("n",)
    assert "loo" in info.value.alternatives and "expect" not in info.value.alternatives


def test_zero_probability_configurations_give_no_nan():
    # q puts zero mass on a value whose model log-density is -inf
    def model():
        pyro.sample("z", dist.Categorical(probs=torch.tensor([0.5, 0.5, 0.0])))

    def guide():
        p = pyro.param("p", torch.tensor([0.3, 0.7, 0.0]))
        pyro.sample("z", dist.Categorical(probs=p))

    loss = ExpectELBO().differentiable_loss(model, guide)
    (g,) = torch.autograd.grad(loss, [pyro.param("p").unconstrained()])
    assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_continuous_sites_are_sampled_with_particles():
    family = make_family("continuous_global_discrete_local")
    params = init_params(family)
    elbo = ExpectELBO(num_particles=50)
    loss = elbo.differentiable_loss(family.model, family.guide, *family.args)
    grads = torch.autograd.grad(loss, list(params.values()))
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes(dtype):
    torch.set_default_dtype(dtype)
    family = make_family("amortized_vae")
    params = init_params(family)
    loss, grads = _loss_and_grads(ExpectELBO(), family.model, family.guide, family.args, params)
    assert all(g.dtype == dtype for g in grads)


def test_exact_gradient_is_deterministic():
    family = make_family("amortized_vae")
    init_params(family)
    a = exact_gradient(family)
    b = exact_gradient(family)
    assert a[0] == b[0]


def test_svi_trains_tutorial_vae():
    torch.set_default_dtype(torch.float32)
    model, guide, batches = make_tutorial_vae(num_batches=4)
    svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=ExpectELBO())
    losses = [svi.step(batches[i % len(batches)]) / 64 for i in range(40)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    family = make_family("to_event_onehot")
    with torch.device("cuda"):
        params = init_params(family)
        args = tuple(a.cuda() for a in family.args)
        loss = ExpectELBO().differentiable_loss(family.model, family.guide, *args)
    assert loss.device.type == "cuda"
    torch.autograd.grad(loss, list(params.values()))
