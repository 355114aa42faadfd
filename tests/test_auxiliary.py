# SPDX-License-Identifier: Apache-2.0
"""Auxiliary parameters (a learned baseline): how they learn, and that nothing else sees their objective."""

import pyro
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_discrete import TraceScoreELBO
from pyro_discrete.auxiliary import inject
from pyro_discrete.baselines import NeuralBaseline
from pyro_discrete.statistics import draw_statistics, draws_plate

from common import check_unbiased, init_params, make_family, reference


def _net(inputs=6):
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(inputs, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def test_inject_has_value_zero_and_the_given_gradient():
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(2, requires_grad=True)
    g = torch.tensor([1.0, -2.0, 0.5])
    term = inject([a], [g])
    assert term.item() == 0.0
    ga, gb = torch.autograd.grad(term + (b**2).sum(), [a, b])
    assert torch.equal(ga, g) and torch.allclose(gb, 2 * b)


def test_learns_through_svi_and_is_in_the_param_store():
    family = make_family("amortized_vae")
    init_params(family)
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    svi = SVI(family.model, family.guide, Adam({"lr": 0.01}), loss=TraceScoreELBO(baseline=NeuralBaseline(net)))
    for _ in range(5):
        svi.step(*family.args)
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
    stored = [k for k in pyro.get_param_store().keys() if k.startswith("neural_baseline$$$")]
    assert len(stored) == 4
    assert all(pyro.get_param_store()[k] is p for k, p in zip(sorted(stored), _sorted_params(net)))


def _sorted_params(net):
    return [p for _, p in sorted(net.named_parameters())]


def test_learns_through_a_torch_optimizer():
    family = make_family("amortized_vae")
    init_params(family)
    net = _net()
    elbo = TraceScoreELBO(baseline=NeuralBaseline(net))
    module = elbo(family.model, family.guide)
    module(*family.args)  # registers the baseline
    assert {id(p) for p in net.parameters()} <= {id(p) for p in module.parameters()}
    optim = torch.optim.Adam(module.parameters(), lr=0.01)
    before = [p.detach().clone() for p in net.parameters()]
    for _ in range(3):
        optim.zero_grad()
        module(*family.args).backward()
        optim.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters()))


def test_torch_optimizer_keeps_stepping_the_estimators_tensors_when_the_store_has_the_name():
    # an earlier estimator of the same name left its parameters in Pyro's param store; a torch optimizer
    # over the new estimator's module must step the tensors that estimator uses (the old pyro.module(...,
    # update_module_params=True) swapped the module's parameters for the stored ones: the optimizer then
    # stepped orphans and the baseline silently stopped learning)
    family = make_family("amortized_vae")
    init_params(family)
    first = TraceScoreELBO(baseline=NeuralBaseline(_net()))
    first.differentiable_loss(family.model, family.guide, *family.args)  # fills the store
    net = _net()
    stale = {k: v.detach().clone() for k, v in pyro.get_param_store().items() if k.startswith("neural_baseline")}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # unlike the stored values
    module = TraceScoreELBO(baseline=NeuralBaseline(net))(family.model, family.guide)
    own = [id(p) for p in net.parameters()]
    optim = torch.optim.Adam(module.parameters(), lr=0.01)
    used = []
    for _ in range(3):
        optim.zero_grad()
        module(*family.args).backward()
        optim.step()
        used.append([p.detach().clone() for p in net.parameters()])
    assert [id(p) for p in net.parameters()] == own, "the module's parameters were replaced"
    assert all(pyro.get_param_store()[k] is p for k, p in zip(sorted(stale), _sorted_params(net)))
    assert all(not torch.equal(a, b) for a, b in zip(used[0], used[-1])), "the baseline did not learn"
    # the module took the stored values (a restored param store resumes the baseline)
    assert torch.allclose(used[0][0], stale["neural_baseline$$$0.weight"], atol=0.1)


def test_objective_reaches_only_the_baseline():
    # the same draws with the learned baseline, and with its values frozen into a constant one:
    # the model and guide gradients are identical; the baseline's gradient is that of sum (c - b)^2
    family = make_family("amortized_vae")
    params = init_params(family)
    net = _net()
    learned = TraceScoreELBO(baseline=NeuralBaseline(net))
    pyro.set_rng_seed(4)
    loss = learned.differentiable_loss(family.model, family.guide, *family.args)
    grads = torch.autograd.grad(loss, list(params.values()) + list(net.parameters()))

    class Frozen(NeuralBaseline):
        def __call__(self, score_site):
            return super().__call__(score_site).detach()

        def objective(self, score_site, value):
            return value.sum() * 0.0

    frozen = TraceScoreELBO(baseline=Frozen(net))
    pyro.set_rng_seed(4)
    loss2 = frozen.differentiable_loss(family.model, family.guide, *family.args)
    grads2 = torch.autograd.grad(loss2, list(params.values()), allow_unused=True)
    assert loss.item() == pytest.approx(loss2.item(), rel=1e-12)
    for g, g2 in zip(grads[: len(params)], grads2):
        assert torch.allclose(g, g2, rtol=1e-12, atol=1e-12)
    assert any(g.abs().max() > 0 for g in grads[len(params) :])


@pytest.mark.slow
def test_unbiased_while_the_baseline_learns():
    # the baseline takes an Adam step between batches of draws; the model and guide stay put
    family = make_family("amortized_vae")
    init_params(family)
    ref = reference(family)
    net = _net()
    elbo = TraceScoreELBO(baseline=NeuralBaseline(net))
    draws = 40
    model = draws_plate(family.model, draws, -2)
    guide = draws_plate(family.guide, draws, -2)
    store = pyro.get_param_store()
    names = sorted(k for k in store.keys() if not k.startswith("neural_baseline"))
    tensors = [store.get_param(n).unconstrained() for n in names]
    optim = torch.optim.Adam(net.parameters(), lr=0.02)
    batches = []
    pyro.set_rng_seed(0)
    for _ in range(50):
        optim.zero_grad()
        loss = elbo.differentiable_loss(model, guide, *family.args)
        grads = torch.autograd.grad(loss, tensors + list(net.parameters()), allow_unused=True)
        for p, g in zip(net.parameters(), grads[len(tensors) :]):
            p.grad = g
        optim.step()
        batches.append((loss.item(), [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]))
    stats = draw_statistics(batches, names, draws)
    ref_loss, ref_loss_se, ref_grads, ref_ses = ref
    check_unbiased(stats, (ref_loss, ref_loss_se, {n: ref_grads[n] for n in names}, ref_ses), what="NeuralBaseline")


def test_state_dict_holds_the_weights():
    family = make_family("amortized_vae")
    init_params(family)
    elbo = TraceScoreELBO(baseline=NeuralBaseline(_net()))
    elbo.differentiable_loss(family.model, family.guide, *family.args)
    state = elbo.state_dict()
    assert set(state["auxiliary"]) == {"neural_baseline"}
    other = TraceScoreELBO(
        baseline=NeuralBaseline(torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)))
    )
    other.load_state_dict(state)
    for a, b in zip(
        elbo.surrogate.baseline.auxiliary.module.parameters(), other.surrogate.baseline.auxiliary.module.parameters()
    ):
        assert torch.equal(a, b)
