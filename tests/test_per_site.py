# SPDX-License-Identifier: Apache-2.0
"""
Per-site estimator annotations (``infer={"estimator": ...}``,
:func:`pyro_discrete.config_estimator`): read by every registered ELBO, never
silently ignored. A site annotated with the ELBO's own method runs as without
the annotation, draw for draw; another method (a per-site mix, not dispatched
yet) or an unknown name is an error naming the sites.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_discrete import TraceScoreELBO, VarGradELBO, config_estimator
from pyro_discrete.errors import EstimatorError
from pyro_discrete.registry import REGISTRY

DATA = torch.tensor([0.3, -0.8, 1.4])


def model():
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 3):
        z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))
        b = pyro.sample("b", dist.Bernoulli(0.4))
        pyro.sample("x", dist.Normal(loc + (z * torch.tensor([-1.0, 0.0, 1.0])).sum(-1) + b, 1.0), obs=DATA)


def guide():
    pyro.sample("loc", dist.Normal(pyro.param("m", torch.tensor(0.1)), 0.9))
    with pyro.plate("data", 3):
        pyro.sample("z", dist.OneHotCategorical(logits=pyro.param("q", torch.zeros(3, 3) + 0.1)))
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("r", torch.zeros(3))))


def _grads(elbo, guide_fn, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide_fn)
    params = {n: pyro.param(n).unconstrained() for n in ("m", "q", "r")}
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads)]


def test_config_estimator_annotates_discrete_sites_only():
    trace = pyro.poutine.trace(config_estimator(guide, "loo")).get_trace()
    assert trace.nodes["z"]["infer"]["estimator"] == "loo" and trace.nodes["b"]["infer"]["estimator"] == "loo"
    assert "estimator" not in trace.nodes["loc"]["infer"]
    trace = pyro.poutine.trace(config_estimator(guide, {"b": "arsm"})).get_trace()
    assert "estimator" not in trace.nodes["z"]["infer"] and trace.nodes["b"]["infer"]["estimator"] == "arsm"
    with pytest.raises(ValueError, match="not a registered estimator"):
        config_estimator(guide, "disarm2")


def _taking():
    from pyro_discrete.registry import takes
    from pyro_discrete.structure import analyze

    structure = analyze(model, guide)
    return [n for n, e in REGISTRY.items() if takes(e, structure, left_dims=True)]


@pytest.mark.parametrize("name", _taking())
def test_the_elbos_own_method_on_every_site_is_the_same_estimator_draw_for_draw(name):
    entry = REGISTRY[name]
    plain = _grads(entry.make(max_plate_nesting=2), guide)
    annotated = _grads(entry.make(max_plate_nesting=2), config_estimator(guide, name))
    assert torch.equal(plain[0], annotated[0])
    for a, b in zip(plain[1], annotated[1]):
        assert torch.equal(a, b)


def test_an_elbo_instance_as_the_annotation():
    plain = _grads(VarGradELBO(4, max_plate_nesting=2), guide)
    annotated = _grads(VarGradELBO(4, max_plate_nesting=2), config_estimator(guide, VarGradELBO(4)))
    for a, b in zip(plain[1], annotated[1]):
        assert torch.equal(a, b)


MIXABLE = ["score", "loo", "moving_average", "arsm", "arm", "coupled_disarm", "arms", "carms", "expect"]
COPULA = {"arms", "carms"}
REPLAYING = ("arsm", "arm", "coupled_disarm")
SCORE_FAMILY = {"score", "loo", "moving_average"}


def _discrete_model():
    c = pyro.param("c", torch.tensor(0.5))
    with pyro.plate("data", 3):
        z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))
        b = pyro.sample("b", dist.Bernoulli(0.4))
        pyro.sample("x", dist.Normal(c + (z * torch.tensor([-1.0, 0.0, 1.0])).sum(-1) + b, 1.0), obs=DATA)


def _discrete_guide(dependent):
    def guide():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.OneHotCategorical(logits=pyro.param("q", torch.zeros(3, 3) + 0.1)))
            logits = pyro.param("r", torch.zeros(3))
            if dependent:  # b's distribution depends on z
                logits = logits + (z * pyro.param("w", torch.tensor([0.5, -0.3, 0.2]))).sum(-1)
            pyro.sample("b", dist.Bernoulli(logits=logits))

    return guide


def _mix(elbo_name, annotated_site, method, dependent):
    from random_structures import Structure

    guide_fn = config_estimator(_discrete_guide(dependent), {annotated_site: method})
    structure = Structure("mix", _discrete_model, guide_fn, (), 1, {}, draws_safe=True)
    return structure, lambda max_plate_nesting: REGISTRY[elbo_name].make(
        num_particles=4, max_plate_nesting=max_plate_nesting
    )


@pytest.mark.parametrize("dependent", [False, True], ids=["independent", "b_depends_on_z"])
@pytest.mark.parametrize("method", MIXABLE)
@pytest.mark.parametrize("elbo_name", MIXABLE)
def test_every_pair_of_mixable_methods_is_unbiased_or_an_error_naming_both_sites(elbo_name, method, dependent):
    # site z gets the annotated method, b the ELBO's own; against the exact gradient (a hand enumeration)
    from random_structures import CLEAR, WORKS, classify

    if elbo_name == method:
        pytest.skip("one method: the draw-for-draw test above")
    structure, make = _mix(elbo_name, "z", method, dependent)
    outcome = classify(structure, make, num_batches=10)
    replays_z = method in REPLAYING
    pair = {elbo_name, method}
    if pair & COPULA and not pair - COPULA <= SCORE_FAMILY:
        # ARMS and CARMS couple their sites across particles; they mix with the score family (and each other)
        assert outcome.outcome == CLEAR, outcome
        pyro.clear_param_store()
        with pytest.raises(EstimatorError) as info:
            make(2).differentiable_loss(structure.model, structure.guide)
        assert info.value.requirement == "one_estimator_per_model" and info.value.sites == ("z",)
    elif elbo_name in COPULA and dependent:  # b, coupled across particles, has a distribution per particle
        assert outcome.outcome == CLEAR, outcome
        pyro.clear_param_store()
        with pytest.raises(EstimatorError) as info:
            make(2).differentiable_loss(structure.model, structure.guide)
        assert info.value.requirement == "same_distribution_across_particles" and "b" in info.value.sites
    elif "expect" in pair and pair & set(REPLAYING):
        # replays of traces with enumerated dims are not written: an error naming the annotated site
        assert outcome.outcome == CLEAR, outcome
        pyro.clear_param_store()
        with pytest.raises(EstimatorError) as info:
            make(2).differentiable_loss(structure.model, structure.guide)
        assert info.value.requirement == "one_estimator_per_model" and info.value.sites == ("z",)
    elif dependent and replays_z:  # z is replayed holding b, which depends on it: refused, both sites named
        assert outcome.outcome == CLEAR, outcome
        pyro.clear_param_store()
        with pytest.raises(EstimatorError) as info:
            make(2).differentiable_loss(structure.model, structure.guide)
        assert info.value.requirement == "no_guide_dependencies" and set(info.value.sites) == {"z", "b"}
    else:
        assert outcome.outcome == WORKS, outcome


def test_the_mix_test_can_fail():
    # the same mix with the annotated method's terms dropped: flagged wrong
    from random_structures import WRONG, classify

    from pyro_discrete.per_site import PerSite

    class Dropped(PerSite):
        def __init__(self, own, others):
            super().__init__(own, others)
            self.groups = {method: (s, set()) for method, (s, _) in self.groups.items()}

    class DroppingELBO(TraceScoreELBO):
        def _per_site_surrogate(self, step):
            surrogate = super()._per_site_surrogate(step)
            if isinstance(surrogate, PerSite) and not isinstance(surrogate, Dropped):
                others = {n: (None, m, s) for m, (s, names) in surrogate.groups.items() for n in names}
                surrogate = Dropped(surrogate.own, others)
                self._per_site[(step.model, step.guide)] = (surrogate, [])
            return surrogate

    structure, _ = _mix("loo", "z", "arsm", False)
    outcome = classify(structure, lambda max_plate_nesting: DroppingELBO(4, max_plate_nesting=max_plate_nesting))
    assert outcome.outcome == WRONG, outcome


def test_the_enumeration_mix_test_can_fail(monkeypatch):
    # the bug this mix had while it was written: terms without an enumerated dim added to terms with one before
    # the sum over it, so the sampled site's cost counted them once per enumerated value
    from random_structures import WRONG, classify

    from pyro_discrete.expect import EnumerationWeights

    monkeypatch.setattr(EnumerationWeights, "frames", lambda self, tensor: frozenset())
    structure, make = _mix("loo", "z", "expect", False)
    assert classify(structure, make, num_batches=10).outcome == WRONG


def _ssvae(seed=0):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from real_models import SSVAE

    torch.manual_seed(seed)
    vae = SSVAE(x_dim=12, y_dim=4, z_dim=3, hidden=8)
    xs = (torch.rand(5, 12) < 0.4).to(torch.get_default_dtype())
    return vae, xs


def test_enumerated_label_and_pathwise_code_on_the_ssvae_is_trace_enum_draw_for_draw():
    from pyro.infer import TraceEnum_ELBO, config_enumerate

    vae, xs = _ssvae()
    results = []
    for elbo, guide in (
        (TraceEnum_ELBO(max_plate_nesting=1), config_enumerate(vae.guide, "parallel")),
        (TraceScoreELBO(max_plate_nesting=1), config_estimator(vae.guide, {"y": "expect"})),
    ):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        loss = elbo.differentiable_loss(vae.model, guide, xs)
        results.append((loss, torch.autograd.grad(loss, list(vae.parameters()))))
    (enum_loss, enum_grads), (loss, grads) = results
    assert torch.allclose(loss, enum_loss, rtol=1e-6, atol=1e-5), (loss, enum_loss)
    for a, b in zip(grads, enum_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def _chain_model():
    with pyro.plate("data", 3):
        y = pyro.sample("y", dist.Categorical(logits=torch.zeros(4)))
        b = pyro.sample("b", dist.Bernoulli(0.3 + 0.1 * y.float()))
        pyro.sample("x", dist.Normal(y.float() - 2 * b, 1.0), obs=DATA)


def _chain_guide():
    with pyro.plate("data", 3):
        y = pyro.sample("y", dist.Categorical(logits=pyro.param("qy", torch.zeros(3, 4) + 0.2)))
        w = pyro.param("w", torch.tensor([0.5, -0.5, 1.0, 0.0]))
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("qb", torch.zeros(3)) + w[y]))


def test_enumerating_the_upstream_site_with_loo_downstream_has_less_variance_than_either_alone():
    # Rao-Blackwellization: the label enumerated, the Bernoulli that depends on it sampled (leave-one-out)
    def variance(elbo, guide, draws=150):
        grads = []
        for i in range(draws):
            pyro.clear_param_store()
            pyro.set_rng_seed(i)
            loss = elbo.differentiable_loss(_chain_model, guide)
            params = [pyro.param(n).unconstrained() for n in ("qy", "w", "qb")]
            grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
        grads = torch.stack(grads)
        return grads.var(0).sum().item(), grads.mean(0)

    mixed, mixed_mean = variance(
        TraceScoreELBO(4, max_plate_nesting=1), config_estimator(_chain_guide, {"y": "expect"})
    )
    loo, loo_mean = variance(TraceScoreELBO(4, max_plate_nesting=1), _chain_guide)
    enumerated_b, _ = variance(TraceScoreELBO(4, max_plate_nesting=1), config_estimator(_chain_guide, {"b": "expect"}))
    print(
        "gradient variance: enumerate y + loo b {:.4g}, loo {:.4g}, loo y + enumerate b {:.4g}".format(
            mixed, loo, enumerated_b
        )
    )
    assert mixed < 0.5 * loo and mixed < 0.5 * enumerated_b, (mixed, loo, enumerated_b)
    assert (mixed_mean - loo_mean).abs().max() < 0.2  # the same gradient (the unbiasedness tests are above)


def test_a_mix_this_package_cannot_run_is_an_error_naming_the_sites():
    mixed = config_estimator(guide, {"b": "indecater", "z": "loo"})
    pyro.clear_param_store()
    with pytest.raises(EstimatorError) as info:
        TraceScoreELBO(4, max_plate_nesting=2).differentiable_loss(model, mixed)
    error = info.value
    assert error.requirement == "one_estimator_per_model" and error.sites == ("b",)
    assert set(error.alternatives) <= {"indecater"}


def test_a_mix_with_a_continuous_site_runs_with_the_methods_own_draws():
    # an ELBO instance as the annotation; ARSM's augmented draws for every discrete site, pathwise for loc
    mixed = config_estimator(guide, {"b": REGISTRY["arm"].make()})
    elbo = TraceScoreELBO(4, max_plate_nesting=2)
    pyro.clear_param_store()
    loss = elbo.differentiable_loss(model, mixed)
    grads = torch.autograd.grad(loss, [pyro.param(n).unconstrained() for n in ("m", "q", "r")])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_a_moving_average_annotation_is_not_leave_one_out():
    # before: ignored without a word; now every site gets the moving average, not the ELBO's leave-one-out
    elbo = TraceScoreELBO(4, max_plate_nesting=2)
    pyro.clear_param_store()
    elbo.differentiable_loss(model, config_estimator(guide, "moving_average"))
    ((surrogate, _),) = elbo._per_site.values()
    assert {n for _, names in surrogate.groups.values() for n in names} == {"z", "b"}


def test_an_unknown_annotation_is_an_error():
    def annotated():
        pyro.sample("loc", dist.Normal(pyro.param("m", torch.tensor(0.1)), 0.9))
        with pyro.plate("data", 3):
            pyro.sample(
                "z", dist.OneHotCategorical(logits=pyro.param("q", torch.zeros(3, 3))), infer={"estimator": "disarm2"}
            )
            pyro.sample("b", dist.Bernoulli(logits=pyro.param("r", torch.zeros(3))))

    with pytest.raises(EstimatorError) as info:
        TraceScoreELBO(max_plate_nesting=1).loss(model, annotated)
    assert info.value.requirement == "registered_estimator" and info.value.sites == ("z",)


def test_a_per_site_mix_resumes_from_its_checkpoint():
    # z's moving average lives in the mix, not in the ELBO's own surrogate: it must be in state_dict
    import copy

    def train(elbo, steps):
        optim = pyro.optim.Adam({"lr": 0.05})
        svi = pyro.infer.SVI(model, annotated, optim, elbo)
        for _ in range(steps):
            svi.step()
        return svi, optim

    annotated = config_estimator(guide, {"z": "moving_average"})
    pyro.clear_param_store()
    pyro.set_rng_seed(5)
    elbo = TraceScoreELBO(4, max_plate_nesting=2)
    svi, optim = train(elbo, 3)
    saved = copy.deepcopy((elbo.state_dict(), pyro.get_param_store().get_state(), optim.get_state()))
    rng = torch.get_rng_state()
    expected_loss = svi.step()
    expected = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    assert [state["sites"] for state in saved[0]["per_site"]] == [{"z": REGISTRY["moving_average"].make().method()}]

    for load in (True, False):
        pyro.clear_param_store()
        pyro.get_param_store().set_state(copy.deepcopy(saved[1]))
        resumed = TraceScoreELBO(4, max_plate_nesting=2)
        if load:
            resumed.load_state_dict(copy.deepcopy(saved[0]))
        optim = pyro.optim.Adam({"lr": 0.05})
        optim.set_state(copy.deepcopy(saved[2]))
        torch.set_rng_state(rng)
        loss = pyro.infer.SVI(model, annotated, optim, resumed).step()
        same = loss == expected_loss and all(torch.equal(v, expected[k]) for k, v in pyro.get_param_store().items())
        assert same == load  # without the mix's state the step differs: the test can fail
