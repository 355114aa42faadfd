# SPDX-License-Identifier: Apache-2.0
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_discrete import TraceScoreELBO
from pyro_discrete.costs import site_costs
from pyro_discrete.samplers import IIDSampler as CategoricalSampler
from pyro_discrete.samplers import sample_categorical
from pyro_discrete.traces import fused_log_prob, get_importance_traces, score_function_sites

from common import first_traces


@pytest.mark.parametrize("param", ["logits", "probs"])
def test_fused_log_prob_equals_distribution(param):
    logits = torch.randn(3, 4, 5, requires_grad=True)
    x = (torch.rand(4, 5) < 0.5).double()
    base = dist.Bernoulli(logits=logits) if param == "logits" else dist.Bernoulli(probs=logits.sigmoid())
    fn = base.to_event(1)
    expected = fn.log_prob(x)
    actual = fused_log_prob(fn, x)
    assert actual.shape == expected.shape == (3, 4)
    assert torch.allclose(actual, expected, atol=1e-12)
    (g1,) = torch.autograd.grad(expected.sum(), [logits], retain_graph=True)
    (g2,) = torch.autograd.grad(actual.sum(), [logits])
    assert torch.allclose(g1, g2, atol=1e-12)
    # plate-expanded and torch's own classes take the fused path too
    assert fused_log_prob(fn.expand((2, 3, 4)), x).shape == (2, 3, 4)
    torch_fn = torch.distributions.Independent(torch.distributions.Bernoulli(logits=logits), 2)
    assert torch.allclose(fused_log_prob(torch_fn, x), torch_fn.log_prob(x))


def test_fused_log_prob_leaves_other_distributions():
    assert fused_log_prob(dist.Bernoulli(logits=torch.zeros(3)), torch.ones(3)) is None
    assert fused_log_prob(dist.Normal(0.0, torch.ones(3)).to_event(1), torch.ones(3)) is None
    masked = dist.Bernoulli(logits=torch.zeros(3)).to_event(1).mask(torch.tensor(False))
    assert fused_log_prob(masked, torch.ones(3)) is None


def test_fused_log_prob_validates():
    fn = dist.Bernoulli(logits=torch.zeros(3)).to_event(1)
    with pytest.raises(ValueError):
        fused_log_prob(fn, torch.tensor([0.0, 0.5, 1.0]))


def test_observed_log_prob_in_traces_is_scaled_and_masked():
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])

    def model():
        with pyro.plate("data", 3), poutine.scale(scale=2.0), poutine.mask(mask=torch.tensor([True, False, True])):
            pyro.sample("x", dist.Bernoulli(logits=torch.tensor([0.3, -0.2])).to_event(1), obs=x)

    def guide():
        pass

    model_trace, _ = get_importance_traces(1, model, guide, (), {})
    site = model_trace.nodes["x"]
    expected = 2.0 * dist.Bernoulli(logits=torch.tensor([0.3, -0.2])).to_event(1).log_prob(x)
    expected = expected * torch.tensor([1.0, 0.0, 1.0])
    assert torch.allclose(site["log_prob"], expected)
    assert site["log_prob_sum"].item() == pytest.approx(expected.sum().item())


def _traces(model, guide, elbo):
    return first_traces(elbo, model, guide)


def test_site_costs_are_kept_per_plate_element():
    data = torch.tensor([0.5, -1.0, 2.0])

    def model():
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(z + g, 1.0), obs=data)

    def guide():
        pyro.sample("g", dist.Normal(0.2, 1.0))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(torch.tensor([0.2, 0.5, 0.7])))

    elbo = TraceScoreELBO(num_particles=4, max_plate_nesting=1)
    model_trace, guide_trace = _traces(model, guide, elbo)
    sites = score_function_sites(guide_trace)
    assert [name for name, _ in sites] == ["z"]
    cost = site_costs(model_trace, guide_trace, ["z"])["z"]
    lp = {n: s["log_prob"] for n, s in model_trace.nodes.items() if s["type"] == "sample"}
    lq = {n: s["log_prob"] for n, s in guide_trace.nodes.items() if s["type"] == "sample"}
    # z_i's cost: its own plate element's terms, plus the global terms
    expected = (lq["z"] - lp["z"] - lp["x"]) + (lq["g"] - lp["g"])
    assert cost.shape == (4, 3)
    assert torch.allclose(cost, expected)
    assert not cost.requires_grad


def test_site_costs_of_global_site_sum_its_plates():
    def model():
        a = pyro.sample("a", dist.Bernoulli(0.4))
        with pyro.plate("data", 3):
            pyro.sample("x", dist.Normal(a, 1.0), obs=torch.zeros(3))

    def guide():
        pyro.sample("a", dist.Bernoulli(0.6))

    elbo = TraceScoreELBO(num_particles=2, max_plate_nesting=1)
    model_trace, guide_trace = _traces(model, guide, elbo)
    cost = site_costs(model_trace, guide_trace, ["a"])["a"]
    expected = (
        guide_trace.nodes["a"]["log_prob"]
        - model_trace.nodes["a"]["log_prob"]
        - model_trace.nodes["x"]["log_prob"].sum(-1, keepdim=True)
    )
    assert cost.shape == (2, 1)
    assert torch.allclose(cost, expected)


def test_site_costs_with_subsampling_are_scaled():
    def model():
        with pyro.plate("data", 10, subsample_size=2):
            pyro.sample("x", dist.Normal(pyro.sample("z", dist.Bernoulli(0.5)), 1.0), obs=torch.zeros(2))

    def guide():
        with pyro.plate("data", 10, subsample_size=2):
            pyro.sample("z", dist.Bernoulli(0.5))

    model_trace, guide_trace = _traces(model, guide, TraceScoreELBO(num_particles=2, max_plate_nesting=1))
    cost = site_costs(model_trace, guide_trace, ["z"])["z"]
    unscaled = (
        guide_trace.nodes["z"]["unscaled_log_prob"]
        - model_trace.nodes["z"]["unscaled_log_prob"]
        - model_trace.nodes["x"]["unscaled_log_prob"]
    )
    assert torch.allclose(cost, 5.0 * unscaled)


def test_dependency_tracking_restricts_costs():
    def model():
        a = pyro.sample("a", dist.Bernoulli(0.4))
        b = pyro.sample("b", dist.Bernoulli(0.7))
        pyro.sample("x", dist.Normal(a, 1.0), obs=torch.tensor(0.3))
        pyro.sample("y", dist.Normal(b, 1.0), obs=torch.tensor(0.9))

    def guide():
        pyro.sample("a", dist.Bernoulli(0.5))
        pyro.sample("b", dist.Bernoulli(0.5))

    elbo = TraceScoreELBO(num_particles=2, track_dependencies=True, max_plate_nesting=0)
    model_trace, guide_trace = _traces(model, guide, elbo)
    costs = site_costs(model_trace, guide_trace, ["a", "b"], track_dependencies=True)
    lp = {n: s["log_prob"] for n, s in model_trace.nodes.items() if s["type"] == "sample"}
    lq = {n: s["log_prob"] for n, s in guide_trace.nodes.items() if s["type"] == "sample"}
    assert torch.allclose(costs["a"], lq["a"] - lp["a"] - lp["x"])
    assert torch.allclose(costs["b"], lq["b"] - lp["b"] - lp["y"])


def test_import_has_no_global_side_effects():
    # in a fresh interpreter: importing the package changes no global setting
    code = (
        "import pyro, torch\n"
        "from pyro.infer.util import is_validation_enabled\n"
        "before = (torch.get_default_dtype(), is_validation_enabled(), len(pyro.get_param_store()),"
        " torch.get_num_threads(), torch.is_grad_enabled())\n"
        "import pyro_discrete\n"
        "after = (torch.get_default_dtype(), is_validation_enabled(), len(pyro.get_param_store()),"
        " torch.get_num_threads(), torch.is_grad_enabled())\n"
        "assert before == after, (before, after)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_num_particles_must_be_positive():
    with pytest.raises(ValueError, match="TraceScoreELBO: num_particles must be a positive integer"):
        TraceScoreELBO(num_particles=0, baseline=None)


@pytest.mark.parametrize("autoguide", ["AutoNormal", "AutoNormalMessenger"])
def test_autoguides_for_continuous_latents(autoguide):
    # AutoGuides cover continuous latents: every estimator must leave their
    # pathwise gradients exactly as Trace_ELBO computes them
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoNormal, AutoNormalMessenger

    data = torch.tensor([0.3, -0.5, 1.2])

    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=data)

    guide = AutoNormal(model) if autoguide == "AutoNormal" else AutoNormalMessenger(model)
    pyro.set_rng_seed(0)
    guide()
    params = dict(pyro.get_param_store().named_parameters())
    results = []
    for elbo in (TraceScoreELBO(num_particles=1, baseline=None, max_plate_nesting=1), Trace_ELBO(max_plate_nesting=1)):
        pyro.set_rng_seed(1)
        loss = elbo.differentiable_loss(model, guide)
        results.append((loss.item(), torch.autograd.grad(loss, list(params.values()))))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-12)
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("param", ["logits", "probs"])
def test_sample_categorical_matches_probabilities(dtype, param):
    # expanded like a particle plate does; zero-probability categories first,
    # in the middle and last must never be drawn
    probs = torch.tensor([[0.0, 0.1, 0.0, 0.6, 0.3, 0.0], [0.5, 0.0, 0.2, 0.1, 0.0, 0.2]], dtype=dtype)
    kwargs = {"probs": probs} if param == "probs" else {"logits": probs.log()}
    num_draws = 20000
    categorical = torch.distributions.Categorical(**kwargs).expand((num_draws, 2))
    torch.manual_seed(0)
    index = sample_categorical(categorical)
    assert index.shape == (num_draws, 2) and index.dtype == torch.long
    for row in range(2):
        freq = torch.bincount(index[:, row], minlength=6).to(dtype) / num_draws
        p = probs[row]
        se = (p * (1 - p) / num_draws).sqrt()
        assert (freq[p == 0] == 0).all()
        assert ((freq - p).abs() <= 5 * se + 1e-12).all(), (freq, p)


def test_sample_categorical_can_fail():
    # the check above detects a sampler off by 2% in one category
    p = torch.tensor([0.5, 0.5])
    freq = torch.tensor([0.52, 0.48])
    se = (p * (1 - p) / 20000).sqrt()
    assert not ((freq - p).abs() <= 5 * se).all()


def test_categorical_sampler_draws_sites_and_leaves_given_values():
    logits = torch.randn(3, 4)

    def guide():
        with pyro.plate("particles", 5, dim=-2), pyro.plate("data", 3, dim=-1):
            a = pyro.sample("a", dist.OneHotCategorical(logits=logits))
            b = pyro.sample("b", dist.Categorical(logits=logits))
            c = pyro.sample("c", dist.OneHotCategorical(logits=logits.unsqueeze(-2).expand(3, 2, 4)).to_event(1))
            d = pyro.sample("d", dist.Categorical(logits=logits), obs=torch.zeros(3, dtype=torch.long))
        return a, b, c, d

    a, b, c, d = CategoricalSampler()(guide)()
    assert a.shape == (5, 3, 4) and a.dtype == logits.dtype and (a.sum(-1) == 1).all()
    assert b.shape == (5, 3) and b.dtype == torch.long
    assert c.shape == (5, 3, 2, 4) and (c.sum(-1) == 1).all()
    assert (d == 0).all()
    given = poutine.trace(guide).get_trace()
    replayed = poutine.trace(CategoricalSampler()(poutine.replay(guide, trace=given))).get_trace()
    for name in "abc":
        assert torch.equal(replayed.nodes[name]["value"], given.nodes[name]["value"])
