# SPDX-License-Identifier: Apache-2.0
"""
The structure suite: every structure of ``structures.py`` through every
registered estimator. A pair either works -- ``loss``, ``loss_and_grads`` and
``differentiable_loss`` agree under one seed -- or raises an error that names
the estimator, the site and what to use instead; which of the two is
predicted from the registry's description of the estimator and the
structure's description of itself, so an estimator that stops taking a
structure it should take fails too. Structures that do not broadcast also run
with ``vectorize_particles=False``. A subset gets the bias check against
:class:`~pyro_discrete.ExpectELBO`.
"""

import re
import warnings

import pyro
import pytest
import torch
from structures import STRUCTURES

from pyro_discrete import ExpectELBO
from pyro_discrete.drawing import count_plate_dims as _plate_nesting
from pyro_discrete.errors import EstimatorError
from pyro_discrete.registry import REGISTRY
from pyro_discrete.statistics import draw_statistics, draws_plate
from pyro_discrete.structure import PER_ELEMENT
from pyro_discrete.traces import IgnoredInferOption

from common import check_unbiased, refuses_coupled_parent

PASS, ERROR = "works", "clear error"
# a model that reduces over every dim mixes vectorized particles with no shape error (Pyro's own
# Trace_ELBO(vectorize_particles=True) takes it): the structural analysis finds it and the estimators that
# vectorize particles refuse it, naming the site; the suite also runs such pairs with vectorize_particles=False.
MIXES = "vectorize_particles=False only"


def _discrete_sites_share_plates(structure):
    from pyro_discrete.structure import analyze

    frames = {s.frames for s in analyze(structure.model, structure.guide, structure.args).sites.values()}
    return len(frames) <= 1


def predict(structure, entry, vectorize=True):
    """``(outcome, regex of the error or None)`` the registry and the structure predict."""
    if structure.mixes_particles and vectorize and entry.particles > 1 and entry.cost == "particles":
        return MIXES, None
    if not vectorize and entry.vectorized_only:
        return ERROR, "vectorize_particles"
    for key in ("*", entry.name):
        if key in structure.expect_error:
            return ERROR, structure.expect_error[key]
    if not structure.per_element and PER_ELEMENT in entry.make().surrogate.assumes:
        return ERROR, (
            "evaluates every element of the plate|along batch dims left of the plates|is outside (a )?plate"
            "|does not vary along batch dim"
        )
    if not structure.kinds <= entry.site_kinds and not (entry.exact and structure.kinds <= {"other"}):
        return ERROR, (
            "is neither|does not take|can neither|has no continuous relaxation|is not a Bernoulli site"
            "|is a Categorical \\(index\\) site"
        )
    if entry.objective == "iwae" and structure.mixed_scales:
        return ERROR, "different scales|subsampled"
    if entry.single_site and structure.discrete_sites > 1:
        return ERROR, "several discrete sites"
    if entry.cost == "set" and structure.discrete_sites > 1 and not _discrete_sites_share_plates(structure):
        return ERROR, "in different plates"
    if structure.discrete_dependency and not entry.guide_dependencies:
        return ERROR, "depends on the value of (the )?discrete guide site"
    if refuses_coupled_parent(entry, structure):
        return ERROR, "differs between particles|drawn per particle"
    if not structure.enumerable and (entry.exact or entry.cost == "set"):
        return ERROR, "is outside a plate|does not vary along batch dim"
    if not structure.extra_dims_broadcast and entry.cost in ("replay", "enumeration"):
        return ERROR, "broadcast"
    if not structure.particles_broadcast and ((vectorize and entry.particles > 1) or entry.cost == "set"):
        return ERROR, "does not broadcast over the vectorized particles"
    if entry.exact and structure.name.startswith("twenty_by_ten"):
        return ERROR, "over budget"
    if entry.exact and "poisson" in structure.name:
        return ERROR, "can neither be enumerated"
    return PASS, None


def run(structure, make_elbo):
    """``(outcome, detail)``: what the three loss methods did."""
    params = None
    try:
        pyro.set_rng_seed(0)
        loss = make_elbo().loss(structure.model, structure.guide, *structure.args)
        pyro.set_rng_seed(1)
        elbo = make_elbo()
        dloss = elbo.differentiable_loss(structure.model, structure.guide, *structure.args)
        params = _store_params()
        tensors = list(params.values())
        dgrads = (
            torch.autograd.grad(dloss, tensors, allow_unused=True) if dloss.requires_grad else [None] * len(tensors)
        )
        dgrads = dict(zip(params, dgrads))
        for p in tensors:
            p.grad = None
        pyro.set_rng_seed(1)
        lg = make_elbo().loss_and_grads(structure.model, structure.guide, *structure.args)
        # by name: a new estimator instance registers its own auxiliary tensors (with the stored values)
        params = _store_params()
    except (ValueError, NotImplementedError) as e:
        _LAST_ERROR[0] = e
        return ERROR, str(e)
    return PASS, (loss, dloss, lg, params, dgrads, elbo)


_LAST_ERROR = [None]
#: (structure, estimator, vectorized) -> outcome of a suggested estimator, run once per session
_SUGGESTED = {}


def _check_suggestions(structure):
    """The estimators that the last error suggested run the structure (looped, when it says so)."""
    error = _LAST_ERROR[0]
    if not isinstance(error, EstimatorError):
        return
    vectorize = not error.looped and error.requirement not in (
        "particles_not_mixed",
        "broadcasts_left_of_plates",
        "left_dims_not_mixed",
    )
    for name in error.alternatives:
        key = (structure.name, name, vectorize)
        if key not in _SUGGESTED:
            _SUGGESTED[key] = _outcome(structure, REGISTRY[name], vectorize=vectorize)[:2]
        outcome, detail = _SUGGESTED[key]
        assert outcome == PASS, "suggested {} does not run {}: {}".format(name, structure.name, detail)


def _store_params():
    store = pyro.get_param_store()
    return {name: store[name].unconstrained() for name in store if store[name].unconstrained().requires_grad}


def _check_agreement(entry, detail):
    loss, dloss, lg, params, dgrads, elbo = detail
    assert isinstance(loss, float) and isinstance(lg, float) and torch.is_tensor(dloss)
    assert torch.isfinite(dloss) and loss == loss
    assert lg == pytest.approx(dloss.item(), rel=1e-9, abs=1e-9)
    assert set(params) == set(dgrads)
    for name, p in params.items():
        g = dgrads[name]
        expected = torch.zeros_like(p) if g is None else g
        actual = torch.zeros_like(p) if p.grad is None else p.grad
        assert torch.allclose(actual, expected, rtol=1e-8, atol=1e-10)


def _check_clear_error(entry, message, pattern):
    assert message.startswith(entry.cls.__name__ + ":"), message
    assert re.search(r"'[^']+'", message), "names no site: " + message
    assert re.search(pattern, message), "expected /{}/ in: {}".format(pattern, message)
    assert re.search(r"\b[Uu]se\b|\bpass\b|\bAdd\b|\bRemove\b", message), "suggests nothing: " + message


def _outcome(structure, entry, vectorize=True):
    def make():
        return entry.make(vectorize_particles=vectorize)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome, detail = run(structure, make)
    return outcome, detail, [w for w in caught if issubclass(w.category, IgnoredInferOption)]


@pytest.mark.registry_check
@pytest.mark.parametrize("structure_name", list(STRUCTURES))
@pytest.mark.parametrize("estimator", list(REGISTRY))
def test_structure(estimator, structure_name):
    entry, structure = REGISTRY[estimator], STRUCTURES[structure_name]
    predicted, pattern = predict(structure, entry)
    if predicted == MIXES:
        # vectorized: an error that names the site and says to loop the particles
        outcome, detail, _ = _outcome(structure, entry)
        assert outcome == ERROR, "{} mixed the vectorized particles without an error".format(estimator)
        _check_clear_error(entry, detail, "in more than one vectorized particle")
        _check_suggestions(structure)
        if entry.vectorized_only:
            return
        outcome, detail, _ = _outcome(structure, entry, vectorize=False)
        assert outcome == PASS, detail
        _check_agreement(entry, detail)
        return
    outcome, detail, infer_warnings = _outcome(structure, entry)
    if outcome == ERROR:
        assert predicted == ERROR, "{} raised on a structure it should take: {}".format(estimator, detail)
        _check_clear_error(entry, detail, pattern)
        _check_suggestions(structure)
    else:
        assert predicted == PASS, "{} took a structure it should refuse".format(estimator)
        _check_agreement(entry, detail)
        if structure.infer_warning is not None:
            honored = structure.infer_warning in entry.make().surrogate.honored_infer_keys
            assert bool(infer_warnings) != honored, "infer={{'{}': ...}} neither honored nor warned about".format(
                structure.infer_warning
            )
    if not structure.particles_broadcast and predict(structure, entry, vectorize=False)[0] == PASS:
        # the estimators that take the structure run the particles one after another
        outcome, detail, _ = _outcome(structure, entry, vectorize=False)
        assert outcome == PASS, detail
        _check_agreement(entry, detail)


# ----------------------------------------------------------------------
# per-site: "auto" and a fixed mix
# ----------------------------------------------------------------------
def per_site_outcome(structure, spec, vectorize=True, num_particles=4):
    """
    ``(outcome, detail)`` of the structure's guide annotated with ``spec``
    under leave-one-out (under the moving average with one particle).
    """
    from dataclasses import replace

    from pyro_discrete import config_estimator

    annotated = replace(structure, guide=config_estimator(structure.guide, spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        name = "loo" if num_particles > 1 else "moving_average"
        return run(annotated, lambda: REGISTRY[name].make(vectorize_particles=vectorize, num_particles=num_particles))


def _taken_by_some_estimator(structure):
    # (how, particles): vectorized by one of them (with several particles if one does), or only looped (a
    # structure that mixes vectorized particles)
    taking = [entry for entry in REGISTRY.values() if predict(structure, entry)[0] == PASS]
    if taking:
        return "vectorized", max(entry.particles for entry in taking)
    if any(predict(structure, entry)[0] == MIXES for entry in REGISTRY.values()):
        return "looped", 4
    return None, None


@pytest.mark.parametrize("structure_name", list(STRUCTURES))
def test_auto_runs_every_structure_that_some_single_estimator_runs(structure_name):
    structure = STRUCTURES[structure_name]
    taken, particles = _taken_by_some_estimator(structure)
    if taken is None:
        pytest.skip("no single estimator takes it")
    outcome, detail = per_site_outcome(structure, "auto", vectorize=taken == "vectorized", num_particles=particles)
    assert outcome == PASS, detail
    _check_agreement(REGISTRY["loo"], detail)


# ----------------------------------------------------------------------
# the bias check on a subset
# ----------------------------------------------------------------------
BIAS_SUBSET = [
    "bernoulli_event_local",
    "categorical_masked",
    "onehot_event_nested",
    "categorical_event_scaled",
    "bernoulli_probs_global",
    "global_and_local_independent",
    "global_and_local_dependent",
    "nested_plates_sites_at_both_levels",
    "markov_chain_dependent_guide",
    "chain_of_three",
    "obs_mask_partially_observed",
    "auxiliary_guide_site",
    "scale_tensor_per_element",
    "factor_and_deterministic",
]


@pytest.mark.slow
@pytest.mark.registry_check
@pytest.mark.parametrize("structure_name", BIAS_SUBSET)
@pytest.mark.parametrize("estimator", list(REGISTRY))
def test_structure_unbiased(estimator, structure_name):
    entry, structure = REGISTRY[estimator], STRUCTURES[structure_name]
    if predict(structure, entry)[0] != PASS or not entry.unbiased or entry.objective != "elbo":
        pytest.skip("not taken, biased by design, or another objective (test_vimco.py)")
    pyro.set_rng_seed(0)
    ExpectELBO().loss(structure.model, structure.guide, *structure.args)  # creates the parameters
    store = pyro.get_param_store()
    names = sorted(store.keys())
    tensors = [store.get_param(n).unconstrained() for n in names]
    if "subsampled" in structure_name:
        pytest.skip("a random subsample: the exact reference is over the subsample's distribution (test_registry)")
    continuous = "continuous" in structure.kinds
    ref = _mean_gradient(ExpectELBO(), structure, names, tensors, batches=50 if continuous else 2)
    stats = _mean_gradient(entry.make(), structure, names, tensors, batches=50, warmup=3 if entry.stateful else 0)
    check_unbiased(stats, (ref.loss, ref.loss_se, ref.mean, ref.se), what="{} on {}".format(estimator, structure_name))


def _mean_gradient(elbo, structure, names, tensors, batches, warmup=0, draws=40):
    dim = -(_plate_nesting(structure.model, structure.guide, structure.args, {}) + 1)
    model = draws_plate(structure.model, draws, dim)
    guide = draws_plate(structure.guide, draws, dim)
    pyro.set_rng_seed(2)
    for _ in range(warmup):
        elbo.differentiable_loss(model, guide, *structure.args)
    results = []
    for _ in range(batches):
        loss = elbo.differentiable_loss(model, guide, *structure.args)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True) if loss.requires_grad else [None] * len(tensors)
        results.append((loss.item(), [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]))
    return draw_statistics(results, names, draws)
