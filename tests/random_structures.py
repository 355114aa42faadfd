# SPDX-License-Identifier: Apache-2.0
"""
Random model/guide pairs with an exact reference, and a harness that
classifies an estimator on them.

* :func:`generate` draws a small model/guide pair from a seed: one to three
  discrete guide sites (Bernoulli, Categorical, OneHotCategorical, some as
  ``.to_event(1)`` pairs), global or in plates (one plate, nested plates, plates
  side by side, sequential plates on the same dim), subsampling, masks and
  scales, guide sites depending on earlier ones (elementwise, from a global
  site into a plate, out of a plate through a reduction, across sibling
  plates), priors depending on latents, observations and ``pyro.factor`` terms
  depending on latents elementwise or through reductions over their plates.
  Each :class:`Structure` says what it holds in ``flags``.
* :func:`exact` computes the exact ``-ELBO`` and its gradient by looping over
  the joint support of every latent element of the guide, with plain
  ``poutine.condition`` / ``poutine.trace`` (no estimator of this package and
  no ``TraceEnum_ELBO``). :func:`iwae_reference` does the same for the
  multi-sample bound of a VIMCO-style estimator.
* :func:`classify` draws an estimator's gradient many times and says
  ``"works"``, ``"clear error"``, ``"unclear error"`` or ``"wrong"``.
* :func:`negative_control` is an estimator whose gradient is a correct one's
  times 1.1, which :func:`classify` must call ``"wrong"``.

Used by ``tests/test_random_structures.py`` and ``benchmarks/random_structures.py``.
"""

import contextlib
import itertools
import math
import random
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.ops.indexing import Vindex
from pyro.poutine.subsample_messenger import _Subsample

__all__ = [
    "OUTCOMES",
    "Outcome",
    "Structure",
    "classify",
    "enum_applicable",
    "exact",
    "generate",
    "iwae_reference",
    "negative_control",
]

BERNOULLI, CATEGORICAL, ONEHOT = "bernoulli", "categorical", "onehot"
CARD = {BERNOULLI: 2, CATEGORICAL: 3, ONEHOT: 3}
EVENT = 2  # latents held by a .to_event(1) site
MAX_SUPPORT = 512

WORKS, CLEAR, UNCLEAR, WRONG = "works", "clear error", "unclear error", "wrong"
OUTCOMES = (WORKS, CLEAR, UNCLEAR, WRONG)


# ----------------------------------------------------------------------
# the specification of a structure
# ----------------------------------------------------------------------
@dataclass(frozen=True)
class PlateSpec:
    name: str
    size: int
    dim: int


@dataclass
class Dep:
    """A dependency on latent ``src``: ``mode`` "keep" (sums over ``src``'s plates the target is not in,
    keepdim), "all" (``.sum()`` over every dim) or "nokeep" (``.sum(-1)``)."""

    src: str
    weight: torch.Tensor
    param: bool = False
    mode: str = "keep"
    table: Optional[torch.Tensor] = None
    table_param: bool = False


@dataclass
class LatentSpec:
    name: str
    kind: str
    event: bool
    loc: tuple
    q_init: torch.Tensor
    probs_param: bool = False
    guide_deps: list = field(default_factory=list)
    prior_init: torch.Tensor = None
    prior_param: bool = False
    prior_deps: list = field(default_factory=list)
    scale: Optional[float] = None  # poutine.scale around the site in model and guide
    prior_mask: Optional[torch.Tensor] = None  # poutine.mask around the model's site


@dataclass
class TermSpec:
    name: str
    kind: str  # "normal", "bernoulli" or "factor"
    loc: tuple
    deps: list
    bias_init: torch.Tensor
    bias_param: bool
    data: torch.Tensor
    sigma: float = 1.0
    mask_kind: Optional[str] = None  # "poutine" or "dist"
    mask: Optional[torch.Tensor] = None
    scale: Optional[float] = None


@dataclass
class Spec:
    layout: str
    plates: dict
    latents: list
    terms: list
    subsample_plate: Optional[str] = None
    subsample_size: Optional[int] = None

    def latent(self, name):
        return next(lat for lat in self.latents if lat.name == name)

    def loc_shape(self, loc):
        if not loc:
            return ()
        shape = [1] * max(-self.plates[p].dim for p in loc)
        for p in loc:
            shape[self.plates[p].dim] = self.plates[p].size
        return tuple(shape)


@dataclass
class Structure:
    """
    A generated model/guide pair.

    :ivar str name: ``"random_<seed>"``.
    :ivar model: the model, called with ``*args``.
    :ivar guide: the guide.
    :ivar tuple args: their arguments (the subsample size where a plate is subsampled).
    :ivar int max_plate_nesting: the plates' nesting.
    :ivar dict flags: ``{flag: True}`` for every feature it holds (for reports per pattern).
    :ivar bool draws_safe: it broadcasts over an extra outermost plate of
        independent copies (it never reduces over dims left of its plates).
    :ivar tuple reference_args: arguments of the exact reference (no subsampling), or ``None``.
    :ivar spec: the specification it was built from.
    :ivar int support: the size of the guide's joint support.
    """

    name: str
    model: Callable
    guide: Callable
    args: tuple
    max_plate_nesting: int
    flags: dict
    draws_safe: bool = True
    reference_args: Optional[tuple] = None
    spec: Spec = None
    support: int = 0

    @property
    def exact_args(self):
        return self.args if self.reference_args is None else self.reference_args

    def describe(self):
        """A readable summary of the specification."""
        s = self.spec
        lines = [
            "{} (layout {}, plates {}, max_plate_nesting {}, support {}{})".format(
                self.name,
                s.layout,
                ", ".join("{}[{}]@{}".format(p.name, p.size, p.dim) for p in s.plates.values()) or "none",
                self.max_plate_nesting,
                self.support,
                ", subsample {} of '{}'".format(s.subsample_size, s.subsample_plate) if s.subsample_plate else "",
            )
        ]

        def deps(ds):
            return ", ".join("{}{}".format(d.src, "" if d.mode == "keep" else "/" + d.mode) for d in ds)

        for lat in s.latents:
            lines.append(
                "  latent {} {}{} in {}; guide deps [{}]; prior deps [{}]{}{}{}".format(
                    lat.name,
                    lat.kind,
                    ".to_event(1)" if lat.event else "",
                    lat.loc or "()",
                    deps(lat.guide_deps),
                    deps(lat.prior_deps),
                    "; probs param" if lat.probs_param else "",
                    "; scale {}".format(lat.scale) if lat.scale else "",
                    "; masked prior" if lat.prior_mask is not None else "",
                )
            )
        for t in s.terms:
            lines.append(
                "  term {} {} in {}; deps [{}]{}{}".format(
                    t.name,
                    t.kind,
                    t.loc or "()",
                    deps(t.deps),
                    "; mask ({})".format(t.mask_kind) if t.mask_kind else "",
                    "; scale {}".format(t.scale) if t.scale else "",
                )
            )
        lines.append("  flags: " + ", ".join(sorted(self.flags)))
        return "\n".join(lines)


# ----------------------------------------------------------------------
# running a specification (the model and the guide)
# ----------------------------------------------------------------------
def _t(x):
    return x.to(torch.get_default_dtype())


def _open_plates(spec, subsample_size):
    plates, idx = {}, {}
    for name, p in spec.plates.items():
        ss = subsample_size if name == spec.subsample_plate else None
        plates[name] = pyro.plate(name, p.size, subsample_size=ss, dim=p.dim)
        if ss is not None:
            with plates[name] as i:
                idx[name] = i
    return plates, idx


@contextlib.contextmanager
def _within(plates, loc, scale=None, mask=None):
    with contextlib.ExitStack() as stack:
        for p in loc:
            stack.enter_context(plates[p])
        if scale is not None:
            stack.enter_context(poutine.scale(scale=scale))
        if mask is not None:
            stack.enter_context(poutine.mask(mask=mask))
        yield


def _subsampled(spec, x, loc, idx, trailing=0):
    # index a tensor laid out over ``loc``'s plates (then ``trailing`` dims) by the subsample
    for p in loc:
        if p in idx:
            x = x.index_select(spec.plates[p].dim - trailing, idx[p])
    return x


def _trailing(lat):
    return int(lat.event) + int(lat.kind != BERNOULLI)


def _feature(z, lat, table=None):
    """One number per element of the latent's plates (a .to_event site's latents summed)."""
    if lat.kind == BERNOULLI:
        f = z if table is None else Vindex(_t(table))[..., z.long()]
    elif lat.kind == CATEGORICAL:
        f = _t(z) if table is None else Vindex(_t(table))[..., z]
    else:
        weights = torch.arange(CARD[ONEHOT], dtype=z.dtype) if table is None else _t(table)
        f = (z * weights).sum(-1)
    if lat.event:
        f = f.sum(-1)
    return f


def _reduce(spec, f, src_loc, tgt_loc, mode):
    if mode == "all":
        return f.sum()
    if mode == "nokeep":
        return f.sum(-1)
    for p in src_loc:
        if p not in tgt_loc:
            f = f.sum(spec.plates[p].dim, keepdim=True)
    return f


def _into_logits(f, lat):
    # a per-element feature, aligned with the latent's logits (event and category dims)
    return f.reshape(f.shape + (1,) * _trailing(lat))


def _distribution(lat, logits=None, probs=None):
    if lat.kind == BERNOULLI:
        d = dist.Bernoulli(logits=logits) if probs is None else dist.Bernoulli(probs=probs)
    elif lat.kind == CATEGORICAL:
        d = dist.Categorical(logits=logits)
    else:
        d = dist.OneHotCategorical(logits=logits)
    return d.to_event(1) if lat.event else d


def _value(tensor, name, param):
    return pyro.param(name, _t(tensor).clone()) if param else _t(tensor)


def _make_guide(spec):
    def guide(subsample_size=None):
        plates, idx = _open_plates(spec, subsample_size)
        values = {}
        for lat in spec.latents:
            n = _trailing(lat)
            if lat.probs_param:
                probs = pyro.param("q_" + lat.name, _t(lat.q_init).sigmoid(), constraint=dist.constraints.unit_interval)
                d = _distribution(lat, probs=_subsampled(spec, probs, lat.loc, idx, n))
            else:
                logits = _subsampled(spec, pyro.param("q_" + lat.name, _t(lat.q_init).clone()), lat.loc, idx, n)
                for dep in lat.guide_deps:
                    src = spec.latent(dep.src)
                    w = pyro.param("w_{}_{}".format(lat.name, dep.src), _t(dep.weight).clone())
                    f = _reduce(spec, _feature(values[dep.src], src), src.loc, lat.loc, "keep")
                    logits = logits + _into_logits(f, lat) * w
                d = _distribution(lat, logits=logits)
            with _within(plates, lat.loc, scale=lat.scale):
                values[lat.name] = pyro.sample(lat.name, d)
        return values

    return guide


def _term_mean(spec, values, owner, deps, loc):
    total = None
    for dep in deps:
        src = spec.latent(dep.src)
        table = None
        if dep.table is not None:
            table = _value(dep.table, "table_{}_{}".format(owner, dep.src), dep.table_param)
        coef = _value(dep.weight, "c_{}_{}".format(owner, dep.src), dep.param)
        f = coef * _reduce(spec, _feature(values[dep.src], src, table), src.loc, loc, dep.mode)
        total = f if total is None else total + f
    return total


def _make_model(spec):
    def model(subsample_size=None):
        plates, idx = _open_plates(spec, subsample_size)
        values = {}
        for lat in spec.latents:
            logits = _value(lat.prior_init, "prior_" + lat.name, lat.prior_param)
            for dep in lat.prior_deps:
                src = spec.latent(dep.src)
                coef = _value(dep.weight, "pw_{}_{}".format(lat.name, dep.src), dep.param)
                f = _reduce(spec, _feature(values[dep.src], src), src.loc, lat.loc, dep.mode)
                logits = logits + _into_logits(f, lat) * coef
            mask = None if lat.prior_mask is None else _subsampled(spec, lat.prior_mask, lat.loc, idx)
            with _within(plates, lat.loc, scale=lat.scale, mask=mask):
                values[lat.name] = pyro.sample(lat.name, _distribution(lat, logits=logits))
        for term in spec.terms:
            mean = _value(term.bias_init, "bias_" + term.name, term.bias_param)
            extra = _term_mean(spec, values, term.name, term.deps, term.loc)
            if extra is not None:
                mean = mean + extra
            data = _subsampled(spec, _t(term.data), term.loc, idx)
            mask = None if term.mask is None else _subsampled(spec, term.mask, term.loc, idx)
            with _within(plates, term.loc, scale=term.scale, mask=mask if term.mask_kind == "poutine" else None):
                if term.kind == "factor":
                    pyro.factor(term.name, -0.5 * (mean - data) ** 2)
                    continue
                if term.kind == "normal":
                    d = dist.Normal(mean, term.sigma)
                else:
                    d = dist.Bernoulli(logits=mean)
                if term.mask_kind == "dist":
                    d = d.mask(mask)
                pyro.sample(term.name, d, obs=data)
        return values

    return model


# ----------------------------------------------------------------------
# the generator
# ----------------------------------------------------------------------
LAYOUTS = ("none", "one", "nested", "siblings", "sequential")


def _dep_type(spec, src_loc, tgt_loc):
    src, tgt = set(src_loc), set(tgt_loc)
    if src <= tgt:
        if src == tgt:
            return "elementwise"
        return "global_into_plate" if not src else "into_nested"
    if tgt < src:
        return "plate_out"
    return "sequential" if spec.layout == "sequential" else "sibling"


def _edges(spec):
    """``(source latent, target loc, mode, group)`` of every dependency."""
    for lat in spec.latents:
        for d in lat.guide_deps:
            yield d.src, lat.loc, d.mode, "gdep"
        for d in lat.prior_deps:
            yield d.src, lat.loc, d.mode, "prior"
    for t in spec.terms:
        for d in t.deps:
            yield d.src, t.loc, d.mode, "term"


def _support(spec):
    total = 1
    for lat in spec.latents:
        n = (EVENT if lat.event else 1) * math.prod(spec.plates[p].size for p in lat.loc)
        total *= CARD[lat.kind] ** n
    return total


def generate(seed):
    """A random :class:`Structure`, reproducible from ``seed``."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(10007 * seed + 1)

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    def away_from_zero(*shape):
        sign = torch.where(torch.rand(shape, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0).to(torch.float64)
        return sign * (0.4 + torch.rand(shape, generator=gen, dtype=torch.float64))

    def rand_mask(shape):
        m = torch.rand(shape, generator=gen, dtype=torch.float64) < 0.65
        if not m.any():
            m.view(-1)[0] = True
        if m.all() and m.numel() > 1:
            m.view(-1)[-1] = False
        return m

    # plates and latent sites, redrawn until the joint support is small enough
    for _ in range(1000):
        layout = rng.choices(LAYOUTS, weights=[0.06, 0.24, 0.22, 0.24, 0.24])[0]
        size = lambda: rng.choice([2, 2, 3])  # noqa: E731
        if layout == "none":
            plates, locs = {}, [()]
        elif layout == "one":
            plates = {"a": PlateSpec("a", size(), -1)}
            locs = [(), ("a",)]
        elif layout == "nested":
            da = rng.choice([-1, -2])
            plates = {"a": PlateSpec("a", size(), da), "b": PlateSpec("b", size(), -3 - da)}
            locs = [(), ("a",), ("a", "b")]
        elif layout == "siblings":
            da = rng.choice([-1, -2])
            plates = {"a": PlateSpec("a", size(), da), "b": PlateSpec("b", size(), -3 - da)}
            locs = [(), ("a",), ("b",)]
        else:
            plates = {"a": PlateSpec("a", size(), -1), "c": PlateSpec("c", size(), -1)}
            locs = [(), ("a",), ("c",)]
        spec = Spec(layout, plates, [], [])
        n_lat = rng.choices([1, 2, 3], weights=[0.3, 0.4, 0.3])[0]
        for i in range(n_lat):
            kind = rng.choice([BERNOULLI, CATEGORICAL, ONEHOT])
            event = rng.random() < 0.2
            if i == 0:
                loc = rng.choice(locs[1:] + [()]) if len(locs) > 1 else ()
            else:
                fresh = [c for c in locs if c not in [lat.loc for lat in spec.latents]]
                fresh_local = [c for c in fresh if c]
                if fresh_local and layout in ("siblings", "sequential") and rng.random() < 0.4:
                    loc = rng.choice(fresh_local)
                else:
                    loc = rng.choice(fresh) if fresh and rng.random() < 0.4 else rng.choice(locs)
            spec.latents.append(LatentSpec("z{}".format(i), kind, event, loc, None))
        if _support(spec) <= MAX_SUPPORT and (layout == "none" or any(lat.loc for lat in spec.latents)):
            break
    else:  # pragma: no cover
        raise RuntimeError("no structure small enough for seed {}".format(seed))

    def logits_shape(lat, loc=None):
        loc = lat.loc if loc is None else loc
        return (
            spec.loc_shape(loc) + ((EVENT,) if lat.event else ()) + ((CARD[lat.kind],) if lat.kind != BERNOULLI else ())
        )

    def weight_shape(lat):
        return () if lat.kind == BERNOULLI else (CARD[lat.kind],)

    # guide parameters and dependencies
    for i, lat in enumerate(spec.latents):
        lat.q_init = randn(*logits_shape(lat)) * 0.8 + 0.2
        if i > 0 and rng.random() < 0.5:
            srcs = rng.sample(range(i), k=1 if i == 1 or rng.random() < 0.7 else 2)
            elsewhere = [j for j in range(i) if spec.latents[j].loc != lat.loc]
            if elsewhere and len(srcs) == 1 and rng.random() < 0.6:
                srcs = [rng.choice(elsewhere)]
            lat.guide_deps = [Dep("z{}".format(j), away_from_zero(*weight_shape(lat)), param=True) for j in srcs]
        lat.probs_param = lat.kind == BERNOULLI and not lat.guide_deps and rng.random() < 0.2
        # the model's prior: fixed or a parameter, unbatched (the plates broadcast it)
        prior_shape = ((EVENT,) if lat.event else ()) + weight_shape(lat)
        lat.prior_init = randn(*prior_shape) * 0.6
        lat.prior_param = rng.random() < 0.35
        if i > 0 and rng.random() < 0.3:
            j = rng.randrange(i)
            lat.prior_deps = [Dep("z{}".format(j), away_from_zero(*weight_shape(lat)), param=rng.random() < 0.5)]
        if rng.random() < 0.1:
            lat.scale = rng.choice([0.5, 2.0])
        if lat.loc and rng.random() < 0.08:
            lat.prior_mask = rand_mask(spec.loc_shape(lat.loc))

    # observations and factors
    used = {d.src for lat in spec.latents for d in lat.prior_deps}
    n_terms = rng.choices([1, 2, 3], weights=[0.35, 0.4, 0.25])[0]
    for k in range(n_terms):
        kind = rng.choices(["normal", "bernoulli", "factor"], weights=[0.55, 0.25, 0.2])[0]
        if rng.random() < 0.5:
            loc = rng.choice(spec.latents).loc
        else:
            loc = rng.choice(locs)
        unused = [lat for lat in spec.latents if lat.name not in used]
        pool = unused if unused and rng.random() < 0.7 else spec.latents
        srcs = rng.sample(pool, k=min(len(pool), rng.choice([1, 1, 2])))
        deps = []
        for src in srcs:
            table = None
            if src.kind != ONEHOT or rng.random() < 0.7:
                table = randn(CARD[src.kind]) if rng.random() < 0.6 else None
            deps.append(
                Dep(src.name, away_from_zero(), param=rng.random() < 0.3, table=table, table_param=rng.random() < 0.6)
            )
            used.add(src.name)
        shape = spec.loc_shape(loc)
        data = (
            (torch.rand(shape, generator=gen, dtype=torch.float64) < 0.5).double()
            if kind == "bernoulli"
            else randn(*shape) * 1.5
        )
        term = TermSpec("x{}".format(k), kind, loc, deps, randn() * 0.5, rng.random() < 0.5, data)
        term.sigma = 0.6 + 0.6 * rng.random()
        if loc and rng.random() < 0.3:
            term.mask_kind = "poutine" if rng.random() < 0.5 or kind == "factor" else "dist"
            term.mask = rand_mask(shape)
        if rng.random() < 0.15:
            term.scale = rng.choice([0.5, 2.0, 3.0])
        spec.terms.append(term)
    # most latents feed some term
    for lat in spec.latents:
        if lat.name not in used and rng.random() < 0.85:
            term = rng.choice(spec.terms)
            term.deps.append(
                Dep(lat.name, away_from_zero(), table=randn(CARD[lat.kind]) if lat.kind != BERNOULLI else None)
            )
            used.add(lat.name)
    # at least one model parameter
    if not any(lat.prior_param for lat in spec.latents) and not any(
        t.bias_param or any(d.param or (d.table is not None and d.table_param) for d in t.deps) for t in spec.terms
    ):
        spec.terms[0].bias_param = True

    # rarely: reductions that do not broadcast over extra leading dims
    draws_safe = True
    if rng.random() < 0.05:
        t = rng.choice(spec.terms)
        if t.deps:
            t.deps[0].mode = "all"
            draws_safe = False
    elif rng.random() < 0.06:
        srcs = [lat for lat in spec.latents if len(lat.loc) == 1 and spec.plates[lat.loc[0]].dim == -1]
        if srcs:
            src = rng.choice(srcs)
            shape = ()
            spec.terms.append(
                TermSpec(
                    "x{}".format(len(spec.terms)),
                    "normal",
                    (),
                    [Dep(src.name, away_from_zero(), mode="nokeep")],
                    randn() * 0.5,
                    False,
                    randn(*shape),
                    sigma=0.8,
                )
            )
            draws_safe = False

    # subsampling: a plate none of whose latents reaches a term outside it (or through a reduction over it)
    if spec.plates and rng.random() < 0.3:
        candidates = []
        for p in spec.plates:
            ok = any(p in lat.loc for lat in spec.latents)
            for src, tgt_loc, mode, _ in _edges(spec):
                if p in spec.latent(src).loc and (mode != "keep" or p not in tgt_loc):
                    ok = False
            if ok:
                candidates.append(p)
        if candidates:
            spec.subsample_plate = rng.choice(candidates)
            spec.subsample_size = spec.plates[spec.subsample_plate].size - 1

    flags = _flags(spec, draws_safe)
    mpn = max([-p.dim for p in spec.plates.values()] + [0])
    args = (spec.subsample_size,) if spec.subsample_plate else ()
    return Structure(
        name="random_{}".format(seed),
        model=_make_model(spec),
        guide=_make_guide(spec),
        args=args,
        max_plate_nesting=mpn,
        flags=flags,
        draws_safe=draws_safe,
        reference_args=(None,) if spec.subsample_plate else None,
        spec=spec,
        support=_support(spec),
    )


def _flags(spec, draws_safe):
    f = {"layout_" + spec.layout: True}
    for lat in spec.latents:
        f["kind_" + lat.kind] = True
        if lat.event:
            f["to_event"] = True
        f["global_latent" if not lat.loc else "local_latent"] = True
        if lat.probs_param:
            f["probs_param"] = True
        if lat.scale:
            f["scaled_latent"] = True
        if lat.prior_mask is not None:
            f["masked_latent"] = True
        if lat.prior_param:
            f["model_params"] = True
        for d in lat.guide_deps:
            f["gdep_" + _dep_type(spec, spec.latent(d.src).loc, lat.loc)] = True
            f["guide_dependency"] = True
        for d in lat.prior_deps:
            f["prior_dep_" + _dep_type(spec, spec.latent(d.src).loc, lat.loc)] = True
    if len(spec.latents) > 1:
        f["multiple_sites"] = True
    for t in spec.terms:
        f[t.kind + "_term"] = True
        if t.mask_kind:
            f[t.mask_kind + "_mask"] = True
        if t.scale:
            f["poutine_scale"] = True
        if t.bias_param:
            f["model_params"] = True
        for d in t.deps:
            if d.param or (d.table is not None and d.table_param):
                f["model_params"] = True
            if d.mode == "all":
                f["reduces_all_dims"] = True
            elif d.mode == "nokeep":
                f["reduces_without_keepdim"] = True
            else:
                f["term_" + _dep_type(spec, spec.latent(d.src).loc, t.loc)] = True
    if spec.subsample_plate:
        f["subsample"] = True
    if not draws_safe:
        f["not_draws_safe"] = True
    return f


def enum_applicable(structure):
    """Whether Pyro's TraceEnum_ELBO (guide enumerated in parallel) computes the same exact ELBO."""
    spec = structure.spec
    if structure.reference_args is not None or not structure.draws_safe:
        return False
    if any(lat.event for lat in spec.latents):
        return False
    for src, tgt_loc, mode, _ in _edges(spec):
        if not set(spec.latent(src).loc) <= set(tgt_loc):
            return False
    return True


# ----------------------------------------------------------------------
# exact references by enumerating the guide's joint support
# ----------------------------------------------------------------------
@contextlib.contextmanager
def float64():
    """Default dtype float64 inside, restored after."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _params(names=None):
    store = pyro.get_param_store()
    names = sorted(store.keys()) if names is None else list(names)
    return {n: store.get_param(n).unconstrained() for n in names}


def init_params(structure):
    """A fresh param store holding the structure's parameters at their initial values."""
    pyro.clear_param_store()
    with poutine.block(), torch.no_grad():
        poutine.trace(structure.guide).get_trace(*structure.exact_args)
        poutine.trace(structure.model).get_trace(*structure.exact_args)
    return _params()


def _latent_sites(trace):
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not isinstance(site["fn"], _Subsample):
            yield name, site


def _site_support(site):
    fn = site["fn"]
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    value = site["value"]
    if isinstance(fn, torch.distributions.OneHotCategorical):
        card = fn.logits.shape[-1]
        n = value.numel() // card
    elif isinstance(fn, torch.distributions.Bernoulli):
        card, n = 2, value.numel()
    elif isinstance(fn, torch.distributions.Categorical):
        card, n = fn.logits.shape[-1], value.numel()
    else:
        raise ValueError("site '{}': cannot enumerate {}".format(site["name"], type(fn).__name__))
    if card**n > 10**5:
        raise ValueError("site '{}': support {}**{} too large".format(site["name"], card, n))
    idx = torch.tensor(list(itertools.product(range(card), repeat=n)), dtype=torch.long).reshape(card**n, n)
    if isinstance(fn, torch.distributions.OneHotCategorical):
        return torch.eye(card, dtype=value.dtype)[idx].reshape((card**n,) + value.shape)
    if isinstance(fn, torch.distributions.Bernoulli):
        return idx.to(value.dtype).reshape((card**n,) + value.shape)
    return idx.reshape((card**n,) + value.shape)


def _masked_log_prob(site):
    lp = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        lp = torch.where(site["mask"], lp, lp.new_zeros(()))
    return lp


def _sample_sites(trace):
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not isinstance(site["fn"], _Subsample):
            yield name, site


def _table(structure, bound=False):
    """
    One row per joint value of the guide's latents: the guide's log-probability
    of it (unscaled, unmasked: what the values are drawn with), ``log q - log p``
    as the ELBO counts it (scaled and masked), and with ``bound``: per element
    of the bound plates, the unscaled, masked ``log p - log q`` (the multi-sample
    bound's log-weight), with the bound plates and the sites' scales.
    """
    args = structure.exact_args
    first = poutine.trace(structure.guide).get_trace(*args)
    sites = list(_latent_sites(first))
    names = [n for n, _ in sites]
    supports = [_site_support(s) for _, s in sites]
    logq, cost, logw = [], [], []
    bound_frames, scales = None, set()
    for combo in itertools.product(*[range(len(s)) for s in supports]):
        data = {n: s[c] for n, s, c in zip(names, supports, combo)}
        gtr = poutine.trace(poutine.condition(structure.guide, data=data)).get_trace(*args)
        mtr = poutine.trace(poutine.condition(structure.model, data=data)).get_trace(*args)
        logq.append(sum(gtr.nodes[n]["fn"].log_prob(gtr.nodes[n]["value"]).sum() for n in names))
        cost.append(gtr.log_prob_sum() - mtr.log_prob_sum())
        if not bound:
            continue
        if bound_frames is None:
            for trace in (gtr, mtr):
                for _, site in _sample_sites(trace):
                    frames = {(f.name, f.dim, f.size) for f in site["cond_indep_stack"] if f.vectorized}
                    bound_frames = frames if bound_frames is None else bound_frames & frames
                    scales.add(float(site["scale"]) if not torch.is_tensor(site["scale"]) else site["scale"].item())
            bound_frames = sorted(bound_frames, key=lambda f: f[1])
            ndim = max([-f[1] for f in bound_frames] + [0])
            shape = [1] * ndim
            for _, d, size in bound_frames:
                shape[d] = size
            bound_shape = tuple(shape)
        kept = {d for _, d, _ in bound_frames}
        total = torch.zeros(bound_shape)
        for trace, sign in ((mtr, 1.0), (gtr, -1.0)):
            for _, site in _sample_sites(trace):
                lp = _masked_log_prob(site)
                summed = [d for d in range(-lp.dim(), 0) if d not in kept]
                if summed:
                    lp = lp.sum(summed, keepdim=True)
                lp = lp.reshape((1,) * max(0, len(bound_shape) - lp.dim()) + lp.shape)
                total = total + sign * lp
        logw.append(total.reshape(-1))
    result = {"logq": torch.stack(logq), "cost": torch.stack(cost)}
    if bound:
        result.update(logw=torch.stack(logw), bound_frames=bound_frames, scales=scales)
    return result


def _grads(value, params):
    gs = torch.autograd.grad(value, list(params.values()), allow_unused=True, retain_graph=True)
    return {n: (torch.zeros_like(p) if g is None else g.detach()) for (n, p), g in zip(params.items(), gs)}


def exact(structure, param_names=None):
    """
    The exact ``-ELBO`` and its gradient with respect to every parameter in
    the param store (unconstrained), by enumerating the joint support of the
    guide's latents by hand. Creates the structure's parameters if missing.
    Computed in float64 on ``structure.reference_args`` (no subsampling).

    :returns: ``(loss, {name: grad})``
    """
    with float64():
        if not pyro.get_param_store().keys():
            init_params(structure)
        params = _params(param_names)
        table = _table(structure)
        q = table["logq"].exp()
        mass = q.sum().item()
        if abs(mass - 1.0) > 1e-9:
            raise AssertionError("the enumerated guide's probabilities sum to {}".format(mass))
        loss = (q * table["cost"]).sum()
        return loss.item(), _grads(loss, params)


def iwae_reference(structure, num_particles, param_names=None, max_tuples=10**6, mc_batches=20, mc_size=20000, seed=0):
    """
    The negated ``K``-sample bound ``E[log mean_k w_k]`` of a multi-sample
    (VIMCO-style) estimator, with one bound per element of the plates that hold
    every site (none: one bound over the whole model), and its gradient.
    Exact (a sum over ``K``-tuples of the distinct log-weights of each element)
    when there are at most ``max_tuples`` tuples, else a Monte Carlo estimate
    over the enumerated table with a resampled leave-one-out baseline.

    :returns: ``(loss, loss_se, grads, grad_ses)``, or ``None`` if the sites'
        scales differ (no multi-sample bound is defined then).
    """
    K = num_particles
    with float64():
        if not pyro.get_param_store().keys():
            init_params(structure)
        params = _params(param_names)
        table = _table(structure, bound=True)
        if len(table["scales"]) > 1:
            return None
        scale = next(iter(table["scales"]))
        q, logw = table["logq"].exp(), table["logw"]
        exact_total, mc_elements = 0.0, []
        for e in range(logw.shape[1]):
            values, inverse = torch.unique(logw[:, e].detach(), return_inverse=True)
            G = len(values)
            pi = torch.zeros(G).index_add(0, inverse, q)
            first = torch.full((G,), len(inverse), dtype=torch.long).scatter_reduce(
                0, inverse, torch.arange(len(inverse)), reduce="amin"
            )
            v = logw[first, e]
            if G**K <= max_tuples:
                idx = torch.cartesian_prod(*[torch.arange(G)] * K).reshape(-1, K)
                bound = torch.logsumexp(v[idx], -1) - math.log(K)
                exact_total = exact_total + (pi[idx].prod(-1) * bound).sum()
            else:
                mc_elements.append((pi, v))
        loss = -scale * exact_total
        grads = _grads(loss, params) if torch.is_tensor(loss) else {n: torch.zeros_like(p) for n, p in params.items()}
        loss_value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
        loss_se, ses = 0.0, {n: torch.zeros_like(p) for n, p in params.items()}
        if mc_elements:
            gen = torch.Generator().manual_seed(seed)
            batch_losses, batch_grads = [], []
            for _ in range(mc_batches):
                surrogate, value = 0.0, 0.0
                for pi, v in mc_elements:
                    p = pi.detach().clamp_min(0)
                    idx = torch.multinomial(p, mc_size * K, replacement=True, generator=gen).reshape(mc_size, K)
                    fresh = torch.multinomial(p, mc_size * K, replacement=True, generator=gen).reshape(mc_size, K)
                    vk = v[idx]
                    bound = torch.logsumexp(vk, -1) - math.log(K)
                    vd = vk.detach()
                    baselines = []
                    for k in range(K):
                        swapped = vd.clone()
                        swapped[:, k] = v.detach()[fresh[:, k]]
                        baselines.append(torch.logsumexp(swapped, -1) - math.log(K))
                    baselines = torch.stack(baselines, -1)
                    score = (pi[idx].log() * (bound.detach().unsqueeze(-1) - baselines)).sum(-1)
                    surrogate = surrogate + (bound + score).mean()
                    value = value + bound.detach().mean()
                batch_losses.append(-scale * float(value))
                batch_grads.append(_grads(-scale * surrogate, params))
            losses = torch.tensor(batch_losses)
            loss_value += losses.mean().item()
            loss_se = (losses.var() / mc_batches).sqrt().item()
            for n in params:
                stack = torch.stack([g[n] for g in batch_grads])
                grads[n] = grads[n] + stack.mean(0)
                ses[n] = (stack.var(0) / mc_batches).sqrt()
        return loss_value, loss_se, grads, ses


# ----------------------------------------------------------------------
# the negative control
# ----------------------------------------------------------------------
def negative_control(**kwargs):
    """
    A score-function ELBO (``TraceScoreELBO(num_particles=4)``) whose gradient
    is scaled by 1.1: the harness must call it ``"wrong"``.
    """
    from pyro_discrete import TraceScoreELBO

    class ScaledGradientControl(TraceScoreELBO):
        def differentiable_loss(self, model, guide, *args, **kw):
            loss = super().differentiable_loss(model, guide, *args, **kw)
            return loss + 0.1 * (loss - loss.detach())

    kwargs.setdefault("num_particles", 4)
    return ScaledGradientControl(**kwargs)


negative_control.objective = "elbo"


# ----------------------------------------------------------------------
# per-site mixes
# ----------------------------------------------------------------------
#: the per-site targets: ``"auto"`` (every discrete site annotated ``"auto"``, under leave-one-out) and
#: ``"mix"`` (a method per site and an ELBO drawn at random from the seed)
PER_SITE = ("auto", "mix")

#: the methods a random mix draws from
MIX_METHODS = ("score", "loo", "moving_average", "arsm", "arm", "expect")


def per_site_target(structure, kind, seed=0):
    """
    ``(structure, factory)``: the structure with its guide annotated, and a
    factory ``f(max_plate_nesting)`` of the ELBO that runs it, for ``kind`` in
    :data:`PER_SITE`. A random mix draws each discrete site's method from
    :data:`MIX_METHODS` (by the seed and the site's name) and the ELBO's own
    from the same list; every ELBO has 4 particles.
    """
    from dataclasses import replace

    from pyro_discrete import config_estimator
    from pyro_discrete.registry import REGISTRY
    from pyro_discrete.util import CONTINUOUS, site_kind

    if kind == "auto":
        guide, own = config_estimator(structure.guide, "auto"), "loo"
    elif kind == "mix":

        def config_fn(msg):
            if msg["type"] != "sample" or msg["is_observed"] or site_kind(msg["fn"]) == CONTINUOUS:
                return {}
            return {"estimator": random.Random("{}:{}".format(seed, msg["name"])).choice(MIX_METHODS)}

        guide, own = poutine.infer_config(structure.guide, config_fn), random.Random(seed).choice(MIX_METHODS)
    else:
        raise ValueError(kind)

    def factory(max_plate_nesting):
        return REGISTRY[own].make(num_particles=4, max_plate_nesting=max_plate_nesting)

    factory.stateful = True  # a moving average may be among the methods: warm it up
    factory.description = "{} under {}".format(kind, own)
    return replace(structure, guide=guide), factory


# ----------------------------------------------------------------------
# the harness
# ----------------------------------------------------------------------
@dataclass
class Outcome:
    """
    :ivar str outcome: one of :data:`OUTCOMES`.
    :ivar float max_z: the largest z-score (relative error for exact
        estimators) over the loss and every parameter element.
    :ivar str parameter: where it was (``name[index]`` or ``"loss"``).
    :ivar str message: the exception (for errors) or a summary.
    :ivar dict details: anything else (draws, seconds, the confirming run).
    """

    outcome: str
    max_z: float = float("nan")
    parameter: str = ""
    message: str = ""
    details: dict = field(default_factory=dict)


class _Info:
    def __init__(self, estimator):
        self.entry = None if callable(estimator) and not hasattr(estimator, "make") else estimator
        if self.entry is not None:
            self.name = self.entry.name
            self.cls_name = self.entry.cls.__name__
            self.exact = self.entry.exact
            self.objective = self.entry.objective
            self.stateful = self.entry.stateful
            self._make = self.entry.make
        else:
            self.name = getattr(estimator, "__name__", type(estimator).__name__)
            self.cls_name = None
            self.exact = getattr(estimator, "exact", False)
            self.objective = getattr(estimator, "objective", "elbo")
            self.stateful = getattr(estimator, "stateful", False)
            self._make = estimator

    def make(self, max_plate_nesting):
        elbo = self._make(max_plate_nesting=max_plate_nesting)
        if self.cls_name is None:
            self.cls_name = type(elbo).__name__
        return elbo


def _is_clear(error, cls_name):
    from pyro_discrete import errors

    estimator_error = getattr(errors, "EstimatorError", None)
    legacy = cls_name is not None and str(error).startswith(cls_name + ":")
    if estimator_error is not None:
        return isinstance(error, estimator_error), legacy
    return legacy, legacy


def _where(error):
    tb = traceback.extract_tb(error.__traceback__)
    own = [f for f in tb if "pyro_discrete" in f.filename]
    frame = (own or tb)[-1] if tb else None
    return (
        ""
        if frame is None
        else "{}:{}".format(frame.filename.split("site-packages/")[-1].split("/work/main/")[-1], frame.lineno)
    )


def _draw(elbo, structure, params, num_batches, per_batch, vectorized, seed, warmup=0):
    from pyro_discrete.statistics import draw_statistics, draws_plate

    model, guide = structure.model, structure.guide
    calls = 1
    if vectorized:
        dim = -(structure.max_plate_nesting + 1)
        model, guide = draws_plate(model, per_batch, dim), draws_plate(guide, per_batch, dim)
    else:
        calls = per_batch
    names, tensors = list(params), list(params.values())
    pyro.set_rng_seed(seed)
    for _ in range(warmup):
        elbo.differentiable_loss(model, guide, *structure.args)
    batches = []
    for _ in range(num_batches):
        loss_sum, grad_sum = 0.0, [torch.zeros_like(t) for t in tensors]
        for _ in range(calls):
            loss = elbo.differentiable_loss(model, guide, *structure.args)
            if torch.is_tensor(loss) and loss.requires_grad:
                gs = torch.autograd.grad(loss, tensors, allow_unused=True)
            else:
                gs = [None] * len(tensors)
            loss_sum += float(loss)
            grad_sum = [a if g is None else a + g for a, g in zip(grad_sum, gs)]
        batches.append((loss_sum, grad_sum))
    return draw_statistics(batches, names, per_batch)


def _compare(stats, ref_loss, ref_loss_se, ref_grads, ref_ses):
    from pyro_discrete.statistics import bias_z

    worst, where = 0.0, ""
    for n, mean in stats.mean.items():
        if not torch.isfinite(mean).all():
            return float("inf"), "{} (not finite)".format(n)
        z = bias_z(mean, stats.se[n], ref_grads[n], ref_ses[n], rounding=1e5)
        if z.numel() and z.max().item() > worst:
            i = int(z.flatten().argmax())
            worst = z.max().item()
            where = "{}[{}]: mean {:.5g} vs exact {:.5g} (se {:.3g})".format(
                n, i, mean.flatten()[i].item(), ref_grads[n].flatten()[i].item(), stats.se[n].flatten()[i].item()
            )
    if not math.isfinite(stats.loss):
        return float("inf"), "loss (not finite)"
    se = math.sqrt(stats.loss_se**2 + ref_loss_se**2) + 1e-9 * (1 + abs(ref_loss))
    z = abs(stats.loss - ref_loss) / se
    if z > worst:
        worst, where = z, "loss: mean {:.6g} vs exact {:.6g} (se {:.3g})".format(stats.loss, ref_loss, se)
    return worst, where


def reference_for(structure, info, references, num_particles):
    """The reference ``(loss, loss_se, grads, ses)`` of the estimator's objective (cached in ``references``)."""
    if info.objective == "iwae":
        key = ("iwae", num_particles)
        if key not in references:
            references[key] = iwae_reference(structure, num_particles)
        return references[key]
    if "elbo" not in references:
        loss, grads = exact(structure)
        references["elbo"] = (loss, 0.0, grads, {n: torch.zeros_like(g) for n, g in grads.items()})
    return references["elbo"]


def classify(
    structure,
    estimator,
    references=None,
    num_batches=20,
    draws_per_batch=200,
    loop_batches=20,
    loop_draws=4,
    threshold=5.0,
    screen=4.0,
    confirm_factor=4,
    exact_rtol=1e-6,
    seed=0,
):
    """
    Classify an estimator on a structure: ``"works"``, ``"clear error"``,
    ``"unclear error"`` or ``"wrong"``.

    :param estimator: a registry entry (:class:`pyro_discrete.registry.Estimator`,
        made with ``max_plate_nesting`` and its defaults), or a factory
        ``f(max_plate_nesting=...)`` returning an ELBO (attributes ``objective``,
        ``exact``, ``stateful`` read if present).
    :param dict references: a cache of the structure's exact references
        (shared across estimators of one structure); a fresh one if ``None``.
    :param num_batches: batches of vectorized draws (each ``draws_per_batch``
        draws in an outermost plate), when ``structure.draws_safe``; else
        ``loop_batches`` batches of ``loop_draws`` calls.
    :param screen: z-score above which the estimator is suspected; a second,
        independent run with ``confirm_factor`` times more batches must then
        exceed ``threshold`` for ``"wrong"`` (so a false alarm needs two).
    :param exact_rtol: tolerance of exact estimators (relative to the
        reference's magnitude).
    """
    references = {} if references is None else references
    info = _Info(estimator)
    start = time.perf_counter()
    details = {"draws_safe": structure.draws_safe}

    def error_outcome(e):
        clear, legacy = _is_clear(e, info.cls_name)
        details.update(
            seconds=time.perf_counter() - start, legacy_prefix=legacy, where=_where(e), exception=type(e).__name__
        )
        return Outcome(CLEAR if clear else UNCLEAR, float("nan"), "", "{}: {}".format(type(e).__name__, e), details)

    vectorized = structure.draws_safe
    exact_run = info.exact and structure.reference_args is None
    with float64(), pyro.validation_enabled(True), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            params = init_params(structure)
            # the estimator's run first: errors are the estimator's
            try:
                if exact_run:
                    elbo = info.make(structure.max_plate_nesting)
                    loss = elbo.differentiable_loss(structure.model, structure.guide, *structure.args)
                    tensors = list(params.values())
                    gs = (
                        torch.autograd.grad(loss, tensors, allow_unused=True)
                        if loss.requires_grad
                        else [None] * len(tensors)
                    )
                    grads = {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), gs)}
                else:
                    elbo = info.make(structure.max_plate_nesting + (1 if vectorized else 0))
                    warmup = 3 if info.stateful else 0
                    if vectorized:
                        stats = _draw(elbo, structure, params, num_batches, draws_per_batch, True, seed, warmup)
                    else:
                        stats = _draw(elbo, structure, params, loop_batches, loop_draws, False, seed, warmup)
            except Exception as e:  # noqa: BLE001
                return error_outcome(e)
            # then the reference: errors there are the harness's, and propagate
            ref = reference_for(structure, info, references, elbo.num_particles)
            if ref is None:
                details["seconds"] = time.perf_counter() - start
                message = "returned a multi-sample bound for sites with different scales (none is defined)"
                return Outcome(WRONG, float("inf"), "", message, details)
            if exact_run:
                worst = abs(loss.item() - ref[0]) / (1 + abs(ref[0]))
                where = "loss: {:.10g} vs exact {:.10g}".format(loss.item(), ref[0])
                for n, g in grads.items():
                    r = ref[2][n]
                    if not torch.isfinite(g).all():
                        worst, where = float("inf"), "{} (not finite)".format(n)
                        break
                    err = (g - r).abs() / (r.abs() + r.abs().mean() + 1e-12)
                    if err.numel() and err.max().item() > worst:
                        i = int(err.flatten().argmax())
                        worst = err.max().item()
                        where = "{}[{}]: {:.10g} vs exact {:.10g}".format(
                            n, i, g.flatten()[i].item(), r.flatten()[i].item()
                        )
                details["seconds"] = time.perf_counter() - start
                return Outcome(WORKS if worst <= exact_rtol else WRONG, worst, where.split(":")[0], where, details)
            worst, where = _compare(stats, *ref)
            details["draws"] = stats.num_draws
            if worst > screen:
                # a second, larger, independent run must confirm it
                details.update(first_z=worst, first_where=where)
                try:
                    if vectorized:
                        stats = _draw(
                            elbo, structure, params, num_batches * confirm_factor, draws_per_batch, True, seed + 7919
                        )
                    else:
                        stats = _draw(
                            elbo, structure, params, loop_batches * confirm_factor, loop_draws, False, seed + 7919
                        )
                except Exception as e:  # noqa: BLE001
                    return error_outcome(e)
                worst, where = _compare(stats, *ref)
                details["draws"] += stats.num_draws
        finally:
            details["warnings"] = sorted({str(w.message).splitlines()[0][:120] for w in caught})
    details["seconds"] = time.perf_counter() - start
    outcome = WRONG if worst > threshold else WORKS
    if outcome == WORKS and "first_z" in details:
        details["note"] = "flagged once (z {:.1f}), not confirmed".format(details["first_z"])
    return Outcome(outcome, worst, where.split(":")[0].split(" ")[0], where, details)
