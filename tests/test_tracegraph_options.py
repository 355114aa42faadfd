# SPDX-License-Identifier: Apache-2.0
"""
TraceGraph_ELBO's per-site baseline options, honored by the score family: a
guide written for TraceGraph_ELBO ports by changing the loss alone.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, TraceGraph_ELBO
from pyro.optim import Adam
from torch import nn

from pyro_discrete import TraceScoreELBO
from pyro_discrete.baselines import NeuralBaseline
from pyro_discrete.errors import EstimatorError
from pyro_discrete.traces import IgnoredInferOption

from common import check_unbiased, gradient_draws, init_params, make_family, reference


def data():
    return torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(3, 2)
        self.decoder = nn.Linear(2, 3)
        self.baseline = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def make(options):
    net = Net()

    def model(x):
        pyro.module("decoder", net.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(torch.full((2,), 0.4)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=net.decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", net.encoder)
        pyro.module("baseline", net.baseline)
        baseline = {}
        if "avg" in options:
            baseline.update(use_decaying_avg_baseline=True, baseline_beta=0.8)
        if "nn" in options:
            baseline.update(nn_baseline=lambda u: net.baseline(u).squeeze(-1), nn_baseline_input=x)
        if "value" in options:
            baseline.update(baseline_value=torch.full((x.shape[0],), 3.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=net.encoder(x)).to_event(1), infer={"baseline": baseline})

    return model, guide, net


@pytest.mark.parametrize("options", [("avg",), ("nn",), ("value",), ("avg", "nn")])
def test_options_are_honored_without_warnings(options):
    model, guide, net = make(options)
    elbo = TraceScoreELBO(num_particles=1, baseline=None)
    before = [p.detach().clone() for p in net.baseline.parameters()]
    svi = SVI(model, guide, Adam({"lr": 0.05}), loss=elbo)
    with _no_ignored_option_warning():
        for _ in range(5):
            svi.step(data())
    moved = any(not torch.equal(b, p) for b, p in zip(before, net.baseline.parameters()))
    assert moved == ("nn" in options)  # the network learns through SVI
    assert bool(elbo.surrogate.tracegraph.averages) == ("avg" in options)


class _no_ignored_option_warning:
    def __enter__(self):
        import warnings

        self.catch = warnings.catch_warnings(record=True)
        self.caught = self.catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self.catch.__exit__(*exc)
        assert not [w for w in self.caught if issubclass(w.category, IgnoredInferOption)]
        return False


def test_equals_tracegraph_elbo_with_a_given_baseline_value():
    # with dependency tracking (TraceGraph_ELBO's downstream costs) and the same random numbers, the same gradient
    model, guide, net = make(("value",))
    pyro.set_rng_seed(0)
    guide(data())
    params = [p for p in net.parameters()]
    grads = []
    for elbo in (TraceScoreELBO(num_particles=1, baseline=None, track_dependencies=True), TraceGraph_ELBO()):
        pyro.set_rng_seed(1)
        for p in params:
            p.grad = None
        elbo.loss_and_grads(model, guide, data())
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.slow
def test_unbiased_with_a_network_baseline_and_with_loo():
    family = make_family("amortized_vae")
    init_params(family)
    ref = reference(family)
    for baseline, particles in [
        (NeuralBaseline(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)), name="nb1"), 1),
        (NeuralBaseline(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)), name="nb2", loo=True), 3),
    ]:
        pyro.set_rng_seed(0)
        stats = gradient_draws(TraceScoreELBO(num_particles=particles, baseline=baseline), family)
        names = [n for n in stats.mean if not n.startswith("nb")]
        ref_loss, ref_se, ref_grads, ref_ses = ref
        stats.mean = {n: stats.mean[n] for n in names}
        check_unbiased(stats, (ref_loss, ref_se, ref_grads, ref_ses))


def test_errors():
    def guide_with(options):
        def guide():
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.0))), infer={"baseline": options})

        return guide

    def model():
        pyro.sample("z", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match=r"TraceScoreELBO: guide site 'z' has unrecognized baseline options \['avg'\]"):
        TraceScoreELBO(num_particles=2).differentiable_loss(model, guide_with({"avg": True}))
    both = {"nn_baseline": lambda u: u, "nn_baseline_input": torch.tensor(0.0), "baseline_value": torch.tensor(0.0)}
    with pytest.raises(ValueError, match="gives both nn_baseline and baseline_value"):
        TraceScoreELBO(num_particles=2).differentiable_loss(model, guide_with(both))
    with pytest.raises(ValueError, match="leave-one-out"):
        TraceScoreELBO(num_particles=1, baseline=NeuralBaseline(nn.Linear(2, 1), loo=True))


# ----------------------------------------------------------------------
# a guide written for TraceGraph_ELBO, ported by changing the loss: the same gradient, draw for draw
# ----------------------------------------------------------------------
def _grads(elbo, model, guide, net, steps=3):
    pyro.set_rng_seed(1)
    params = list(net.parameters())
    for _ in range(steps):
        for p in params:
            p.grad = None
        elbo.loss_and_grads(model, guide, data())
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]


@pytest.mark.parametrize("options", [("value",), ("nn",), ("avg",), ("avg", "nn")])
@pytest.mark.parametrize("particles,vectorize", [(1, True), (4, True), (4, False)])
def test_default_equals_tracegraph_elbo(options, particles, vectorize):
    # no track_dependencies: a guide with TraceGraph_ELBO's options gets its downstream costs by default; the
    # network's squared error is averaged over particles once (it was divided by the particle count twice)
    if vectorize and particles > 1 and options != ("avg",):
        pytest.skip("the guide's network and value give one number per data point: TraceGraph_ELBO refuses them too")
    model, guide, net = make(options)
    kwargs = dict(num_particles=particles, vectorize_particles=vectorize, max_plate_nesting=1)
    ours = _grads(TraceScoreELBO(**kwargs), model, guide, net)
    theirs = _grads(TraceGraph_ELBO(**kwargs), model, guide, net)
    for (name, _), a, b in zip(net.named_parameters(), ours, theirs):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-10), name


def test_baseline_value_is_trained():
    # AIR computes baseline_value with its own network: the squared error reaches it, as in TraceGraph_ELBO
    def model():
        pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))

    def guide():
        value = pyro.param("b", torch.tensor(0.4))
        pyro.sample(
            "z",
            dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.2))),
            infer={"baseline": {"baseline_value": value}},
        )

    loss = TraceScoreELBO().differentiable_loss(model, guide)
    (grad,) = torch.autograd.grad(loss, [pyro.param("b").unconstrained()])
    assert grad.abs() > 0


@pytest.mark.parametrize("particles", [1, 4])
def test_a_baseline_of_the_wrong_shape_is_an_error(particles):
    net = nn.Linear(3, 1)  # (N, 1) for a plate of N: TraceGraph_ELBO refuses it, so do we

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(0.5))

    def guide(x):
        pyro.module("net", net)
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "z",
                dist.Bernoulli(logits=pyro.param("q", torch.zeros(4))),
                infer={"baseline": {"nn_baseline": net, "nn_baseline_input": x}},
            )

    with pytest.raises(EstimatorError) as info:
        TraceScoreELBO(num_particles=particles).differentiable_loss(model, guide, data())
    assert info.value.sites == ("z",) and info.value.requirement == "baseline_shape"


def test_a_state_of_another_estimator_is_an_error():
    from pyro_discrete import RELAXELBO

    model, guide, _ = make(("avg",))
    source = TraceScoreELBO(num_particles=1, baseline="moving_average")
    source.differentiable_loss(model, guide, data())
    with pytest.raises(EstimatorError) as info:
        RELAXELBO().load_state_dict(source.state_dict())
    assert info.value.requirement == "state" and "TraceScoreELBO" in str(info.value)
    with pytest.raises(EstimatorError):  # the same class in another configuration
        TraceScoreELBO(num_particles=2, baseline="loo").load_state_dict(source.state_dict())
    with pytest.raises(EstimatorError):  # malformed: no KeyError
        TraceScoreELBO().load_state_dict({"surrogate": {}})
    TraceScoreELBO(num_particles=1, baseline="moving_average").load_state_dict(source.state_dict())
