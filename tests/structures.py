# SPDX-License-Identifier: Apache-2.0
"""
Model/guide structures that users write, for the structure suite
(``test_structures.py``): plates (nested, sequential, subsampled), poutine
handlers, ``obs_mask``, ``pyro.markov``, discrete sites depending on discrete
ones and continuous on discrete and the reverse, ``.to_event`` sites, empty and
param-only models, AutoGuides, ``infer`` annotations, and models that do not
broadcast over extra batch dims.

Each :class:`Structure` says what it contains (the kinds of its guide sites,
whether a guide site depends on a discrete one, whether the model broadcasts
over dims left of its plates), which is what the registry's description of an
estimator is checked against. Written for this project after the idea of
Pyro's ``tests/infer/test_valid_models.py``; no code of Pyro's tests is used.
"""

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoGuideList, AutoNormal, AutoNormalMessenger
from pyro.ops.indexing import Vindex
from torch.distributions import constraints

BERNOULLI, CATEGORICAL, ONEHOT, CONTINUOUS, OTHER = "bernoulli", "categorical", "onehot", "continuous", "other"


@dataclass
class Structure:
    name: str
    model: Callable
    guide: Callable
    args: tuple = ()
    kinds: frozenset = frozenset()
    discrete_dependency: bool = False  # a guide site depends on the value of a discrete guide site
    bernoulli_parent: bool = False  # a Bernoulli guide site depends on another sampled guide site
    categorical_parent: bool = False  # a categorical guide site depends on another sampled guide site
    discrete_sites: int = 1  # number of discrete guide sites
    particles_broadcast: bool = True  # model and guide broadcast over a particle plate left of their plates
    extra_dims_broadcast: bool = True  # ... and over enumeration or replay dims left of all plates
    # mixes the vectorized particles without a shape error (as Trace_ELBO(vectorize_particles=True) would
    # take it): run with vectorize_particles=False only; see test_structures.py
    mixes_particles: bool = False
    mixed_scales: bool = False  # sites with different scales (a multi-sample bound refuses them)
    enumerable: bool = True  # every term depends on enumerated sites only through plates it shares
    # every term that depends on a plate element of a discrete site is in that element (estimators that replay
    # every element at once -- IndeCateR, RELAX, the set estimators, enumeration -- need it)
    per_element: bool = True
    infer_warning: Optional[str] = None  # an infer key some estimators warn about
    expect_error: dict = field(default_factory=dict)  # estimator name -> regex of an expected clear error
    exact: bool = True  # small enough for the bias check against ExpectELBO


STRUCTURES = {}


def structure(**kwargs):
    def register(build):
        model, guide, *args = build()
        s = Structure(build.__name__.lstrip("_"), model, guide, tuple(args), **kwargs)
        STRUCTURES[s.name] = s
        return build

    return register


# ----------------------------------------------------------------------
# generated: one latent of each kind in each placement
# ----------------------------------------------------------------------
def _prior(kind, shape):
    if kind == BERNOULLI:
        return dist.Bernoulli(logits=torch.zeros(shape) + 0.2)
    if kind == "bernoulli_probs":
        return dist.Bernoulli(probs=torch.full(shape, 0.35))
    if kind in (CATEGORICAL, "categorical_probs"):
        return dist.Categorical(logits=torch.zeros(shape + (3,)) + torch.tensor([0.1, -0.2, 0.3]))
    if kind == ONEHOT:
        return dist.OneHotCategorical(logits=torch.zeros(shape + (3,)) + torch.tensor([0.1, -0.2, 0.3]))
    if kind == "bernoulli_event":
        return dist.Bernoulli(logits=torch.zeros(shape + (3,))).to_event(1)
    if kind == "onehot_event":
        return dist.OneHotCategorical(logits=torch.zeros(shape + (2, 3))).to_event(1)
    if kind == "categorical_event":
        return dist.Categorical(logits=torch.zeros(shape + (2, 3))).to_event(1)
    raise ValueError(kind)


def _posterior(kind, name, shape):
    init = torch.linspace(-1.0, 1.0, 60).sin()
    if kind == BERNOULLI:
        return dist.Bernoulli(logits=pyro.param(name, init[: max(1, _numel(shape))].reshape(shape)))
    if kind == "bernoulli_probs":
        p = pyro.param(name, torch.full(shape, 0.6), constraint=constraints.unit_interval)
        return dist.Bernoulli(probs=p)
    if kind == CATEGORICAL:
        return dist.Categorical(logits=pyro.param(name, init[: 3 * _numel(shape)].reshape(shape + (3,))))
    if kind == "categorical_probs":
        p = pyro.param(name, torch.ones(shape + (3,)) / 3, constraint=constraints.simplex)
        return dist.Categorical(probs=p)
    if kind == ONEHOT:
        return dist.OneHotCategorical(logits=pyro.param(name, init[: 3 * _numel(shape)].reshape(shape + (3,))))
    if kind == "bernoulli_event":
        return dist.Bernoulli(logits=pyro.param(name, init[: 3 * _numel(shape)].reshape(shape + (3,)))).to_event(1)
    if kind == "onehot_event":
        logits = pyro.param(name, init[: 6 * _numel(shape)].reshape(shape + (2, 3)))
        return dist.OneHotCategorical(logits=logits).to_event(1)
    if kind == "categorical_event":
        logits = pyro.param(name, init[: 6 * _numel(shape)].reshape(shape + (2, 3)))
        return dist.Categorical(logits=logits).to_event(1)
    raise ValueError(kind)


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _feature(kind, z):
    """A real number per element from a latent of any kind (sums over its event)."""
    z = z.to(torch.get_default_dtype())
    if kind in (ONEHOT,):
        return z @ torch.tensor([0.5, -1.0, 1.5])
    if kind == "bernoulli_event":
        return z.sum(-1)
    if kind == "onehot_event":
        return (z @ torch.tensor([0.5, -1.0, 1.5])).sum(-1)
    if kind == "categorical_event":
        return z.sum(-1)
    return z


def _kind_of(kind):
    return {
        "bernoulli_probs": BERNOULLI,
        "categorical_probs": CATEGORICAL,
        "bernoulli_event": BERNOULLI,
        "onehot_event": ONEHOT,
        "categorical_event": CATEGORICAL,
    }.get(kind, kind)


DATA = torch.tensor([0.3, -1.1, 0.8, 1.9, -0.4, 0.0])

PLACEMENTS = ("global", "local", "nested", "subsampled", "masked", "scaled")
KINDS = (
    BERNOULLI,
    CATEGORICAL,
    ONEHOT,
    "bernoulli_event",
    "onehot_event",
    "categorical_event",
    "bernoulli_probs",
    "categorical_probs",
)


def _generated(kind, placement):
    N = 4

    def model():
        if placement == "global":
            z = pyro.sample("z", _prior(kind, ()))
            with pyro.plate("data", N):
                pyro.sample("x", dist.Normal(_feature(kind, z), 1.0), obs=DATA[:N])
        elif placement == "nested":
            with pyro.plate("outer", 2, dim=-2), pyro.plate("inner", 3, dim=-1):
                z = pyro.sample("z", _prior(kind, ()))
                pyro.sample("x", dist.Normal(_feature(kind, z), 1.0), obs=DATA[:6].reshape(2, 3))
        else:
            sub = 2 if placement == "subsampled" else None
            with pyro.plate("data", N, subsample_size=sub) as idx:
                mask = torch.tensor([True, False, True, True])[idx] if placement == "masked" else None
                scale = 1.5 if placement == "scaled" else 1.0
                with _masked(mask), poutine.scale(scale=scale):
                    z = pyro.sample("z", _prior(kind, ()))
                    pyro.sample("x", dist.Normal(_feature(kind, z), 1.0), obs=DATA[idx])

    def guide():
        if placement == "global":
            pyro.sample("z", _posterior(kind, "q", ()))
        elif placement == "nested":
            with pyro.plate("outer", 2, dim=-2), pyro.plate("inner", 3, dim=-1):
                q = _posterior(kind, "q", (2, 3))
                pyro.sample("z", q)
        else:
            sub = 2 if placement == "subsampled" else None
            with pyro.plate("data", N, subsample_size=sub) as idx:
                mask = torch.tensor([True, False, True, True])[idx] if placement == "masked" else None
                scale = 1.5 if placement == "scaled" else 1.0
                with _masked(mask), poutine.scale(scale=scale):
                    pyro.sample("z", _index(_posterior(kind, "q", (N,)), idx))

    return model, guide


def _masked(mask):
    return contextlib.nullcontext() if mask is None else poutine.mask(mask=mask)


def _index(fn, idx):
    # the posterior of the subsample's elements (a distribution's params indexed along the plate dim)
    base = fn.base_dist if isinstance(fn, dist.Independent) else fn
    new = type(base)(logits=base.logits[idx])
    return new.to_event(fn.reinterpreted_batch_ndims) if isinstance(fn, dist.Independent) else new


for _kind in KINDS:
    for _placement in PLACEMENTS:

        def _build(kind=_kind, placement=_placement):
            return _generated(kind, placement)

        _build.__name__ = "_{}_{}".format(_kind, _placement)
        structure(kinds=frozenset([_kind_of(_kind)]))(_build)


# ----------------------------------------------------------------------
# plates
# ----------------------------------------------------------------------
@structure(kinds=frozenset([BERNOULLI, CATEGORICAL]), discrete_sites=2)
def _global_and_local_independent():
    def model():
        g = pyro.sample("g", dist.Bernoulli(0.4))
        with pyro.plate("data", 4):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(z + g, 1.0), obs=DATA[:4])

    def guide():
        pyro.sample("g", dist.Bernoulli(logits=pyro.param("gq", torch.tensor(0.2))))
        with pyro.plate("data", 4):
            pyro.sample("z", dist.Categorical(logits=pyro.param("zq", torch.zeros(4, 3) + 0.1)))

    return model, guide


@structure(
    kinds=frozenset([BERNOULLI, CATEGORICAL]), discrete_dependency=True, discrete_sites=2, categorical_parent=True
)
def _global_and_local_dependent():
    def model():
        g = pyro.sample("g", dist.Bernoulli(0.4))
        with pyro.plate("data", 4):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(z + g, 1.0), obs=DATA[:4])

    def guide():
        g = pyro.sample("g", dist.Bernoulli(logits=pyro.param("gq", torch.tensor(0.2))))
        with pyro.plate("data", 4):
            logits = pyro.param("zq", torch.zeros(2, 4, 3) + 0.1)
            pyro.sample("z", dist.Categorical(logits=logits[0] + g.unsqueeze(-1) * logits[1]))

    return model, guide


@structure(kinds=frozenset([BERNOULLI]), discrete_sites=2)
def _sequential_plates():
    def model():
        with pyro.plate("a", 3):
            za = pyro.sample("za", dist.Bernoulli(0.3))
            pyro.sample("xa", dist.Normal(za, 1.0), obs=DATA[:3])
        with pyro.plate("b", 2):
            zb = pyro.sample("zb", dist.Bernoulli(0.6))
            pyro.sample("xb", dist.Normal(zb, 1.0), obs=DATA[3:5])

    def guide():
        with pyro.plate("a", 3):
            pyro.sample("za", dist.Bernoulli(logits=pyro.param("qa", torch.zeros(3))))
        with pyro.plate("b", 2):
            pyro.sample("zb", dist.Bernoulli(logits=pyro.param("qb", torch.ones(2))))

    return model, guide


@structure(kinds=frozenset([BERNOULLI, CATEGORICAL]), discrete_sites=2)
def _nested_plates_sites_at_both_levels():
    def model():
        with pyro.plate("groups", 2, dim=-2):
            g = pyro.sample("g", dist.Bernoulli(0.5))
            with pyro.plate("items", 3, dim=-1):
                z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
                pyro.sample("x", dist.Normal(z + g, 1.0), obs=DATA.reshape(2, 3))

    def guide():
        with pyro.plate("groups", 2, dim=-2):
            pyro.sample("g", dist.Bernoulli(logits=pyro.param("gq", torch.zeros(2, 1))))
            with pyro.plate("items", 3, dim=-1):
                pyro.sample("z", dist.Categorical(logits=pyro.param("zq", torch.zeros(2, 3, 3) + 0.2)))

    return model, guide


@structure(kinds=frozenset([BERNOULLI]))
def _three_nested_plates():
    def model():
        with pyro.plate("a", 2, dim=-3), pyro.plate("b", 2, dim=-2), pyro.plate("c", 2, dim=-1):
            z = pyro.sample("z", dist.Bernoulli(0.4))
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.zeros(2, 2, 2))

    def guide():
        with pyro.plate("a", 2, dim=-3), pyro.plate("b", 2, dim=-2), pyro.plate("c", 2, dim=-1):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(2, 2, 2))))

    return model, guide


@structure(kinds=frozenset([CATEGORICAL]))
def _plate_of_size_one():
    def model():
        with pyro.plate("data", 1):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(z, 1.0), obs=DATA[:1])

    def guide():
        with pyro.plate("data", 1):
            pyro.sample("z", dist.Categorical(logits=pyro.param("q", torch.zeros(1, 3))))

    return model, guide


@structure(kinds=frozenset([CATEGORICAL]))
def _subsample_given_indices():
    idx = torch.tensor([0, 3, 5])

    def model(idx):
        with pyro.plate("data", 6, subsample=idx):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(z, 1.0), obs=DATA[idx])

    def guide(idx):
        with pyro.plate("data", 6, subsample=idx):
            pyro.sample("z", dist.Categorical(logits=pyro.param("q", torch.zeros(6, 3) + 0.1)[idx]))

    return model, guide, idx


@structure(kinds=frozenset([BERNOULLI, CONTINUOUS]), mixed_scales=True)
def _subsampled_with_continuous_global():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 6, subsample_size=3) as idx:
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(mu + z, 1.0), obs=DATA[idx])

    def guide():
        pyro.sample("mu", dist.Normal(pyro.param("m", torch.tensor(0.1)), 0.8))
        with pyro.plate("data", 6, subsample_size=3) as idx:
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(6))[idx]))

    return model, guide


@structure(kinds=frozenset([BERNOULLI]))
def _nested_subsampled_plates():
    def model():
        with pyro.plate("outer", 4, subsample_size=2, dim=-2) as i, pyro.plate("inner", 3, subsample_size=2) as j:
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.zeros(4, 3)[i][:, j])

    def guide():
        with pyro.plate("outer", 4, subsample_size=2, dim=-2) as i, pyro.plate("inner", 3, subsample_size=2) as j:
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(4, 3))[i][:, j]))

    return model, guide


# ----------------------------------------------------------------------
# handlers
# ----------------------------------------------------------------------
@structure(kinds=frozenset([BERNOULLI]))
def _mask_on_observations():
    def model():
        with pyro.plate("data", 4):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            with poutine.mask(mask=torch.tensor([True, True, False, True])):
                pyro.sample("x", dist.Normal(z, 1.0), obs=DATA[:4])

    def guide():
        with pyro.plate("data", 4):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(4))))

    return model, guide


@structure(kinds=frozenset([BERNOULLI]))
def _scale_tensor_per_element():
    scale = torch.tensor([1.0, 2.0, 0.5, 1.0])

    def model():
        with pyro.plate("data", 4), poutine.scale(scale=scale):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=DATA[:4])

    def guide():
        with pyro.plate("data", 4), poutine.scale(scale=scale):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(4))))

    return model, guide


@structure(kinds=frozenset([BERNOULLI]))
def _block_hides_a_site():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        with poutine.block():
            pyro.sample("hidden", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.5))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.3))))

    return model, guide


@structure(kinds=frozenset([BERNOULLI, CONTINUOUS]))
def _obs_mask_partially_observed():
    x = torch.tensor([0.4, 0.0, -1.0])
    obs_mask = torch.tensor([True, False, True])

    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x, obs_mask=obs_mask)

    def guide():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(3))))
            pyro.sample("x_unobserved", dist.Normal(pyro.param("xu", torch.zeros(3)), 1.0))

    return model, guide


@structure(kinds=frozenset([BERNOULLI]))
def _conditioned_model():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(z, 1.0))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.3))))

    return poutine.condition(model, data={"x": torch.tensor(0.7)}), guide


@structure(kinds=frozenset([CATEGORICAL]))
def _factor_and_deterministic():
    def model():
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        y = pyro.deterministic("y", z.to(torch.get_default_dtype()) * 2.0)
        pyro.factor("f", -((y - 1.0) ** 2))

    def guide():
        pyro.sample("z", dist.Categorical(logits=pyro.param("q", torch.zeros(3))))

    return model, guide


# ----------------------------------------------------------------------
# markov
# ----------------------------------------------------------------------
@structure(kinds=frozenset([CATEGORICAL]), discrete_sites=3)
def _markov_chain_independent_guide():
    def model():
        z = torch.tensor(0)
        for t in pyro.markov(range(3)):
            z = pyro.sample("z_{}".format(t), dist.Categorical(Vindex(torch.eye(3) * 0.6 + 0.1)[..., z, :]))
            pyro.sample("x_{}".format(t), dist.Normal(z.to(torch.get_default_dtype()), 1.0), obs=DATA[t])

    def guide():
        for t in pyro.markov(range(3)):
            pyro.sample("z_{}".format(t), dist.Categorical(logits=pyro.param("q_{}".format(t), torch.zeros(3))))

    return model, guide


@structure(kinds=frozenset([CATEGORICAL]), discrete_dependency=True, discrete_sites=3, categorical_parent=True)
def _markov_chain_dependent_guide():
    def model():
        z = torch.tensor(0)
        for t in pyro.markov(range(3)):
            z = pyro.sample("z_{}".format(t), dist.Categorical(Vindex(torch.eye(3) * 0.6 + 0.1)[..., z, :]))
            pyro.sample("x_{}".format(t), dist.Normal(z.to(torch.get_default_dtype()), 1.0), obs=DATA[t])

    def guide():
        transition = pyro.param("qt", torch.eye(3) + 0.1)
        z = torch.tensor(0)
        for t in pyro.markov(range(3)):
            z = pyro.sample("z_{}".format(t), dist.Categorical(logits=Vindex(transition)[..., z, :]))

    return model, guide


@structure(kinds=frozenset([BERNOULLI]), discrete_sites=2)
def _markov_inside_a_plate():
    def model():
        with pyro.plate("sequences", 2):
            z = torch.zeros(())
            for t in pyro.markov(range(2)):
                z = pyro.sample("z_{}".format(t), dist.Bernoulli(0.3 + 0.4 * z))
                pyro.sample("x_{}".format(t), dist.Normal(z, 1.0), obs=DATA[t : t + 2])

    def guide():
        with pyro.plate("sequences", 2):
            for t in pyro.markov(range(2)):
                pyro.sample("z_{}".format(t), dist.Bernoulli(logits=pyro.param("q_{}".format(t), torch.zeros(2))))

    return model, guide


# ----------------------------------------------------------------------
# discrete on discrete, continuous and discrete
# ----------------------------------------------------------------------
@structure(kinds=frozenset([BERNOULLI]), discrete_dependency=True, discrete_sites=2, bernoulli_parent=True)
def _bernoulli_on_bernoulli():
    def model():
        a = pyro.sample("a", dist.Bernoulli(0.3))
        b = pyro.sample("b", dist.Bernoulli(0.2 + 0.6 * a))
        pyro.sample("x", dist.Normal(a + b, 1.0), obs=torch.tensor(1.2))

    def guide():
        a = pyro.sample("a", dist.Bernoulli(logits=pyro.param("qa", torch.tensor(0.1))))
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("qb", torch.tensor([-0.5, 0.7]))[a.long()]))

    return model, guide


@structure(kinds=frozenset([BERNOULLI, CATEGORICAL]), discrete_dependency=True, discrete_sites=3, bernoulli_parent=True)
def _chain_of_three():
    def model():
        a = pyro.sample("a", dist.Bernoulli(0.5))
        b = pyro.sample("b", dist.Categorical(logits=torch.zeros(3)))
        c = pyro.sample("c", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(a + b + c, 1.0), obs=torch.tensor(2.0))

    def guide():
        a = pyro.sample("a", dist.Bernoulli(logits=pyro.param("qa", torch.tensor(0.0))))
        b = pyro.sample("b", dist.Categorical(logits=pyro.param("qb", torch.zeros(2, 3))[a.long()]))
        pyro.sample("c", dist.Bernoulli(logits=pyro.param("qc", torch.zeros(3))[b]))

    return model, guide


@structure(kinds=frozenset([BERNOULLI]), discrete_sites=2)
def _dependency_in_model_only():
    def model():
        a = pyro.sample("a", dist.Bernoulli(0.5))
        b = pyro.sample("b", dist.Bernoulli(0.2 + 0.6 * a))
        pyro.sample("x", dist.Normal(a - b, 1.0), obs=torch.tensor(0.3))

    def guide():
        pyro.sample("a", dist.Bernoulli(logits=pyro.param("qa", torch.tensor(0.1))))
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("qb", torch.tensor(-0.2))))

    return model, guide


@structure(kinds=frozenset([BERNOULLI, CONTINUOUS]), bernoulli_parent=True)
def _discrete_depends_on_continuous():
    def model():
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(logits=w))
            pyro.sample("x", dist.Normal(z + 0.5 * w, 1.0), obs=DATA[:3])

    def guide():
        w = pyro.sample("w", dist.Normal(pyro.param("m", torch.tensor(0.2)), 0.7))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("a", torch.zeros(3)) + 0.5 * w))

    return model, guide


@structure(kinds=frozenset([BERNOULLI, CONTINUOUS]), discrete_dependency=True)
def _continuous_depends_on_discrete():
    def model():
        y = pyro.sample("y", dist.Bernoulli(0.5))
        pyro.sample("z", dist.Normal(y, 1.0))

    def guide():
        y = pyro.sample("y", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.0))))
        pyro.sample("z", dist.Normal(2.0 * y, 1.0))

    return model, guide


@structure(kinds=frozenset([CATEGORICAL, CONTINUOUS]), discrete_dependency=True)
def _continuous_depends_on_two_category_site():
    def model():
        y = pyro.sample("y", dist.Categorical(logits=torch.zeros(2)))
        pyro.sample("z", dist.Normal(y.to(torch.get_default_dtype()), 1.0))

    def guide():
        logits = torch.stack([torch.zeros(()), pyro.param("q", torch.tensor(0.0))])
        y = pyro.sample("y", dist.Categorical(logits=logits))
        pyro.sample("z", dist.Normal(2.0 * y.to(torch.get_default_dtype()), 1.0))

    return model, guide


@structure(kinds=frozenset([BERNOULLI, CONTINUOUS]))
def _independent_continuous_and_discrete():
    def model():
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(w + z, 1.0), obs=torch.tensor(0.9))

    def guide():
        pyro.sample("w", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.0))))

    return model, guide


@structure(kinds=frozenset([CONTINUOUS, CATEGORICAL]))
def _dirichlet_and_categorical():
    def model():
        p = pyro.sample("p", dist.Dirichlet(torch.ones(3)))
        with pyro.plate("data", 4):
            pyro.sample("z", dist.Categorical(p))

    def guide():
        pyro.sample("p", dist.Dirichlet(pyro.param("alpha", torch.ones(3) * 2, constraint=constraints.positive)))
        with pyro.plate("data", 4):
            pyro.sample("z", dist.Categorical(logits=pyro.param("q", torch.zeros(4, 3))))

    return model, guide


@structure(kinds=frozenset([CONTINUOUS]))
def _continuous_only():
    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 4):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=DATA[:4])

    def guide():
        pyro.sample("loc", dist.Normal(pyro.param("m", torch.tensor(0.0)), pyro.param("s", torch.tensor(1.0))))

    return model, guide


@structure(kinds=frozenset([CONTINUOUS]))
def _continuous_to_event_in_plate():
    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=DATA[:3])

    def guide():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(pyro.param("m", torch.zeros(3, 2)), 1.0).to_event(1))

    return model, guide


@structure(kinds=frozenset([OTHER]))
def _poisson_site():
    def model():
        n = pyro.sample("n", dist.Poisson(3.0))
        pyro.sample("x", dist.Normal(n, 1.0), obs=torch.tensor(2.0))

    def guide():
        pyro.sample("n", dist.Poisson(pyro.param("rate", torch.tensor(2.0), constraint=constraints.positive)))

    return model, guide


@structure(kinds=frozenset([OTHER]))
def _binomial_site():
    def model():
        n = pyro.sample("n", dist.Binomial(4, 0.5))
        pyro.sample("x", dist.Normal(n, 1.0), obs=torch.tensor(2.0))

    def guide():
        p = pyro.param("p", torch.tensor(0.4), constraint=constraints.unit_interval)
        pyro.sample("n", dist.Binomial(4, p))

    return model, guide


@structure(kinds=frozenset([BERNOULLI]))
def _observed_discrete_site():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("c", dist.Categorical(logits=torch.stack([z, 1 - z, z * 0]).T), obs=torch.tensor(1))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.0))))

    return model, guide


# ----------------------------------------------------------------------
# empty, param-only, missing sites
# ----------------------------------------------------------------------
@structure(discrete_sites=0)
def _empty():
    def model():
        pass

    def guide():
        pass

    return model, guide


@structure(discrete_sites=0)
def _param_only():
    def model():
        p = pyro.param("p", torch.tensor(0.5))
        pyro.factor("f", -(p**2))

    def guide():
        pass

    return model, guide


@structure(discrete_sites=0)
def _observed_only():
    def model():
        mu = pyro.param("mu", torch.tensor(0.0))
        with pyro.plate("data", 4):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=DATA[:4])

    def guide():
        pass

    return model, guide


@structure(expect_error={"*": r"model sample site 'w' is latent"})
def _latent_missing_from_guide():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.3))
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z + w, 1.0), obs=torch.tensor(0.5))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.0))))

    return model, guide


# ----------------------------------------------------------------------
# AutoGuides
# ----------------------------------------------------------------------
def _continuous_model():
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", 4):
        pyro.sample("x", dist.Normal(loc, scale), obs=DATA[:4])


@structure(kinds=frozenset([CONTINUOUS]))
def _auto_normal():
    return _continuous_model, AutoNormal(_continuous_model)


@structure(kinds=frozenset([CONTINUOUS]))
def _auto_delta():
    return _continuous_model, AutoDelta(_continuous_model)


@structure(kinds=frozenset([CONTINUOUS]))
def _auto_diagonal_normal():
    return _continuous_model, AutoDiagonalNormal(_continuous_model)


@structure(kinds=frozenset([CONTINUOUS]))
def _auto_normal_messenger():
    return _continuous_model, AutoNormalMessenger(_continuous_model)


def _mixed_model():
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    z = pyro.sample("z", dist.Bernoulli(torch.full((4,), 0.5)).to_event(1))
    with pyro.plate("data", 4):
        pyro.sample("x", dist.Normal(loc + z, 1.0), obs=DATA[:4])


def _discrete_part():
    # no plate: AutoGuideList's other part creates the model's plates
    pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(4))).to_event(1))


# the model adds a .to_event vector to a plate-batched value: vectorized particles, enumeration and a
# replay of several rows (IndeCateR's) land on a dim left of the plates (ARSM/DisARM replay a binary site in
# one row: harmless)
@structure(
    kinds=frozenset([CONTINUOUS, BERNOULLI]),
    particles_broadcast=False,
    expect_error={
        "expect": "does not vary along batch dim|along batch dims left of the plates",
        "indecater": "does not vary along batch dim|along batch dims left of the plates",
        "rebar": "does not vary along batch dim|along batch dims left of the plates",
    },
)
def _auto_guide_list_with_a_discrete_part():
    guide = AutoGuideList(_mixed_model)
    guide.append(AutoNormal(poutine.block(_mixed_model, hide=["z"])))
    guide.append(_discrete_part)
    return _mixed_model, guide


# ----------------------------------------------------------------------
# infer annotations
# ----------------------------------------------------------------------
@structure(kinds=frozenset([CATEGORICAL]), infer_warning="enumerate")
def _marked_for_enumeration():
    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(z, 1.0), obs=DATA[:3])

    def guide():
        with pyro.plate("data", 3):
            pyro.sample(
                "z", dist.Categorical(logits=pyro.param("q", torch.zeros(3, 3))), infer={"enumerate": "parallel"}
            )

    return model, guide


@structure(kinds=frozenset([BERNOULLI]), infer_warning="baseline")
def _tracegraph_baseline_options():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.3))

    def guide():
        q = pyro.param("q", torch.tensor(0.0))
        pyro.sample("z", dist.Bernoulli(logits=q), infer={"baseline": {"use_decaying_avg_baseline": True}})

    return model, guide


@structure(kinds=frozenset([BERNOULLI, CONTINUOUS]), bernoulli_parent=True)
def _auxiliary_guide_site():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.3))

    def guide():
        u = pyro.sample("u", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0), infer={"is_auxiliary": True})
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.0)) + 0.1 * u))

    return model, guide


@structure(kinds=frozenset([BERNOULLI]))
def _per_site_score_baseline():
    def model():
        a = pyro.sample("a", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(a, 1.0), obs=torch.tensor(1.0))

    def guide():
        p = pyro.param("p", torch.tensor(0.4), constraint=constraints.unit_interval)
        pyro.sample("a", dist.Bernoulli(p), infer={"score_baseline": "moving_average"})

    return model, guide


# ----------------------------------------------------------------------
# models that do not broadcast over extra batch dims
# ----------------------------------------------------------------------
@structure(kinds=frozenset([CATEGORICAL, CONTINUOUS]), particles_broadcast=False)
def _gmm_tutorial_indexing():
    # Pyro's GMM tutorial indexes the component locations with the assignment
    data = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])

    def model():
        weights = pyro.param("weights", torch.tensor([0.5, 0.5]), constraint=constraints.simplex)
        locs = pyro.sample("locs", dist.Normal(torch.tensor([0.0, 10.0]), 5.0).to_event(1))
        with pyro.plate("data", len(data)):
            assignment = pyro.sample("assignment", dist.Categorical(weights))
            pyro.sample("obs", dist.Normal(locs[assignment], 1.0), obs=data)

    def guide():
        pyro.sample("locs", dist.Normal(pyro.param("m", torch.tensor([1.0, 9.0])), 1.0).to_event(1))
        with pyro.plate("data", len(data)):
            pyro.sample("assignment", dist.Categorical(logits=pyro.param("q", torch.zeros(len(data), 2))))

    return model, guide


@structure(kinds=frozenset([ONEHOT]), particles_broadcast=False, extra_dims_broadcast=False)
def _network_that_flattens_its_input():
    nets = {}

    def model(x):
        net = nets.setdefault(torch.get_default_dtype(), torch.nn.Linear(6, 2))
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(2, 3)).to_event(1))
            pyro.module("net", net)
            pyro.sample("x", dist.Normal(net(z.reshape(3, 6)), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.OneHotCategorical(logits=pyro.param("q", torch.zeros(3, 2, 3))).to_event(1))

    return model, guide, torch.zeros(3, 2)


@structure(kinds=frozenset([CATEGORICAL]), particles_broadcast=False, extra_dims_broadcast=False)
def _model_that_squeezes():
    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(z.reshape(3).to(torch.get_default_dtype()), 1.0), obs=DATA[:3])

    def guide():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Categorical(logits=pyro.param("q", torch.zeros(3, 3))))

    return model, guide


@structure(kinds=frozenset([BERNOULLI]), enumerable=False, per_element=False)
def _site_outside_plate_depends_on_local():
    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0), obs=torch.tensor(1.0))

    def guide():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(3))))

    return model, guide


@structure(kinds=frozenset([ONEHOT]), exact=False)
def _twenty_by_ten_site():
    def model():
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(20, 10)).to_event(1))
            pyro.sample("x", dist.Normal(z[..., 0].sum(-1), 1.0), obs=DATA[:2])

    def guide():
        with pyro.plate("data", 2):
            pyro.sample("z", dist.OneHotCategorical(logits=pyro.param("q", torch.zeros(2, 20, 10))).to_event(1))

    return model, guide


@structure(
    kinds=frozenset([BERNOULLI]), extra_dims_broadcast=False, enumerable=False, mixes_particles=True, per_element=False
)
def _model_that_reduces_over_all_dims():
    # a binary site's replay has one row, so only the provenance check can see this
    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(z.sum(), 1.0), obs=torch.tensor(1.0))

    def guide():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(3))))

    return model, guide
