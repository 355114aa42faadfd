# SPDX-License-Identifier: Apache-2.0
"""
The faults that real users' models showed (issue 14), one test each; every test
fails on the code before the fix. Fault 1 (a silently wrong ARSM/DisARM
gradient) is also ``test_arsm.py::test_error_guide_dependency_on_binary_site``.
"""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch.distributions import constraints

from pyro_discrete import ARSMELBO, ExpectELBO, TraceScoreELBO, VarGradELBO
from pyro_discrete.registry import REGISTRY
from pyro_discrete.traces import IgnoredInferOption


# 1 ---------------------------------------------------------------------
@pytest.mark.parametrize("binary", ["disarm", "arm"])
def test_1_continuous_site_depending_on_a_binary_arsm_site_is_refused(binary):
    def model():
        y = pyro.sample("y", dist.Bernoulli(0.5))
        pyro.sample("z", dist.Normal(y, 1.0))

    def guide():
        y = pyro.sample("y", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.0))))
        pyro.sample("z", dist.Normal(2 * y, 1.0))

    with pytest.raises(NotImplementedError, match=r"ARSMELBO: guide site 'z' depends on .*'y'"):
        ARSMELBO(binary=binary, num_particles=100).differentiable_loss(model, guide)


# 2 ---------------------------------------------------------------------
DATA = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])


def gmm_model():
    # as in Pyro's GMM tutorial: the component locations indexed by the assignment
    weights = pyro.param("weights", torch.tensor([0.5, 0.5]), constraint=constraints.simplex)
    locs = pyro.sample("locs", dist.Normal(torch.tensor([0.0, 10.0]), 5.0).to_event(1))
    with pyro.plate("data", len(DATA)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], 1.0), obs=DATA)


def gmm_guide():
    pyro.sample("locs", dist.Normal(pyro.param("m", torch.tensor([1.0, 9.0])), 1.0).to_event(1))
    with pyro.plate("data", len(DATA)):
        pyro.sample("assignment", dist.Categorical(logits=pyro.param("q", torch.zeros(len(DATA), 2))))


def test_2_a_model_that_does_not_broadcast_gets_an_error_naming_the_particle_dim():
    with pytest.raises(ValueError) as info:
        TraceScoreELBO(num_particles=10).loss(gmm_model, gmm_guide)
    message = str(info.value)
    assert message.startswith("TraceScoreELBO: the model or guide does not broadcast over the vectorized particles")
    assert "dim -2" in message and "'assignment'" in message and "vectorize_particles=False" in message


@pytest.mark.parametrize(
    "make",
    [
        lambda: TraceScoreELBO(num_particles=10, vectorize_particles=False),
        lambda: VarGradELBO(num_particles=10, vectorize_particles=False),
    ],
)
def test_2_leave_one_out_and_vargrad_run_particles_one_after_another(make):
    pyro.set_rng_seed(0)
    loss = make().differentiable_loss(gmm_model, gmm_guide)
    grads = torch.autograd.grad(loss, [pyro.param("m").unconstrained(), pyro.param("q").unconstrained()])
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


# 3 ---------------------------------------------------------------------
def test_3_trace_score_elbo_as_written_works():
    def model():
        pyro.sample("z", dist.Bernoulli(0.5))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.2))))

    elbo = TraceScoreELBO()
    assert torch.isfinite(elbo.differentiable_loss(model, guide))


# 4 ---------------------------------------------------------------------
@pytest.mark.parametrize("infer", [{"enumerate": "parallel"}, {"baseline": {"use_decaying_avg_baseline": True}}])
@pytest.mark.parametrize("estimator", list(REGISTRY))
def test_4_pyro_infer_options_are_honored_or_warned_about(estimator, infer):
    def model():
        pyro.sample("z", dist.Bernoulli(0.5))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.2))), infer=infer)

    elbo = REGISTRY[estimator].make()
    key = next(iter(infer))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        elbo.differentiable_loss(model, guide)
        elbo.differentiable_loss(model, guide)
    warned = [w for w in caught if issubclass(w.category, IgnoredInferOption)]
    if key in elbo.surrogate.honored_infer_keys:
        assert not warned
    else:
        assert len(warned) == 1  # once per ELBO and site
        assert "site 'z'" in str(warned[0].message) and key in str(warned[0].message)


# 5 ---------------------------------------------------------------------
def test_5_expect_elbo_on_a_model_without_sites():
    def model():
        pyro.param("p", torch.tensor(1.0))

    def guide():
        pass

    assert ExpectELBO().loss_and_grads(model, guide) == 0.0
    loss = ExpectELBO().differentiable_loss(model, guide)
    assert torch.is_tensor(loss) and loss.item() == 0.0
    assert Trace_ELBO().loss(model, guide) == 0.0


def test_5_expect_elbo_refuses_a_site_marked_not_to_be_enumerated():
    def model():
        with pyro.plate("data", 4):
            z = pyro.sample("z", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.zeros(4))

    def guide():
        with pyro.plate("data", 4):
            p = pyro.param("p", torch.full((4,), 0.4), constraint=constraints.unit_interval)
            pyro.sample("z", dist.Bernoulli(p), infer={"enumerate": None})

    with pytest.raises(ValueError, match=r"ExpectELBO: guide site 'z' is marked infer=\{'enumerate': None\}"):
        ExpectELBO().loss(model, guide)


def test_5_far_over_budget_suggests_a_sampling_estimator_not_a_larger_budget():
    def model():
        pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(64, 10)).to_event(1))

    guide = model
    with pytest.raises(ValueError) as info:
        ExpectELBO().loss(model, guide)
    message = str(info.value)
    assert "over budget=10000" in message and "larger budget" not in message and "loo" in info.value.alternatives
    with pytest.raises(ValueError, match="larger budget"):  # a little over: a larger budget is the advice
        ExpectELBO(budget=5000).loss(
            lambda: pyro.sample("z", dist.Categorical(logits=torch.zeros(10000))),
            lambda: pyro.sample("z", dist.Categorical(logits=torch.zeros(10000))),
        )


# 6 ---------------------------------------------------------------------
def test_6_arsm_names_only_the_sites_a_guide_site_depends_on():
    # the dependency goes through a binary site (one pseudo-action): the old check compared rows of
    # pseudo-actions, could not attribute it, and named every ARSM site (or, before, did not fire at all)
    def model():
        y = pyro.sample("y", dist.Bernoulli(0.5))
        b = pyro.sample("b", dist.Categorical(logits=torch.zeros(3)))
        pyro.sample("c", dist.Normal(y + b, 1.0))

    def guide():
        y = pyro.sample("y", dist.Bernoulli(logits=pyro.param("qy", torch.tensor(0.0))))
        pyro.sample("b", dist.Categorical(logits=pyro.param("qb", torch.zeros(3))))
        pyro.sample("c", dist.Normal(y, 1.0))

    with pytest.raises(NotImplementedError) as info:
        ARSMELBO().differentiable_loss(model, guide)
    assert info.value.sites == ("y", "c") and info.value.requirement == "no_guide_dependencies"
    assert "loo" in info.value.alternatives


def test_6_one_particle_draws_the_same_random_numbers_as_trace_elbo():
    # no extra run of the model and guide to guess max_plate_nesting with one particle
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("w", dist.Normal(z, 1.0))

    def guide():
        z = pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.1))))
        pyro.sample("w", dist.Normal(pyro.param("m", torch.tensor(0.5)) + z, 1.0))

    for make in (lambda: TraceScoreELBO(baseline=None), lambda: TraceScoreELBO(baseline="moving_average")):
        pyro.set_rng_seed(5)
        expected = Trace_ELBO().loss(model, guide)
        pyro.set_rng_seed(5)
        assert make().loss(model, guide) == pytest.approx(expected, rel=1e-12)
