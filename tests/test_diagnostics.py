# SPDX-License-Identifier: Apache-2.0
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, config_enumerate

from pyro_discrete import (
    ARSMELBO,
    ExpectELBO,
    RelaxedConcreteELBO,
    TraceScoreELBO,
    VarGradELBO,
)
from pyro_discrete.diagnostics import compare_estimators, gradient_statistics

from common import init_params, make_family

P0, X = 0.3, 0.5


def bernoulli_model():
    z = pyro.sample("z", dist.Bernoulli(P0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(X))


def bernoulli_guide():
    theta = pyro.param("theta", torch.tensor(0.4))
    pyro.sample("z", dist.Bernoulli(logits=theta))


def closed_form_score_function(theta=0.4):
    """Mean and variance of the 1-sample score-function estimator of d(-ELBO)/d(theta)."""
    s = torch.sigmoid(torch.tensor(theta)).item()

    def cost(z):  # log q(z) - log p(z, x)
        log_q = math.log(s if z else 1 - s)
        log_p = math.log(P0 if z else 1 - P0) + dist.Normal(float(z), 1.0).log_prob(torch.tensor(X)).item()
        return log_q - log_p

    g1, g0 = cost(1) * (1 - s), -cost(0) * s  # cost(z) * d/dtheta log q(z)
    mean = s * g1 + (1 - s) * g0
    return mean, s * g1**2 + (1 - s) * g0**2 - mean**2


@pytest.fixture
def bernoulli():
    pyro.clear_param_store()
    bernoulli_guide()
    return bernoulli_model, bernoulli_guide


@pytest.mark.parametrize(
    "make_elbo",
    [lambda: TraceScoreELBO(baseline=None), Trace_ELBO, TraceGraph_ELBO],
    ids=["TraceScoreELBO", "Trace_ELBO", "TraceGraph_ELBO"],
)
def test_single_bernoulli_closed_form(bernoulli, make_elbo):
    model, guide = bernoulli
    mean, var = closed_form_score_function()
    pyro.set_rng_seed(0)
    # 1000 batch means of 20 draws: relative standard error of the variance about 4.5%
    stats = gradient_statistics(make_elbo(), model, guide, num_draws=20000, draws_per_batch=20, reference="exact")
    assert stats.num_draws == 20000
    assert abs(stats.reference["theta"].item() - mean) < 1e-10  # "exact" is ExpectELBO: the true gradient
    assert stats.variance["theta"].item() == pytest.approx(var, rel=0.15)
    assert stats.total_variance == pytest.approx(var, rel=0.15)
    se = math.sqrt(var / stats.num_draws)
    assert abs(stats.mean["theta"].item() - mean) < 5 * se
    assert stats.bias_z < 5
    # an unbiased estimate of zero squared bias: its spread is about sqrt(2) var/N
    assert abs(stats.total_squared_bias) < 10 * var / stats.num_draws
    assert stats.total_mse == pytest.approx(stats.total_variance + stats.total_squared_bias)
    assert stats.evaluations_per_draw == 1
    assert stats.seconds_per_step > 0 and stats.seconds_per_draw > 0


def test_relaxed_has_bias(bernoulli):
    model, guide = bernoulli
    pyro.set_rng_seed(0)
    stats = gradient_statistics(RelaxedConcreteELBO(temperature=0.5), model, guide, num_draws=4000, reference="exact")
    noise_floor = stats.total_variance / stats.num_draws
    assert stats.bias_z > 10
    assert stats.total_squared_bias > 20 * noise_floor


def test_exact_estimators_have_no_variance_or_bias(bernoulli):
    model, guide = bernoulli
    for elbo, m, g in [
        (ExpectELBO(), model, guide),
        (TraceEnum_ELBO(max_plate_nesting=0), model, config_enumerate(guide)),
    ]:
        stats = gradient_statistics((elbo, m, g), model, guide, num_draws=10, reference="exact")
        assert stats.total_variance < 1e-20
        assert stats.bias_z < 1
        assert stats.evaluations_per_draw == 2


def test_nothing_changes(bernoulli):
    """Parameters, their .grad, the param store and the ELBO's state are as before."""
    model, guide = bernoulli
    theta = pyro.param("theta").unconstrained()
    theta.grad = torch.tensor(7.0)
    before = theta.detach().clone()
    keys = set(pyro.get_param_store().keys())
    score = TraceScoreELBO(num_particles=2, baseline="moving_average")
    relaxed = RelaxedConcreteELBO(temperature=0.5)
    tracegraph = TraceGraph_ELBO()

    def tracegraph_guide():
        th = pyro.param("theta", torch.tensor(0.4))
        pyro.sample("z", dist.Bernoulli(logits=th), infer={"baseline": {"use_decaying_avg_baseline": True}})

    for elbo, g in [(score, guide), (relaxed, guide), (tracegraph, tracegraph_guide)]:
        gradient_statistics((elbo, model, g), model, guide, num_draws=20)
    assert torch.equal(theta.detach(), before)
    assert theta.grad.item() == 7.0
    assert set(pyro.get_param_store().keys()) == keys  # TraceGraph's running average was removed
    assert relaxed.step_count == 0
    assert score.max_plate_nesting == float("inf")  # the instance was not touched


@pytest.mark.parametrize("family_name", ["local_categorical_subsampled", "to_event_onehot", "amortized_vae"])
def test_unbiased_estimators_on_plated_models(family_name):
    """Vectorized draws keep per-draw costs apart: unbiased estimators show no bias on plated models."""
    family = make_family(family_name)
    init_params(family)
    for elbo in [TraceScoreELBO(num_particles=4), VarGradELBO(num_particles=4), ARSMELBO()]:
        pyro.set_rng_seed(1)
        stats = gradient_statistics(
            elbo,
            family.model,
            family.guide,
            *family.args,
            num_draws=2000,
            reference="exact"
            if family.reference == "expect"
            else (
                TraceEnum_ELBO(max_plate_nesting=1),
                family.separate_model,
                config_enumerate(family.separate_guide, "parallel"),
            ),
        )
        assert stats.bias_z < 5, (type(elbo).__name__, stats)


def test_vectorized_and_plain_draws_agree():
    family = make_family("amortized_vae")
    init_params(family)
    elbo = TraceScoreELBO(num_particles=4)
    pyro.set_rng_seed(2)
    plain = gradient_statistics(elbo, family.model, family.guide, *family.args, num_draws=400, draws_per_batch=1)
    vectorized = gradient_statistics(elbo, family.model, family.guide, *family.args, num_draws=4000, draws_per_batch=40)
    assert plain.draws_per_batch == 1 and vectorized.draws_per_batch == 40
    # relative standard errors about 7% and 20%
    assert vectorized.total_variance == pytest.approx(plain.total_variance, rel=0.5)


def test_params_selection_and_fallback():
    family = make_family("amortized_vae")
    init_params(family)
    store = pyro.get_param_store()
    encoder_names = [n for n in store.keys() if n.startswith("encoder")]
    by_name = gradient_statistics(
        TraceScoreELBO(num_particles=2), family.model, family.guide, *family.args, num_draws=20, params=encoder_names
    )
    assert sorted(by_name.mean) == sorted(encoder_names)
    tensors = [store.get_param(n).unconstrained() for n in encoder_names]
    by_tensor = gradient_statistics(
        TraceScoreELBO(num_particles=2), family.model, family.guide, *family.args, num_draws=20, params=tensors
    )
    assert sorted(by_tensor.mean) == sorted(encoder_names)

    # a model that does not broadcast over an extra batch dim: falls back to one draw per pass, with a warning
    def model():
        z = pyro.sample("z", dist.Bernoulli(P0))
        pyro.sample("x", dist.Normal(z.reshape(()), 1.0), obs=torch.tensor(X))

    pyro.clear_param_store()
    bernoulli_guide()
    with pytest.warns(UserWarning, match="vectorized draws failed"):
        stats = gradient_statistics(TraceScoreELBO(baseline=None), model, bernoulli_guide, num_draws=100)
    assert stats.draws_per_batch == 1 and stats.num_draws == 100


def test_compare_estimators_table(bernoulli, tmp_path):
    model, guide = bernoulli
    table = compare_estimators(
        model,
        guide,
        estimators={
            "score": TraceScoreELBO(baseline=None),
            "loo": TraceScoreELBO(num_particles=4),
            "concrete": RelaxedConcreteELBO(temperature=0.5),
            "Trace_ELBO": Trace_ELBO(),
            "TraceEnum_ELBO": (TraceEnum_ELBO(max_plate_nesting=0), model, config_enumerate(guide)),
        },
        num_draws=2000,
    )
    rows = {row["estimator"]: row for row in table}
    assert set(rows) == {"score", "loo", "concrete", "Trace_ELBO", "TraceEnum_ELBO"}
    assert rows["loo"]["variance"] < rows["score"]["variance"]
    assert rows["concrete"]["bias_z"] > 5 > rows["loo"]["bias_z"]
    assert rows["TraceEnum_ELBO"]["variance"] < 1e-20
    text = str(table)
    assert text.startswith("| estimator |") and text.count("\n") == 6
    path = table.to_csv(str(tmp_path / "t.csv"))
    assert open(path).read().count("\n") == 6
    pytest.importorskip("matplotlib")
    table.plot(str(tmp_path / "t.png"))
    assert (tmp_path / "t.png").stat().st_size > 0


def test_bad_arguments(bernoulli):
    model, guide = bernoulli
    with pytest.raises(ValueError, match="num_draws"):
        gradient_statistics(Trace_ELBO(), model, guide, num_draws=1)
    with pytest.raises(ValueError, match="reference"):
        gradient_statistics(Trace_ELBO(), model, guide, num_draws=4, reference="exactly")
    with pytest.raises(KeyError, match="nope"):
        gradient_statistics(Trace_ELBO(), model, guide, num_draws=4, params=["nope"])


def test_tracegraph_with_running_average_state():
    """Pyro's decaying-average baseline is shaped like the batch: the draws fall back to one per pass."""
    family = make_family("to_event_onehot")
    init_params(family)

    def guide(x):
        q = pyro.param("q_logits")
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "z",
                dist.OneHotCategorical(logits=q).to_event(1),
                infer={"baseline": {"use_decaying_avg_baseline": True}},
            )

    elbo = TraceGraph_ELBO()
    elbo.loss_and_grads(family.model, guide, *family.args)  # creates the running average
    store = pyro.get_param_store()
    state = {n: store[n].clone() for n in store if n.startswith("__baseline")}
    assert state
    with pytest.warns(UserWarning, match="vectorized draws failed"):
        stats = gradient_statistics(elbo, family.model, guide, *family.args, num_draws=400, reference="exact")
    assert stats.draws_per_batch == 1
    assert stats.bias_z < 5
    for n, v in state.items():
        assert torch.equal(store[n], v)


def test_param_store_stays_consistent_around_a_measurement():
    # a measurement of an estimator with learned parameters, while the store holds another instance's
    # parameters of the same names: afterwards the store is as before, its reverse map included
    from pyro_discrete import RELAXELBO

    family = make_family("amortized_vae")
    init_params(family)
    RELAXELBO().differentiable_loss(family.model, family.guide, *family.args)
    store = pyro.get_param_store()
    before = {name: store._params[name] for name in store}
    gradient_statistics(RELAXELBO(), family.model, family.guide, *family.args, num_draws=4, timing_repeats=0)
    assert {name: store._params[name] for name in store} == before
    for name, tensor in before.items():
        assert store.param_name(tensor) == name
    for name in list(store.keys()):
        del store[name]  # raised KeyError when the reverse map was stale
