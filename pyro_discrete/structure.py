# SPDX-License-Identifier: Apache-2.0
r"""
The structural analysis: which terms of the ELBO depend on which element of
which discrete guide site, found once per model/guide structure and consulted
by every estimator.

Each estimator rests on assumptions about the model that nothing in Pyro
declares:

* **particles are not mixed** -- with vectorized particles, a term depends on
  the sites of its own particle only (a model that reduces a latent over every
  dim, ``z.sum()``, mixes them);
* **plate-separable costs** -- the cost of element :math:`i` of a site in a plate
  may leave out the terms of the other elements :math:`j \ne i` of that plate
  (Pyro's and this package's plate-level Rao-Blackwellization). It fails when a
  term in element :math:`j` depends on :math:`z_i`, through a guide site outside
  the plate that reduces over it, or through the model's own arithmetic;
* **replayable per element** -- IndeCateR, RELAX/REBAR, the set estimators and
  enumeration move every element of a plate to an alternative value *at once*
  and read element :math:`i`'s cost from element :math:`i`'s terms; a term
  outside the plate (or in another plate on the same dim) that depends on the
  site, or a term of another element, breaks it;
* **masks are not functions of discrete sites** -- a relaxed value fed into a
  mask becomes a boolean mask in Pyro (``.mask(z_soft)``), so a relaxation
  trains another model.

:func:`analyze` finds out, from the model and guide themselves: it draws one
set of values (vectorized particles included, random state untouched), then,
for every guide site (discrete, or continuous with a support it can move
within), changes the site's value in one element (the first, then the last)
and replays guide and model, with the same random numbers, at the changed
value, later guide sites held at their values. Which log-densities change,
and in which elements, is the dependency structure; a guide site whose
log-density changes is drawn from a distribution that depends on the site, so
whatever depends on *its* value depends on the site too, and is followed
(provenance through the guide, as :class:`~pyro.infer.TraceGraph_ELBO` does,
but element by element):

* a term in the same plate that changes in *another* element: the plate is
  **crossed** for that site;
* a term outside the plate that changes: the site reaches **outside** the plate
  (a term with the particle plate crossed, or outside it, **mixes particles**);
* a site whose mask changes: **masked by** the site.

What the estimators do with it (:mod:`pyro_discrete.elbo`): mixed particles
are an error naming the site and the term (``vectorize_particles=False``
computes the right thing); a crossed plate widens that site's cost to every
element of the plate (:func:`~pyro_discrete.costs.cost_to_frames`), the
right gradient at no extra model evaluations; estimators that replay per
element refuse a site that is crossed or reaches outside its plates, and the
relaxations refuse masks that depend on a discrete site, each with an
:class:`~pyro_discrete.errors.EstimatorError` naming the sites and the
registered estimators that take the structure.

The analysis runs on the first step of each structure (the model and guide,
and the shapes of their sites) and costs two replays of model and guide per
discrete site; a change that a replay cannot see (a reduction
such as ``max`` that one changed element leaves as it was) goes unnoticed.
"""

from dataclasses import dataclass, field
from typing import Optional

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import Bernoulli, Categorical, OneHotCategorical, constraints

from .util import CONTINUOUS, innermost_distribution, preserved_rng, sample_sites, site_kind, site_masks, support_size

__all__ = [
    "INDEPENDENT",
    "LEFT_DIMS",
    "PARTICLE_PLATE",
    "PER_ELEMENT",
    "SINGLE_SITE",
    "UNMASKED",
    "SiteStructure",
    "Structure",
    "analyze",
    "check_assumptions",
    "perturb",
]

#: the name of the plate of vectorized particles (Pyro's ``ELBO._vectorized_num_particles``)
PARTICLE_PLATE = "num_particles_vectorized"


@dataclass
class SiteStructure:
    """
    What the analysis found for one discrete guide site.

    :ivar str name: the guide site.
    :ivar str kind: its kind (:func:`~pyro_discrete.util.site_kind`).
    :ivar tuple frames: ``(plate name, dim, size)`` of its plates of size > 1.
    :ivar dict crossed: ``(plate name, dim) -> term``: a term of another element
        of that plate depends on the site (the named one, ``"model site 'x'"``).
    :ivar dict outside: ``(plate name, dim) -> term``: a term outside that plate
        depends on the site.
    :ivar dict masks: ``site -> description`` of the sites whose mask depends on it.
    :ivar set dependents: the guide sites whose log-density depends on it.
    :ivar dict touched: ``term -> {(plate, dim): size}``: the terms that depend
        on it directly, with their plates (what a site upstream inherits).
    :ivar support: the size of one element's joint support (``None``: not
        enumerable, or continuous).
    """

    name: str
    kind: str
    frames: tuple
    crossed: dict = field(default_factory=dict)
    outside: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)
    dependents: set = field(default_factory=set)
    touched: dict = field(default_factory=dict)
    support: Optional[int] = None

    @property
    def discrete(self):
        """Whether the site is discrete (not reparameterizable)."""
        return self.kind != CONTINUOUS


class Structure:
    """
    The result of :func:`analyze`: a :class:`SiteStructure` per discrete guide
    site, and questions the estimators ask of it.
    """

    def __init__(self, sites):
        #: guide site name -> :class:`SiteStructure` of every discrete guide site, in guide order
        self.sites = {name: s for name, s in sites.items() if s.discrete}
        #: the same for every guide site analyzed, continuous ones included
        self.all_sites = sites

    def mixed_particles(self, names=None):
        """``[(site, term)]``: the sites (of ``names``, default all) whose particles some term mixes."""
        found = []
        for s in self.all_sites.values():
            if names is not None and s.name not in names:
                continue
            for (plate, _), term in list(s.crossed.items()) + list(s.outside.items()):
                if plate == PARTICLE_PLATE:
                    found.append((s.name, term))
                    break
        return found

    def widened(self, name):
        """
        The ``(plate name, dim)`` frames over which the cost of guide site
        ``name`` must be summed instead of kept per element (crossed plates).
        """
        s = self.all_sites.get(name)
        if s is None:
            return frozenset()
        return frozenset(frame for frame in s.crossed if frame[0] != PARTICLE_PLATE)

    def not_per_element(self, names=None):
        """
        ``[(site, plate, term, how)]``: for the named sites (default: all), the
        plates along which the site cannot be replayed one element at a time
        (``how`` is ``"crossed"`` or ``"outside"``).
        """
        found = []
        for s in self.sites.values():
            if names is not None and s.name not in names:
                continue
            for how, frames in (("crossed", s.crossed), ("outside", s.outside)):
                for (plate, _), term in frames.items():
                    if plate != PARTICLE_PLATE:
                        found.append((s.name, plate, term, how))
        return found

    def masked(self):
        """``[(site, masked site)]``: masks that depend on a discrete guide site."""
        return [(s.name, other) for s in self.sites.values() for other in s.masks]

    def table(self):
        """One row per site (a dict), for inspection: plates, crossed, outside, masks, dependents."""
        return [
            {
                "site": s.name,
                "plates": [plate for plate, _, _ in s.frames],
                "crossed": {plate: term for (plate, _), term in s.crossed.items()},
                "outside": {plate: term for (plate, _), term in s.outside.items()},
                "masks": sorted(s.masks),
                "dependents": sorted(s.dependents),
            }
            for s in self.sites.values()
        ]

    def __repr__(self):
        return "Structure({})".format(self.table())


def perturb(fn, value):
    """
    Another value in the support of ``fn`` at every element (Bernoulli
    flipped, a category moved by one, a real value moved by 0.5, a positive
    one scaled by 1.5), or ``None`` when the distribution is not one whose
    values this knows how to change.
    """
    base = innermost_distribution(fn)
    if isinstance(base, OneHotCategorical):
        return value.roll(1, -1)
    if isinstance(base, Categorical):
        num_categories = base.logits.shape[-1] if "logits" in base.__dict__ else base.probs.shape[-1]
        return (value + 1) % num_categories
    if isinstance(base, Bernoulli):
        return 1 - value
    if getattr(fn, "has_rsample", False):
        support = fn.support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        if support is constraints.real:
            return value + 0.5
        if support is constraints.positive:
            return value * 1.5
    return None


def _frames(site):
    return {(f.name, f.dim): f.size for f in site["cond_indep_stack"] if f.vectorized}


def _run(model, guide, args, kwargs, rng, guide_trace=None):
    """Guide (replayed at ``guide_trace`` if given) and model, their terms and masks, from random state ``rng``."""
    torch.random.set_rng_state(rng)
    if guide_trace is None:
        raw = poutine.trace(guide).get_trace(*args, **kwargs)
    else:
        raw = poutine.trace(poutine.replay(guide, trace=guide_trace)).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=raw)).get_trace(*args, **kwargs)
    terms = {}
    for where, trace in (("guide", prune_subsample_sites(raw)), ("model", prune_subsample_sites(model_trace))):
        trace.compute_log_prob()
        for name, site in sample_sites(trace):
            terms[(where, name)] = (site["log_prob"], _frames(site), site_masks(site))
    return raw, terms


def _changed(before, after):
    """Where two log-densities differ (beyond rounding), broadcast to a common shape."""
    if before.shape != after.shape:
        shape = torch.broadcast_shapes(before.shape, after.shape)
        return torch.ones(shape, dtype=torch.bool, device=before.device)
    same = torch.isclose(before, after, rtol=1e-5, atol=1e-12, equal_nan=True)
    return ~same


def _same_masks(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if torch.is_tensor(x) or torch.is_tensor(y):
            x, y = torch.as_tensor(x), torch.as_tensor(y)
            if x.shape != y.shape or not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def _describe(where, name):
    return "{} site '{}'".format(where, name)


class _Jitter(poutine.messenger.Messenger):
    """
    Moves the value of every real or positive ``pyro.param`` by a fixed random
    amount (one per name, the same in every run of one analysis), so that a
    dependency that vanishes at the parameters' current values -- zero
    weights, logits equal across categories, as at initialization -- still
    shows. Parameters of ``pyro.module`` (which writes returned values back
    into the module) are left alone; the param store is never written.
    """

    def __init__(self, seed=0):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)
        self.noise = {}

    def _pyro_post_param(self, msg):
        value = msg["value"]
        if "$$$" in msg["name"] or not torch.is_tensor(value) or not value.is_floating_point():
            return
        constraint = msg["kwargs"].get("constraint", constraints.real)
        if constraint not in (constraints.real, constraints.positive):
            return
        noise = self.noise.get(msg["name"])
        if noise is None or noise.shape != value.shape:
            noise = torch.randn(value.shape, generator=self.generator, dtype=value.dtype).to(value.device)
            self.noise[msg["name"]] = noise
        msg["value"] = value + 0.1 * noise if constraint is constraints.real else value * (0.1 * noise).exp()


def analyze(model, guide, args=(), kwargs=None, names=None):
    """
    The :class:`Structure` of a model/guide pair (see the module's docstring).
    ``model`` and ``guide`` are run as given (inside the particle plate, when
    particles are vectorized), without gradients, and leave the random state
    and the param store's values as they were.

    :param names: the guide sites to analyze (default: every discrete guide site).
    :returns: a :class:`Structure`, or ``None`` when the guide cannot be replayed
        (a ``GuideMessenger``).
    """
    kwargs = {} if kwargs is None else kwargs
    if isinstance(poutine.unwrap(guide), poutine.messenger.Messenger):
        return None
    with preserved_rng(), torch.no_grad(), poutine.block(), _Jitter():
        rng = torch.random.get_rng_state()
        raw, base = _run(model, guide, args, kwargs, rng)
        sites = {}
        for name, site in sample_sites(raw):
            if site["is_observed"] or site["infer"].get("is_auxiliary") or (names is not None and name not in names):
                continue
            if perturb(site["fn"], site["value"]) is None:  # a kind whose values it cannot change: kind only
                frames = tuple((plate, dim, size) for (plate, dim), size in _frames(site).items() if size > 1)
                sites[name] = SiteStructure(name, site_kind(site["fn"]), frames, support=support_size(site["fn"]))
                continue
            sites[name] = _probe(model, guide, args, kwargs, rng, raw, base, name, site)
    _follow_dependents(sites)
    return Structure(sites)


def _follow_dependents(sites):
    # a guide site drawn from a distribution that depends on a site carries its influence on: what depends on
    # the later site's value depends on the earlier site too (in the later site's elements)
    for s in sites.values():
        seen, stack = set(), sorted(s.dependents)
        while stack:
            later = sites.get(stack.pop())
            if later is None or later.name in seen or later.name == s.name:
                continue
            seen.add(later.name)
            stack.extend(sorted(later.dependents))
            through = " (through guide site '{}')".format(later.name)
            later_frames = {(plate, dim) for plate, dim, _ in later.frames}
            for plate, dim, size in s.frames:
                if (plate, dim) in later_frames:  # per element: what the later site does in its element
                    for kind in ("crossed", "outside"):
                        term = getattr(later, kind).get((plate, dim))
                        if term is not None:
                            getattr(s, kind).setdefault((plate, dim), term + through)
                    continue
                for term, frames in later.touched.items():
                    kind = s.crossed if frames.get((plate, dim)) == size else s.outside
                    kind.setdefault((plate, dim), term + through)


def _probe(model, guide, args, kwargs, rng, raw, base, name, site):
    value = site["value"]
    event_dim = len(site["fn"].event_shape)
    changed_value = perturb(site["fn"], value)
    frames = tuple((plate, dim, size) for (plate, dim), size in _frames(site).items() if size > 1)
    result = SiteStructure(name, site_kind(site["fn"]), frames, support=support_size(site["fn"]))
    batch_dims = value.dim() - event_dim
    if changed_value is None or any(
        value.dim() < event_dim - dim or value.shape[dim - event_dim] != size for _, dim, size in frames
    ):
        return result
    # one element at a time (a slice could change and restore a sum), the first and the last; a site outside
    # every plate once, for the guide sites that depend on it. A .to_event site of several latents is probed
    # with every latent of the element changed, and with its first latent only: changing them all can leave a
    # sum over the event as it was (bits 1, 0 flipped to 0, 1)
    latent_dims = event_dim - len(innermost_distribution(site["fn"]).event_shape)
    latents = [()] + ([(0,) * latent_dims] if latent_dims > 0 else [])
    for last in (False, True) if frames else (False,):
        index = tuple((value.shape[d] - 1 if last else 0) for d in range(batch_dims))
        for latent in latents:
            new = value.clone()
            new[index + latent] = changed_value[index + latent]
            trace = raw.copy()
            trace.nodes[name] = dict(site, value=new)
            _, probed = _run(model, guide, args, kwargs, rng, trace)
            _compare(result, base, probed, {dim: index[dim + batch_dims] for _, dim, _ in frames})
    return result


def _compare(result, base, probed, index):
    for key, (before, frames, masks) in base.items():
        where, term = key
        if key == ("guide", result.name):
            continue
        after = probed.get(key)
        if after is None:  # the site is not there any more: the structure depends on the value
            for plate, dim, _ in result.frames:
                result.outside.setdefault((plate, dim), _describe(where, term))
            continue
        if not _same_masks(masks, after[2]):
            result.masks[term] = _describe(where, term)
        changed = _changed(before, after[0])
        if not changed.any():
            continue
        if where == "guide":
            result.dependents.add(term)
        result.touched[_describe(where, term)] = frames
        for plate, dim, size in result.frames:
            shares = frames.get((plate, dim)) == size and changed.dim() >= -dim and changed.shape[dim] == size
            if not shares:
                result.outside.setdefault((plate, dim), _describe(where, term))
                continue
            i = index[dim]
            others = torch.cat([changed.narrow(dim, 0, i), changed.narrow(dim, i + 1, size - i - 1)], dim)
            if others.any():
                result.crossed.setdefault((plate, dim), _describe(where, term))


#: the assumption of estimators that lay values out along batch dims left of the plates (replays, enumeration, sets)
LEFT_DIMS = "left_dims_not_mixed"
#: the assumption of estimators that replay every element of a plate at once (IndeCateR, RELAX, sets, enumeration)
PER_ELEMENT = "replayable_per_element"
#: the assumption of estimators that replay a discrete site holding the other guide sites at their values
INDEPENDENT = "no_guide_dependencies"
#: the assumption of estimators that draw one discrete site's values together (the set estimators)
SINGLE_SITE = "one_discrete_site"
#: the assumption of relaxations: no mask is a function of a discrete guide site
UNMASKED = "masks_not_from_discrete"


def check_assumptions(assumes, structure, names=None):
    """
    ``None`` if ``structure`` satisfies every assumption in ``assumes`` for the
    guide sites ``names`` (default: all), else ``(sites, requirement, message)``
    for the first that fails.
    """
    if SINGLE_SITE in assumes and len(structure.sites) > 1:
        message = (
            "this estimator draws the values of one discrete guide site together, and the guide has {}: {}.".format(
                len(structure.sites), ", ".join("'{}'".format(n) for n in structure.sites)
            )
        )
        return tuple(structure.sites), SINGLE_SITE, message
    if INDEPENDENT in assumes:
        for s in structure.sites.values():
            if names is not None and s.name not in names:
                continue
            if s.dependents:
                later = sorted(s.dependents)
                message = (
                    "guide site{} {} depend{} on the value of discrete guide site '{}', which this estimator "
                    "evaluates at other values while holding the later sites at theirs; its gradient would be "
                    "wrong.".format(
                        "s" if len(later) > 1 else "",
                        ", ".join("'{}'".format(n) for n in later),
                        "" if len(later) > 1 else "s",
                        s.name,
                    )
                )
                return (s.name,) + tuple(later), INDEPENDENT, message
    if LEFT_DIMS in assumes:
        mixed = structure.mixed_particles(names)
        if mixed:
            name, term = mixed[0]
            message = (
                "{} depends on the values of guide site '{}' along batch dims left of the plates (the model or "
                "guide reduces over every dim, e.g. z.sum()). This estimator lays the values it evaluates out "
                "along such a dim, so they would be mixed.".format(term[:1].upper() + term[1:], name)
            )
            return (name,), LEFT_DIMS, message
    if PER_ELEMENT in assumes:
        failures = structure.not_per_element(names)
        if failures:
            name, plate, term, how = failures[0]
            if how == "crossed":
                why = "{} in other elements of plate '{}' depends on the value of '{}' in one element".format(
                    term, plate, name
                )
            else:
                why = "{}, outside plate '{}' (or in another plate on its dim), depends on '{}'".format(
                    term, plate, name
                )
            message = (
                "guide site '{}' is in plate '{}', and {}. This estimator evaluates every element of the plate "
                "at alternative values at once and reads each element's cost from its own terms, so its gradient "
                "would be wrong.".format(name, plate, why)
            )
            return (name,), PER_ELEMENT, message
    if UNMASKED in assumes:
        masked = structure.masked()
        if masked:
            name, other = masked[0]
            message = (
                "the mask of {} is a function of discrete guide site '{}'. Pyro makes any mask boolean, so a "
                "relaxed value there (presence 0.01) would count the site fully: this estimator would train "
                "another model.".format(structure.sites[name].masks[other], name)
            )
            return (name,), UNMASKED, message
    return None


def in_plate(fn, dim, size=2):
    """``fn`` run inside a plate of ``size`` copies at batch dim ``dim`` (left of every plate of ``fn``)."""

    def wrapped(*args, **kwargs):
        with pyro.plate(PARTICLE_PLATE, size, dim=dim):
            return fn(*args, **kwargs)

    return wrapped


def analyze_left_of_plates(model, guide, args, kwargs, dim):
    """
    :func:`analyze` inside a plate of two copies at ``dim`` (left of every
    plate), so that a model that reduces over such dims (``z.sum()``) shows
    it; a model that does not broadcast over it is analyzed as it is.
    ``dim=None``: as it is only (the particles' own plate is there already).

    :returns: ``(structure, broadcasts)``; ``structure`` is ``None`` when
        neither run could be replayed, ``broadcasts`` false when only the
        plain run ran.
    """
    runs = [(model, guide)] if dim is None else [(in_plate(model, dim), in_plate(guide, dim)), (model, guide)]
    for i, (m, g) in enumerate(runs):
        try:
            return analyze(m, g, args, kwargs), i == 0 or dim is None
        except Exception:  # noqa: BLE001 -- a model the analysis cannot replay: the estimators' own checks apply
            continue
    return None, dim is None
