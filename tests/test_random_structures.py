# SPDX-License-Identifier: Apache-2.0
"""
Randomly generated model/guide pairs (``tests/random_structures.py``) through
every registered unbiased estimator: each must compute an unbiased gradient
(against an exact reference computed by enumerating the guide's support by
hand) or raise a clear error (an ``EstimatorError``). The harness itself is
checked: its reference agrees with Pyro's ``TraceEnum_ELBO`` where that
applies, and a gradient scaled by 1.1 is called ``"wrong"``.

``benchmarks/random_structures.py`` runs the same classification over hundreds
of seeds.
"""

import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from random_structures import (
    CLEAR,
    PER_SITE,
    UNCLEAR,
    WORKS,
    WRONG,
    classify,
    enum_applicable,
    exact,
    float64,
    generate,
    init_params,
    negative_control,
    per_site_target,
)

from pyro_discrete.registry import REGISTRY

SEEDS = [2, 3, 6, 8, 14, 30, 34, 41, 44, 52, 54]

_REFERENCES = {}  # seed -> the exact references of its structure (shared by the estimators)


def _structure(seed):
    return generate(seed)


@pytest.mark.registry_check
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("estimator", list(REGISTRY))
def test_random_structure(estimator, seed):
    # parametrized over every registered name so that the enrollment check sees it; the biased are skipped
    entry = REGISTRY[estimator]
    if not entry.unbiased:
        pytest.skip("biased by design")
    structure = _structure(seed)
    outcome = classify(structure, entry, references=_REFERENCES.setdefault(seed, {}))
    assert outcome.outcome in (WORKS, CLEAR), "{} on {}: {} (z {:.1f}) {}\n{}".format(
        estimator, structure.name, outcome.outcome, outcome.max_z, outcome.message, structure.describe()
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", PER_SITE)
def test_random_structure_per_site(kind, seed):
    # "auto" under leave-one-out, and a random mix of site methods under a random ELBO: right or a clear error
    structure, factory = per_site_target(_structure(seed), kind, seed)
    outcome = classify(structure, factory, references=_REFERENCES.setdefault(seed, {}))
    assert outcome.outcome in (WORKS, CLEAR), "{} ({}) on {}: {} (z {:.1f}) {}\n{}".format(
        kind, factory.description, structure.name, outcome.outcome, outcome.max_z, outcome.message, structure.describe()
    )


def _enum_seeds(count):
    return [seed for seed in range(200) if enum_applicable(generate(seed))][:count]


@pytest.mark.parametrize("seed", _enum_seeds(3))
def test_exact_reference_agrees_with_trace_enum(seed):
    structure = generate(seed)
    with float64():
        params = init_params(structure)
        loss, grads = exact(structure)
        elbo = TraceEnum_ELBO(max_plate_nesting=structure.max_plate_nesting)
        enum_loss = elbo.differentiable_loss(
            structure.model, config_enumerate(structure.guide, "parallel"), *structure.args
        )
        enum_grads = torch.autograd.grad(enum_loss, list(params.values()), allow_unused=True)
    assert enum_loss.item() == pytest.approx(loss, rel=1e-10, abs=1e-10)
    for (name, p), g in zip(params.items(), enum_grads):
        g = torch.zeros_like(p) if g is None else g
        assert torch.allclose(grads[name], g, rtol=1e-9, atol=1e-10), name


def test_generator_is_reproducible_and_small():
    # the same structure from a seed, whatever the default dtype
    for seed in range(30):
        a = generate(seed)
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            b = generate(seed)
        finally:
            torch.set_default_dtype(old)
        assert a.describe() == b.describe() and a.flags == b.flags
        assert a.support <= 512
        for x, y in zip(a.spec.latents, b.spec.latents):
            assert torch.equal(x.q_init, y.q_init)
        for x, y in zip(a.spec.terms, b.spec.terms):
            assert torch.equal(x.data, y.data) and torch.equal(x.bias_init, y.bias_init)


def test_negative_control_is_flagged_wrong():
    # a correct score-function estimator's gradient times 1.1: the harness must see it
    seeds = [0, 1, 2, 5, 9]
    outcomes = [classify(generate(seed), negative_control).outcome for seed in seeds]
    assert outcomes.count(WRONG) >= 4, outcomes
    assert UNCLEAR not in outcomes, outcomes


def test_exact_estimator_is_exact_on_a_structure():
    # the harness's tolerance for exact estimators: ExpectELBO on a structure it takes
    structure = generate(0)
    outcome = classify(structure, REGISTRY["expect"])
    assert outcome.outcome == WORKS and outcome.max_z < 1e-8, outcome
    pyro.clear_param_store()
