# SPDX-License-Identifier: Apache-2.0
"""``jit_compile=True``: the same estimator, compiled; stateful estimators refuse it."""

import warnings

import pyro
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_discrete import RelaxedConcreteELBO, TraceScoreELBO
from pyro_discrete.registry import REGISTRY
from pyro_discrete.relaxed import exponential_decay

from common import applicable, check_unbiased, gradient_draws, init_params, make_family, reference


@pytest.fixture(autouse=True)
def quiet_jit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


@pytest.mark.registry_check
@pytest.mark.parametrize("family_name", ["amortized_vae", "local_categorical_subsampled", "bernoulli_vector"])
@pytest.mark.parametrize("estimator", list(REGISTRY))
def test_compiled_step_equals_plain_step(estimator, family_name):
    entry = REGISTRY[estimator]
    family = make_family(family_name)
    params = init_params(family)
    compiled = entry.make(jit_compile=True, max_plate_nesting=family.max_plate_nesting)
    if not entry.compilable:
        with pytest.raises(ValueError, match=r"{}: jit_compile=True is not supported".format(entry.cls.__name__)):
            compiled.differentiable_loss(family.model, family.guide, *family.args)
        return
    if not applicable(entry, family):
        pytest.skip("{} does not take this family (test_registry checks the error)".format(estimator))
    plain = entry.make(max_plate_nesting=family.max_plate_nesting)
    compiled.differentiable_loss(family.model, family.guide, *family.args)  # compiles
    results = []
    for elbo in (compiled, plain):
        pyro.set_rng_seed(11)
        loss = elbo.differentiable_loss(family.model, family.guide, *family.args)
        results.append((loss, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
    (loss_c, grads_c), (loss_p, grads_p) = results
    assert loss_c.item() == pytest.approx(loss_p.item(), rel=1e-9, abs=1e-9)
    for gc, gp in zip(grads_c, grads_p):
        if gp is None:
            assert gc is None or (gc == 0).all()
        else:
            assert torch.allclose(gc, gp, rtol=1e-8, atol=1e-10), (gc - gp).abs().max()
    assert len(compiled._compiled) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["loo", "vargrad"])
def test_compiled_estimator_is_unbiased(name):
    family = make_family("amortized_vae")
    init_params(family)
    ref = reference(family)
    stats = gradient_draws(REGISTRY[name].make(jit_compile=True), family)
    check_unbiased(stats, ref, what="compiled " + name)


def test_new_shapes_compile_again_and_svi_trains():
    family = make_family("amortized_vae")
    init_params(family)
    elbo = TraceScoreELBO(num_particles=4, jit_compile=True, max_plate_nesting=family.max_plate_nesting)
    (x,) = family.args
    svi = SVI(family.model, family.guide, Adam({"lr": 0.01}), loss=elbo)
    for batch in (x, x[:3], x):
        loss = svi.step(batch)
        assert loss == loss
    assert len(elbo._compiled) == 2


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: TraceScoreELBO(num_particles=2, baseline="moving_average", jit_compile=True), "keeps state"),
        (lambda: TraceScoreELBO(baseline="auto", jit_compile=True), "keeps state"),
        (lambda: RelaxedConcreteELBO(temperature=exponential_decay(), jit_compile=True), "schedule"),
        (lambda: TraceScoreELBO(num_particles=2, track_dependencies=True, jit_compile=True), "provenance"),
    ],
)
def test_stateful_estimators_refuse_compilation(make, match):
    family = make_family("amortized_vae")
    init_params(family)
    with pytest.raises(ValueError, match=match):
        make().differentiable_loss(family.model, family.guide, *family.args)


def test_compiled_step_draws_new_samples():
    # the random draws are operations of the compiled graph, not constants
    family = make_family("amortized_vae")
    init_params(family)
    elbo = TraceScoreELBO(num_particles=4, jit_compile=True, max_plate_nesting=family.max_plate_nesting)
    losses = {elbo.differentiable_loss(family.model, family.guide, *family.args).item() for _ in range(4)}
    assert len(losses) > 1


def test_diagnostics_of_a_compiled_estimator_leave_it_alone():
    from pyro_discrete.diagnostics import gradient_statistics

    family = make_family("amortized_vae")
    init_params(family)
    elbo = TraceScoreELBO(num_particles=4, jit_compile=True, max_plate_nesting=family.max_plate_nesting)
    elbo.differentiable_loss(family.model, family.guide, *family.args)
    stats = gradient_statistics(elbo, family.model, family.guide, *family.args, num_draws=100, timing_repeats=1)
    assert stats.total_variance > 0
    assert len(elbo._compiled) == 1
