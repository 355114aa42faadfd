# SPDX-License-Identifier: Apache-2.0
"""
Per-site estimators, in Pyro's idiom: a guide site carries
``infer={"estimator": NAME}`` (a registry name, or an ELBO of this package),
and :func:`config_estimator` annotates a guide's discrete sites as
:func:`pyro.infer.enum.config_enumerate` does for enumeration.

Every ELBO of the package reads the annotations (the design is in the
developer guide, *Per-site estimators*). Sites annotated with the ELBO's own
method, or not annotated, get the ELBO's estimator. Under the ELBO objective,
the score family (``score``, ``loo``, ``moving_average``) and the
pseudo-action estimators (``arsm``, ``arm``) mix freely, site by site: every
discrete site is drawn exactly from the guide (with the augmentation's noise
kept when a pseudo-action site is among them), each site's gradient term is
its own method's, and the pathwise part is computed once (:class:`PerSite`).
A replayed site needs no guide site to depend on it, checked for that site
only. Any other mix, or a name that is not registered, is an
:class:`~pyro_discrete.errors.EstimatorError` that names the sites and their
methods; an annotation is never silently ignored.
"""

from pyro import poutine

from .errors import EstimatorError
from .surrogate import Surrogate
from .util import CONTINUOUS, preserved_rng, sample_sites, site_kind

__all__ = [
    "ESTIMATOR_KEY",
    "PerSite",
    "annotations",
    "check_estimator_annotations",
    "config_estimator",
    "guide_annotations",
    "resolve",
]

#: the ``infer`` key of a guide site that names its estimator
ESTIMATOR_KEY = "estimator"


def _registered(spec):
    from .registry import REGISTRY

    if isinstance(spec, str) and spec not in REGISTRY:
        raise ValueError(
            "config_estimator: {!r} is not a registered estimator; registered: {}".format(spec, ", ".join(REGISTRY))
        )
    return spec


def config_estimator(guide=None, spec=None):
    """
    Annotates the discrete guide sites of ``guide`` with
    ``infer={"estimator": ...}``, as :func:`~pyro.infer.enum.config_enumerate`
    annotates sites for enumeration; usable as a decorator. Sites that already
    carry an ``"estimator"`` key keep it.

    :param callable guide: a guide (a function or module); ``None`` returns a decorator.
    :param spec: a registry name (or ELBO) for every discrete site, or a dict
        ``site name -> registry name`` (sites not in it are left unannotated).
    :returns: the annotated guide.
    """
    if guide is None:
        return lambda fn: config_estimator(fn, spec)
    if spec is None:
        raise ValueError("config_estimator: give spec, a registry name or a dict site -> registry name")
    if isinstance(spec, dict):
        spec = {name: _registered(value) for name, value in spec.items()}
    else:
        spec = _registered(spec)

    def config_fn(msg):
        if msg["type"] != "sample" or msg["is_observed"] or ESTIMATOR_KEY in msg["infer"]:
            return {}
        if site_kind(msg["fn"]) == CONTINUOUS:
            return {}
        value = spec.get(msg["name"]) if isinstance(spec, dict) else spec
        return {} if value is None else {ESTIMATOR_KEY: value}

    return poutine.infer_config(guide, config_fn)


def _method_of(elbo, spec):
    """``(label, method)`` of an annotation: a registry name, or an ELBO of this package."""
    from .elbo import DiscreteELBO
    from .registry import REGISTRY

    if isinstance(spec, DiscreteELBO):
        return type(spec).__name__, spec.method()
    if isinstance(spec, str) and spec in REGISTRY:
        methods = elbo._annotated_methods  # the registry's methods, made once per ELBO
        if spec not in methods:
            methods[spec] = REGISTRY[spec].make().method()
        return spec, methods[spec]
    return None, None


def _label(elbo):
    from .registry import REGISTRY

    for name, entry in REGISTRY.items():
        if entry.cls is type(elbo) and _method_of(elbo, name)[1] == elbo.method():
            return name
    return type(elbo).__name__


def _mixable(surrogate):
    from .arsm import PseudoActionGradient
    from .score import ScoreFunction

    return isinstance(surrogate, (ScoreFunction, PseudoActionGradient))


def resolve(elbo, annotated):
    """
    ``{site: (label, method, surrogate)}`` of the sites annotated with another
    method than ``elbo``'s, or an :class:`EstimatorError` for an unknown name
    or a mix this package cannot run.
    """
    from .elbo import DiscreteELBO
    from .registry import REGISTRY

    own = elbo.method()
    others = {}
    for name, spec in annotated.items():
        label, method = _method_of(elbo, spec)
        if method is None:
            raise EstimatorError(
                elbo,
                "guide site '{}' has infer={{'estimator': {!r}}}, which is neither a registered estimator's name "
                "nor an ELBO of pyro_discrete.".format(name, spec),
                sites=(name,),
                requirement="registered_estimator",
            )
        if method == own:
            continue
        if isinstance(spec, DiscreteELBO):
            made = type(spec)(num_particles=elbo.num_particles, **_options_of(spec))
        else:
            made = REGISTRY[spec].make(num_particles=elbo.num_particles)
        others[name] = (label, method, made.surrogate)
    if not others:
        return others
    if not _mixable(elbo.surrogate) or not all(_mixable(s) for _, _, s in others.values()):
        labels = sorted({label for label, _, _ in others.values()})
        raise EstimatorError(
            elbo,
            "guide site{} {} {} annotated with another estimator than this ELBO's ({}); per site, the score "
            "family (score, loo, moving_average) and ARSM/ARM mix under the ELBO, other mixes are not "
            "implemented yet. Remove the annotations, or use one estimator for the whole model.".format(
                "s" if len(others) > 1 else "",
                ", ".join("'{}' ({})".format(n, label) for n, (label, _, _) in others.items()),
                "are" if len(others) > 1 else "is",
                _label(elbo),
            ),
            sites=tuple(others),
            requirement="one_estimator_per_model",
            suggest=lambda e: e.name in labels,
        )
    return others


def _options_of(elbo):
    # an annotation given as an ELBO: its method, with the annotated ELBO's particle count
    from .arsm import ARSMELBO
    from .score import TraceScoreELBO

    if isinstance(elbo, TraceScoreELBO):
        return {"baseline": elbo.surrogate.spec, "decay": elbo.surrogate.decay}
    if isinstance(elbo, ARSMELBO):
        return {"binary": elbo.surrogate.binary}
    return {}


def annotations(guide_trace):
    """``{site: spec}``: the ``infer={"estimator": spec}`` annotations of a guide trace's latent sites."""
    return {
        name: site["infer"][ESTIMATOR_KEY]
        for name, site in sample_sites(guide_trace)
        if not site["is_observed"] and ESTIMATOR_KEY in site["infer"]
    }


def check_estimator_annotations(elbo, guide_trace):
    """
    Checks the ``infer={"estimator": ...}`` annotations of a guide trace
    against ``elbo``: every annotated site names a registered method, and a
    mix is one :class:`PerSite` runs (see the module's docstring).
    """
    resolve(elbo, annotations(guide_trace))


class PerSite(Surrogate):
    """
    The surrogate of a per-site mix under the ELBO: the ELBO's own surrogate
    (``own``) for the sites not annotated otherwise, and one surrogate per
    other method for its sites. The pathwise part is computed once; each
    method adds the gradient terms of its own sites
    (``site_terms(particles, step, names, surrogate)``), and the baselines'
    own objectives are added after the division by the particle count, as
    each method does alone.

    :param own: the ELBO's surrogate.
    :param dict others: ``site -> (label, method, surrogate)`` of the sites
        annotated with another method.
    """

    def __init__(self, own, others):
        self.own = own
        self.groups = {}  # method -> (surrogate, set of sites)
        for name, (_, method, surrogate) in others.items():
            self.groups.setdefault(method, (surrogate, set()))[1].add(name)
        self.others = frozenset(others)
        self.site_kinds = own.site_kinds
        self.honored_infer_keys = own.honored_infer_keys

    def bind(self, elbo):
        for surrogate, _ in self.groups.values():
            surrogate.bind(elbo)

    def sampler(self, elbo):
        """The sampler class: the pseudo-action estimators' augmented draws if any site is theirs."""
        from .arsm import AugmentedSampler, PseudoActionGradient

        surrogates = [self.own] + [s for s, _ in self.groups.values()]
        if any(isinstance(s, PseudoActionGradient) for s in surrogates):
            return AugmentedSampler
        return elbo.sampler

    def check_site(self, elbo, name, site):
        for surrogate, names in self.groups.values():
            if name in names:
                return surrogate.check_site(elbo, name, site)
        return self.own.check_site(elbo, name, site)

    def check_structure(self, structure, names=None):
        own = [n for n in structure.sites if n not in self.others]
        failure = self.own.check_structure(structure, own)
        for surrogate, group in self.groups.values():
            failure = failure or surrogate.check_structure(structure, sorted(group))
        return failure

    def wants_provenance(self, step):
        return self.own.wants_provenance(step)

    def __call__(self, particles, step):
        _, surrogate_elbo = particles.pathwise_terms()
        own = [n for n in _score_site_names(particles) if n not in self.others]
        surrogate, after = self.own.site_terms(particles, step, own, -surrogate_elbo)
        afters = [after]
        for method in sorted(self.groups):
            group_surrogate, names = self.groups[method]
            surrogate, after = group_surrogate.site_terms(particles, step, names, surrogate)
            afters.append(after)
        total = surrogate / particles.num_particles
        for after in afters:
            total = after(total)
        return total

    def after_step(self):
        self.own.after_step()
        for surrogate, _ in self.groups.values():
            surrogate.after_step()


def _score_site_names(particles):
    from .traces import score_function_sites

    return [name for name, _ in score_function_sites(particles.pairs[0].guide_trace)]


def guide_annotations(guide, args, kwargs):
    """The annotations of one run of ``guide`` (random state kept, nothing recorded)."""
    import torch

    with preserved_rng(), torch.no_grad(), poutine.block():
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
    return annotations(trace)
