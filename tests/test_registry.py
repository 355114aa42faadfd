# SPDX-License-Identifier: Apache-2.0
"""
The checks every registered estimator is enrolled in, parametrized over the
registry (as Pyro's ``tests/infer/test_gradient.py`` is over its ELBO
classes): unbiasedness on every model family it takes (and a clear error on
the others), agreement of ``loss`` / ``loss_and_grads`` / ``differentiable_loss``
/ ``__call__``, one model run per particle in ``loss()``, the error for a site
kind it does not take, and resuming from ``state_dict()``. Compilation
(``test_jit.py``), dtypes and devices (``test_cuda.py``) and the benchmark
grid (``test_benchmarks.py``) are registry checks too.
Checks marked ``registry_check`` must cover every registered name
(:func:`test_every_registered_estimator_is_enrolled`).
"""

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_discrete.errors import EstimatorError
from pyro_discrete.registry import REGISTRY

from common import (
    FAMILY_BUILDERS,
    applicable,
    assert_loss_methods_agree,
    check_unbiased,
    enrollment_gaps,
    gradient_draws,
    init_params,
    make_family,
    poisson_model_guide,
    reference,
)

ESTIMATORS = list(REGISTRY)


def _entry(name):
    return REGISTRY[name]


@pytest.mark.slow
@pytest.mark.registry_check
@pytest.mark.parametrize("family_name", list(FAMILY_BUILDERS))
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_unbiased(estimator, family_name):
    entry = _entry(estimator)
    family = make_family(family_name)
    init_params(family)
    elbo = entry.make()
    if not applicable(entry, family):
        with pytest.raises((ValueError, NotImplementedError), match=type(elbo).__name__):
            elbo.differentiable_loss(family.model, family.guide, *family.args)
        return
    if not entry.unbiased:
        pytest.skip("biased by design; its bias is measured in tests/test_relaxed.py")
    if entry.objective != "elbo":
        pytest.skip("unbiased for the K-sample bound, not the ELBO: tests/test_vimco.py checks it exactly")
    ref = reference(family)
    stats = gradient_draws(elbo, family, num_batches=50, draws_per_batch=40, warmup=3 if entry.stateful else 0)
    assert stats.num_draws >= 2000
    check_unbiased(stats, ref, num_se=5.0, what=estimator)


@pytest.mark.registry_check
@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_loss_methods_agree(estimator, vectorize):
    entry = _entry(estimator)
    if entry.vectorized_only and not vectorize:
        with pytest.raises(ValueError, match="vectorize_particles"):
            entry.make(vectorize_particles=False)
        return
    family = make_family("amortized_vae" if "onehot" in entry.site_kinds else "bernoulli_vector")
    init_params(family)
    make = lambda: entry.make(vectorize_particles=vectorize, max_plate_nesting=1)  # noqa: E731
    if entry.cls.__name__ == "RelaxedConcreteELBO":
        # loss() is the discrete -ELBO; the gradient methods return the relaxed objective
        assert_loss_methods_agree(make, family, check_loss=False)
    else:
        assert_loss_methods_agree(make, family)


def _counting(family):
    calls = []

    def model(*args, **kwargs):
        calls.append(1)
        return family.model(*args, **kwargs)

    return model, calls


@pytest.mark.registry_check
@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_loss_runs_the_model_once_per_particle(estimator, vectorize):
    # loss() needs no gradient: no replay, no pseudo-action, one model run per particle
    entry = _entry(estimator)
    if entry.vectorized_only and not vectorize:
        pytest.skip("vectorized only (checked in test_loss_methods_agree)")
    family = make_family("bernoulli_vector" if "bernoulli" in entry.site_kinds else "amortized_vae")
    init_params(family)
    model, calls = _counting(family)
    elbo = entry.make(vectorize_particles=vectorize, max_plate_nesting=1)
    elbo.loss(model, family.guide, *family.args)
    expected_calls = 1 if vectorize else elbo.num_particles
    assert len(calls) == expected_calls
    if not entry.exact:
        assert elbo.num_evaluations == elbo.num_particles
    # while a gradient step may evaluate more (ARSM's pseudo-actions, in one batched replay)
    calls.clear()
    elbo.differentiable_loss(model, family.guide, *family.args)
    assert elbo.num_evaluations >= elbo.num_particles


@pytest.mark.registry_check
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_unsupported_site_kind_is_a_clear_error(estimator):
    # a Poisson guide site is neither enumerable-and-bounded, relaxable nor reparameterizable:
    # an estimator either takes it (the score family) or names the site, itself and an alternative
    entry = _entry(estimator)
    model, guide = poisson_model_guide()
    elbo = entry.make()
    if "other" in entry.site_kinds:
        loss = elbo.differentiable_loss(model, guide)
        assert torch.isfinite(loss)
        return
    for method in (elbo.loss, elbo.differentiable_loss, elbo.loss_and_grads):
        with pytest.raises((ValueError, NotImplementedError)) as info:
            method(model, guide)
        message = str(info.value)
        assert message.startswith(type(elbo).__name__ + ":")
        assert "'n'" in message and ("use " in message or "Use " in message)


def _train(elbo, family, steps, seed):
    pyro.set_rng_seed(seed)
    optim = Adam({"lr": 0.05})
    svi = SVI(family.model, family.guide, optim, loss=elbo)
    for _ in range(steps):
        svi.step(*family.args)
    return svi, optim


@pytest.mark.registry_check
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_state_dict_resumes_training(estimator):
    # save after step n, load into a fresh ELBO: step n+1 equals the uninterrupted run's, per seed
    entry = _entry(estimator)
    family = make_family("bernoulli_vector" if "bernoulli" in entry.site_kinds else "amortized_vae")
    init_params(family)
    elbo = entry.make(max_plate_nesting=1)
    svi, optim = _train(elbo, family, 3, seed=5)
    # what a checkpoint writes (torch.save copies; deepcopy does the same here)
    saved = copy.deepcopy(
        (elbo.state_dict(), pyro.get_param_store().get_state(), optim.get_state(), torch.get_rng_state())
    )
    expected_loss = svi.step(*family.args)
    expected = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    elbo_state, store_state, optim_state, rng_state = saved
    pyro.clear_param_store()
    pyro.get_param_store().set_state(copy.deepcopy(store_state))
    resumed = entry.make(max_plate_nesting=1)
    resumed.load_state_dict(copy.deepcopy(elbo_state))
    optim = Adam({"lr": 0.05})
    optim.set_state(copy.deepcopy(optim_state))
    svi = SVI(family.model, family.guide, optim, loss=resumed)
    torch.set_rng_state(rng_state)
    loss = svi.step(*family.args)
    assert loss == pytest.approx(expected_loss, rel=1e-12, abs=1e-12)
    for name, value in pyro.get_param_store().items():
        assert torch.allclose(value, expected[name], rtol=1e-12, atol=1e-12), name
    assert resumed.num_steps == elbo.num_steps == 4
    for module, saved_module in zip(
        resumed.surrogate.auxiliary_modules().values(), elbo.surrogate.auxiliary_modules().values()
    ):
        for p, q in zip(module.parameters(), saved_module.parameters()):  # learned weights round-trip too
            assert torch.equal(p, q)
    if entry.stateful and elbo_state["surrogate"]:  # its state matters: a fresh ELBO without it takes another step
        pyro.clear_param_store()
        pyro.get_param_store().set_state(copy.deepcopy(store_state))
        fresh = entry.make(max_plate_nesting=1)
        fresh.num_steps = 3
        optim = Adam({"lr": 0.05})
        optim.set_state(copy.deepcopy(optim_state))
        torch.set_rng_state(rng_state)
        assert SVI(family.model, family.guide, optim, loss=fresh).step(*family.args) != pytest.approx(
            expected_loss, rel=1e-12
        ) or any(not torch.allclose(v, expected[k], rtol=1e-12, atol=1e-12) for k, v in pyro.get_param_store().items())


def test_every_registered_estimator_is_enrolled(request):
    gaps = enrollment_gaps(request.session.items, list(REGISTRY))
    assert not gaps, "registered estimators missing from parametrized checks: {}".format(gaps)


def test_enrollment_check_can_fail(request):
    # an estimator registered but absent from the checks is reported, for every check
    gaps = enrollment_gaps(request.session.items, list(REGISTRY) + ["unenrolled"])
    collected = {
        item.nodeid.split("[")[0] for item in request.session.items if item.get_closest_marker("registry_check")
    }
    assert collected and set(gaps) == {nodeid for nodeid in collected}
    assert all(missing == ["unenrolled"] for missing in gaps.values())


def test_registry_entries_are_consistent():
    for name, entry in REGISTRY.items():
        elbo = entry.make()
        assert elbo.num_particles >= entry.min_particles, name
        assert entry.evaluations(elbo.num_particles, 10, 2) >= 1, name
        if entry.for_evaluations is not None:
            budget_elbo = entry.make_for_evaluations(40, 10, 2)
            assert entry.evaluations(budget_elbo.num_particles, 10, 2) <= 2 * 40, name
        if entry.min_particles > 1:
            with pytest.raises(ValueError, match=type(elbo).__name__):
                entry.make(num_particles=entry.min_particles - 1)
        assert entry.objective in ("elbo", "iwae")
        assert not (entry.exact and not entry.unbiased)


def _categorical_with_a_dependent_site():
    def model():
        y = pyro.sample("y", dist.Categorical(torch.ones(3) / 3))
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(z + y, 1.0), obs=torch.tensor([0.2, 1.1]))

    def guide():
        y = pyro.sample("y", dist.Categorical(logits=pyro.param("r", torch.zeros(3))))
        with pyro.plate("data", 2):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(2)) + y))

    return model, guide


def test_error_suggestions_come_from_the_registry_filtered_by_the_structure():
    # RODEO refuses the Categorical site; of the others, those that take a Categorical site, guide
    # dependencies and two discrete sites are suggested -- and each of them runs the model and guide
    from pyro_discrete.registry import takes
    from pyro_discrete.structure import analyze

    model, guide = _categorical_with_a_dependent_site()
    elbo = REGISTRY["rodeo"].make(max_plate_nesting=2)
    with pytest.raises(EstimatorError) as info:
        elbo.differentiable_loss(model, guide)
    error = info.value
    assert error.requirement == "site_kind" and error.sites == ("y",)
    structure = analyze(model, guide, (), {})
    expected = [n for n, e in REGISTRY.items() if e.unbiased and e.objective == "elbo" and e.cls is not type(elbo)]
    expected = [n for n in expected if takes(REGISTRY[n], structure)]
    assert list(error.alternatives) == expected
    assert "arsm" not in expected and "unordered" not in expected and "loo" in expected
    assert str(error).endswith("vargrad.") or "Use " in str(error)
    for name in error.alternatives:
        pyro.clear_param_store()
        REGISTRY[name].make(max_plate_nesting=2).loss_and_grads(model, guide)


def test_model_and_guide_with_only_a_discrete_site_in_a_plate():
    # the smallest structure every estimator takes, as a smoke test of the registry's make()
    def model():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(0.3))

    def guide():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(3))))

    for name, entry in REGISTRY.items():
        loss = entry.make().differentiable_loss(model, guide)
        assert torch.isfinite(loss), name
