# SPDX-License-Identifier: Apache-2.0
"""
The patterns of silently wrong gradients found on random model/guide
structures, one test each (they failed before the structural analysis of
:mod:`pyro_discrete.structure`): every estimator either computes the exact
gradient (within a few standard errors, against a hand enumeration of the
guide's joint support, :func:`random_structures.exact`) or raises an
:class:`~pyro_discrete.errors.EstimatorError` that names the site, the
requirement that failed and registered estimators that take the structure --
which then run it correctly.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from random_structures import CLEAR, WORKS, WRONG, Structure, classify, init_params, negative_control

from pyro_discrete import ExpectELBO, RelaxedConcreteELBO, TraceScoreELBO
from pyro_discrete.errors import EstimatorError
from pyro_discrete.registry import REGISTRY
from pyro_discrete.structure import INDEPENDENT, LEFT_DIMS, PER_ELEMENT, UNMASKED

DATA = torch.tensor([0.4, -1.1, 1.7])


def _structure(name, model, guide, max_plate_nesting=1, draws_safe=True, args=()):
    return Structure(name, model, guide, args, max_plate_nesting, {}, draws_safe=draws_safe)


def _error(estimator, structure, **options):
    """The EstimatorError that ``estimator`` raises on the structure (fails if it raises none)."""
    init_params(structure)
    elbo = REGISTRY[estimator].make(max_plate_nesting=structure.max_plate_nesting + 1, **options)
    with pytest.raises(EstimatorError) as info:
        elbo.differentiable_loss(structure.model, structure.guide, *structure.args)
    return info.value


def _assert_alternatives_work(error, structure):
    """Every estimator the error suggests runs the structure and gets the exact gradient."""
    assert error.alternatives, str(error)
    for name in error.alternatives:
        entry = REGISTRY[name]
        if error.requirement == "particles_not_mixed":
            outcome = classify(structure, lambda max_plate_nesting: entry.make(vectorize_particles=False))
        else:
            outcome = classify(structure, entry)
        assert outcome.outcome == WORKS, (name, outcome)


# ----------------------------------------------------------------------
# 1. a latent reduced over all its dims, the vectorized particle dim included
# ----------------------------------------------------------------------
def _reduces_over_all_dims(keepdim_free=False):
    def model():
        c = pyro.param("coef", torch.tensor(0.7))
        with pyro.plate("a", 2):
            z = pyro.sample("z", dist.Bernoulli(0.4))
        total = z.sum(-1) if keepdim_free else z.sum()
        pyro.sample("x", dist.Normal(c * total, 1.0), obs=torch.tensor(1.3))

    def guide():
        with pyro.plate("a", 2):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor([0.3, -0.5]))))

    return _structure("reduces_over_all_dims", model, guide, draws_safe=False)


PARTICLE_ESTIMATORS = [n for n, e in REGISTRY.items() if e.unbiased and e.particles > 1 and e.objective == "elbo"]


@pytest.mark.parametrize("keepdim_free", [False, True], ids=["sum()", "sum(-1)"])
@pytest.mark.parametrize("estimator", PARTICLE_ESTIMATORS)
def test_1_reduction_over_the_particle_dim_is_an_error_naming_the_site(estimator, keepdim_free):
    structure = _reduces_over_all_dims(keepdim_free)
    error = _error(estimator, structure)
    assert error.requirement in ("particles_not_mixed", LEFT_DIMS) and error.sites == ("z",)
    assert error.estimator == REGISTRY[estimator].cls.__name__


def test_1_the_suggested_looped_particles_are_exact():
    structure = _reduces_over_all_dims()
    error = _error("loo", structure)
    assert "vectorize_particles=False" in str(error)
    _assert_alternatives_work(error, structure)


# ----------------------------------------------------------------------
# 2. a term outside a latent's plate depends on several of its elements
# ----------------------------------------------------------------------
def _global_term_of_several_elements():
    table = torch.tensor([-1.0, 0.5, 2.0])

    def model():
        c = pyro.param("coef", torch.tensor(0.8))
        with pyro.plate("a", 2):
            z = pyro.sample("z", dist.OneHotCategorical(logits=torch.tensor([0.1, -0.2, 0.3])))
        pyro.sample("x", dist.Normal(c * (z * table).sum((-2, -1)).unsqueeze(-1), 1.0), obs=torch.tensor([1.5]))

    def guide():
        logits = pyro.param("q", torch.tensor([[0.2, -0.4, 0.1], [-0.3, 0.5, 0.0]]))
        with pyro.plate("a", 2):
            pyro.sample("z", dist.OneHotCategorical(logits=logits))

    return _structure("global_term_of_several_elements", model, guide)


@pytest.mark.parametrize("estimator", ["indecater", "rebar"])
def test_2_per_element_replays_refuse_a_term_outside_the_plate(estimator):
    structure = _global_term_of_several_elements()
    error = _error(estimator, structure)
    assert error.requirement == PER_ELEMENT and error.sites == ("z",)
    assert "arsm" in error.alternatives and "loo" in error.alternatives
    _assert_alternatives_work(error, structure)


# ----------------------------------------------------------------------
# 3. two sequential plates on the same dim
# ----------------------------------------------------------------------
def _sequential_plates_on_one_dim(size_c):
    def model():
        c = pyro.param("coef", torch.tensor(0.6))
        with pyro.plate("a", 2, dim=-1):
            z = pyro.sample("z", dist.Bernoulli(0.3))
        with pyro.plate("c", size_c, dim=-1):
            pyro.sample("x", dist.Normal(c * z.sum(-1, keepdim=True), 1.0), obs=DATA[:size_c])

    def guide():
        with pyro.plate("a", 2, dim=-1):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor([0.2, -0.7]))))

    return _structure("sequential_plates_on_one_dim", model, guide)


@pytest.mark.parametrize("size_c", [2, 3])
def test_3_expect_on_sequential_plates_sharing_a_dim_is_an_error_not_a_wrong_value(size_c):
    structure = _sequential_plates_on_one_dim(size_c)
    init_params(structure)
    with pytest.raises(EstimatorError) as info:
        ExpectELBO().differentiable_loss(structure.model, structure.guide)
    assert info.value.requirement == PER_ELEMENT and "z" in info.value.sites
    assert classify(structure, REGISTRY["loo"]).outcome == WORKS


# ----------------------------------------------------------------------
# 4. a guide site outside a plate whose distribution depends on sites inside it
# ----------------------------------------------------------------------
def _guide_site_outside_depends_on_inside(weight=1.2):
    def model():
        loc = pyro.param("loc", torch.tensor(0.5))
        plate = pyro.plate("a", 2)
        with plate:
            z0 = pyro.sample("z0", dist.Bernoulli(0.5))
        g = pyro.sample("g", dist.Bernoulli(0.5))
        with plate:
            pyro.sample("x", dist.Normal(loc * (2 * g - 1) + z0, 1.0), obs=DATA[:2])

    def guide():
        a, b = pyro.param("g_bias", torch.tensor(-0.3)), pyro.param("g_weight", torch.tensor(weight))
        with pyro.plate("a", 2):
            z0 = pyro.sample("z0", dist.Bernoulli(logits=pyro.param("q", torch.tensor([0.4, -0.6]))))
        pyro.sample("g", dist.Bernoulli(logits=a + b * z0.sum(-1, keepdim=True)))

    return _structure("guide_site_outside_depends_on_inside", model, guide)


@pytest.mark.parametrize(
    "estimator", [n for n, e in REGISTRY.items() if e.unbiased and e.guide_dependencies and not e.single_site]
)
def test_4_costs_widen_over_a_plate_that_a_downstream_guide_site_crosses(estimator):
    structure = _guide_site_outside_depends_on_inside()
    outcome = classify(structure, REGISTRY[estimator])
    assert outcome.outcome in (WORKS, CLEAR), outcome
    if estimator in ("score", "loo", "vargrad", "moving_average", "rodeo", "double_cv"):
        assert outcome.outcome == WORKS, outcome


def test_4_track_dependencies_widens_too():
    structure = _guide_site_outside_depends_on_inside()
    outcome = classify(structure, lambda max_plate_nesting: TraceScoreELBO(4, track_dependencies=True))
    assert outcome.outcome == WORKS, outcome
    elbo = TraceScoreELBO(4, max_plate_nesting=2)
    elbo.differentiable_loss(structure.model, structure.guide)
    assert elbo.structure.widened("z0") == frozenset([("a", -1)])


def test_4_a_dependency_that_vanishes_at_initialization_is_found():
    # g_weight starts at 0: at the parameters' values g does not depend on z0, but it will after a step; the
    # analysis (cached for the structure) moves the parameters by a fixed random amount, so it still widens
    structure = _guide_site_outside_depends_on_inside(weight=0.0)
    init_params(structure)
    elbo = TraceScoreELBO(4, max_plate_nesting=2)
    elbo.differentiable_loss(structure.model, structure.guide)
    assert elbo.structure.widened("z0") == frozenset([("a", -1)])
    assert elbo.structure.sites["z0"].dependents == {"g"}
    assert pyro.param("g_weight").item() == 0.0  # the store is untouched


def test_4_the_harness_flags_the_plate_restricted_cost():
    # the same estimator with the widening switched off is wrong here: the test above can fail
    class PlateRestricted(TraceScoreELBO):
        def _structure(self, step, pair, analyze_now=True):
            return None

    structure = _guide_site_outside_depends_on_inside()
    outcome = classify(structure, lambda max_plate_nesting: PlateRestricted(4, max_plate_nesting=max_plate_nesting))
    assert outcome.outcome == WRONG, outcome


# ----------------------------------------------------------------------
# 5. raw errors become named ones
# ----------------------------------------------------------------------
def test_5_no_raw_broadcasting_error_from_the_cost_algebra():
    # the sum without keepdim lands on the plate's dim: a shape error deep in the costs before
    structure = _reduces_over_all_dims(keepdim_free=True)
    init_params(structure)
    for name in ("loo", "vargrad", "arsm", "indecater", "expect"):
        elbo = REGISTRY[name].make(max_plate_nesting=2)
        try:
            elbo.differentiable_loss(structure.model, structure.guide)
        except EstimatorError as e:
            assert e.sites, e
        except Exception as e:  # noqa: BLE001
            pytest.fail("{} raised a raw {}: {}".format(name, type(e).__name__, e))


def test_5_errors_are_data():
    error = EstimatorError("TraceScoreELBO", "text", sites=("z",), requirement="r", alternatives=("loo",))
    assert isinstance(error, ValueError) and isinstance(error, NotImplementedError)
    assert (error.estimator, error.sites, error.requirement, error.alternatives) == (
        "TraceScoreELBO",
        ("z",),
        "r",
        ("loo",),
    )
    assert str(error) == "TraceScoreELBO: text"


# ----------------------------------------------------------------------
# 6. a relaxed value fed into a mask
# ----------------------------------------------------------------------
def _presence_masks():
    def model():
        with pyro.plate("objects", 3):
            present = pyro.sample("present", dist.Bernoulli(0.5))
            where = pyro.sample("where", dist.Normal(0.0, 1.0).mask(present.bool()))
            pyro.sample("x", dist.Normal(where * present, 1.0), obs=DATA)

    def guide():
        with pyro.plate("objects", 3):
            present = pyro.sample("present", dist.Bernoulli(logits=pyro.param("q", torch.tensor([2.0, -3.0, 0.1]))))
            pyro.sample("where", dist.Normal(pyro.param("m", torch.zeros(3)), 1.0).mask(present))

    return model, guide


@pytest.mark.parametrize("estimator", [n for n, e in REGISTRY.items() if e.cls is RelaxedConcreteELBO] + ["rebar"])
def test_6_relaxations_refuse_a_mask_that_depends_on_a_discrete_site(estimator):
    model, guide = _presence_masks()
    structure = _structure("presence_masks", model, guide)
    error = _error(estimator, structure)
    # RELAX replays the presence sites, which the guide's 'where' depends on: that is checked first
    assert error.requirement == (INDEPENDENT if estimator == "rebar" else UNMASKED) and "present" in error.sites
    assert "loo" in error.alternatives


def test_negative_control_is_flagged():
    structure = _global_term_of_several_elements()
    assert classify(structure, negative_control).outcome == WRONG


# ----------------------------------------------------------------------
# found by the 300-seed sweep: ARSM's batched replay of several sites, VIMCO on a subsample inside one bound
# ----------------------------------------------------------------------
def _bernoulli_reduced_beside_a_categorical():
    def model():
        c = pyro.param("coef", torch.tensor(0.7))
        with pyro.plate("a", 2):
            z = pyro.sample("z", dist.Bernoulli(0.4))
        y = pyro.sample("y", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("x", dist.Normal(c * z.sum() + 0.5 * y, 1.0), obs=torch.tensor(1.3))

    def guide():
        with pyro.plate("a", 2):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor([0.3, -0.5]))))
        pyro.sample("y", dist.Categorical(logits=pyro.param("r", torch.tensor([0.1, 0.4, -0.2]))))

    return _structure("bernoulli_reduced_beside_a_categorical", model, guide, draws_safe=False)


@pytest.mark.parametrize("estimator", ["arsm", "arm"])
def test_arsm_refuses_a_reduction_over_rows_it_batches_with_other_sites(estimator):
    # one batched replay holds z's row and y's rows: z.sum() over every dim would add up rows (before: a raw
    # shape error, or with a scalar term no error and a wrong gradient)
    structure = _bernoulli_reduced_beside_a_categorical()
    error = _error(estimator, structure, num_particles=1)
    assert error.requirement == LEFT_DIMS and "z" in error.sites


def test_vimco_refuses_a_subsampled_plate_inside_one_bound():
    # a global latent and a subsampled local one: every site's scale may agree (here 2), yet the bound of a
    # subsample scaled up estimates no bound of the whole data (before: a value and gradient without an error)
    def model():
        g = pyro.sample("g", dist.Bernoulli(0.5))
        with pyro.plate("a", 2, subsample_size=1) as idx:
            z = pyro.sample("z", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(z + g, 1.0), obs=DATA[:2][idx])

    def guide():
        with poutine.scale(scale=2.0):
            pyro.sample("g", dist.Bernoulli(logits=pyro.param("p", torch.tensor(0.2))))
        with pyro.plate("a", 2, subsample_size=1):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.1))))

    structure = _structure("subsampled_inside_one_bound", poutine.scale(model, 1.0), guide)
    error = _error("vimco", structure)
    assert error.requirement == "subsampled_plate_holds_every_site" and error.sites == ("z",)
    assert error.alternatives and "vimco" not in error.alternatives


def test_a_to_event_site_whose_flip_keeps_a_sum_is_still_found_outside_its_plate():
    # flipping every latent of an element's event (1, 0 -> 0, 1) leaves z.sum() as it was: the analysis must
    # also change one latent, or it misses the term outside the plate (then per-element estimators, exact
    # enumeration and "auto" would take a structure they cannot)
    from pyro_discrete.structure import analyze

    def model():
        with pyro.plate("a", 2):
            z = pyro.sample("z", dist.Bernoulli(0.5).expand([2, 2]).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(), 1.0), obs=torch.tensor(0.0))

    def guide():
        with pyro.plate("a", 2):
            pyro.sample("z", dist.Bernoulli(probs=torch.tensor([1.0, 0.0]).expand([2, 2])).to_event(1))

    structure = analyze(model, guide)
    assert ("a", -1) in structure.sites["z"].outside


def test_a_replay_whose_model_moves_the_replayed_dim_is_a_named_error():
    # before: ARSM with several particles raised a raw RuntimeError from reshaping the replayed costs
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample(
            "c",
            dist.Categorical(logits=torch.stack([z, 1 - z, z * 0]).permute(*range(z.dim(), -1, -1))),
            obs=torch.tensor(1),
        )

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.0))))

    pyro.clear_param_store()
    with pytest.raises(EstimatorError) as info:
        REGISTRY["arsm"].make(num_particles=4).differentiable_loss(model, guide)
    assert info.value.sites == ("z",) and info.value.alternatives
