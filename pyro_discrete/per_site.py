# SPDX-License-Identifier: Apache-2.0
"""
Per-site estimators, in Pyro's idiom: a guide site carries
``infer={"estimator": NAME}`` (a registry name, or an ELBO of this package),
and :func:`config_estimator` annotates a guide's discrete sites as
:func:`pyro.infer.enum.config_enumerate` does for enumeration.

Every ELBO of the package reads the annotations (the design is in the
developer guide, *Per-site estimators*). Sites annotated with the ELBO's own
method, or not annotated, get the ELBO's estimator. Under the ELBO objective,
the score family (``score``, ``loo``, ``moving_average``) mixes site by site
with the pseudo-action estimators (``arsm``, ``arm``, ``coupled_disarm``) and
with ARMS and CARMS (``arms``, ``carms``): every discrete site is drawn exactly from the guide (with
the augmentation's noise kept when a pseudo-action site is among them, coupled
across particles for an ARMS site), each site's gradient term is
its own method's, and the pathwise part is computed once (:class:`~pyro_discrete.mix.PerSite`).
A replayed site needs no guide site to depend on it, checked for that site
only. Any other mix, or a name that is not registered, is an
:class:`~pyro_discrete.errors.EstimatorError` that names the sites and their
methods; an annotation is never silently ignored.
"""

from pyro import poutine

from .errors import EstimatorError
from .mix import PerSite
from .util import CONTINUOUS, preserved_rng, sample_sites, site_kind

__all__ = [
    "AUTO",
    "ESTIMATOR_KEY",
    "annotations",
    "check_estimator_annotations",
    "config_estimator",
    "guide_annotations",
    "resolve",
    "surrogate_for",
]

#: the ``infer`` key of a guide site that names its estimator
ESTIMATOR_KEY = "estimator"

#: the annotation that lets the package choose a site's method from its structure (:func:`~pyro_discrete.auto.choose`)
AUTO = "auto"


def _registered(spec):
    from .registry import REGISTRY

    if isinstance(spec, str) and spec not in REGISTRY and spec != AUTO:
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
        ``site name -> registry name`` (sites not in it are left unannotated);
        ``"auto"`` (for every site, or as a dict's value) lets the ELBO choose
        each site's method from the model's structure (:func:`~pyro_discrete.auto.choose`).
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
            with preserved_rng():  # an ELBO with a network (RODEO's) draws its initial weights
                methods[spec] = REGISTRY[spec].make().method()
        return spec, methods[spec]
    return None, None


def _label(elbo):
    from .registry import REGISTRY

    for name, entry in REGISTRY.items():
        if entry.cls is type(elbo) and _method_of(elbo, name)[1] == elbo.method():
            return name
    return type(elbo).__name__


def _family(surrogate):
    """
    ``"score"``, ``"pseudo_action"``, ``"enumeration"``, ``"copula"``: the
    families that mix per site; ``None`` otherwise.
    """
    from .arms import AntitheticScore
    from .arsm import PseudoActionGradient
    from .expect import Expectation
    from .score import ScoreFunction

    families = (
        (ScoreFunction, "score"),
        (PseudoActionGradient, "pseudo_action"),
        (Expectation, "enumeration"),
        (AntitheticScore, "copula"),
    )
    for cls, family in families:
        if isinstance(surrogate, cls):
            return family
    return None


def _mixable(surrogates):
    # the score family mixes with either; ARSM/ARM replay the model at the sites' pseudo-actions, which is not
    # written for traces with enumerated dims
    # written for traces with enumerated dims; ARMS draws its sites coupled across particles, with the score
    # family's sites drawn independently beside them
    families = {_family(s) for s in surrogates}
    if "copula" in families and not families <= {"copula", "score"}:
        return False
    return None not in families and not {"pseudo_action", "enumeration"} <= families


def resolve(elbo, annotated):
    """
    ``{site: (label, method, surrogate)}`` of the sites annotated with another
    method than ``elbo``'s, or an :class:`EstimatorError` for an unknown name
    or a mix this package cannot run. ``"auto"`` annotations are left out
    (the ELBO replaces them by its choice first: :mod:`~pyro_discrete.auto`).
    """
    from .elbo import DiscreteELBO
    from .registry import REGISTRY

    own = elbo.method()
    others = {}
    for name, spec in annotated.items():
        if isinstance(spec, str) and spec == AUTO:
            continue
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
            with preserved_rng():
                made = type(spec)(num_particles=elbo.num_particles, **_options_of(spec))
        else:
            with preserved_rng():
                made = REGISTRY[spec].make(num_particles=elbo.num_particles)
        others[name] = (label, method, made.surrogate)
    if not others:
        return others
    if not _mixable([elbo.surrogate] + [s for _, _, s in others.values()]):
        labels = sorted({label for label, _, _ in others.values()})
        raise EstimatorError(
            elbo,
            "guide site{} {} {} annotated with another estimator than this ELBO's ({}); per site, the score "
            "family (score, loo, moving_average) mixes under the ELBO with ARSM/ARM/coupled DisARM, with ARMS or "
            "with exact enumeration (expect); other mixes are not implemented yet. Remove the annotations, or use "
            "one estimator for the whole model.".format(
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
    if type(elbo) is ARSMELBO:  # CoupledDisARMELBO fixes its options
        categorical = "arsm" if elbo.surrogate.categorical == "arsm" else "disarm"
        return {"binary": elbo.surrogate.binary, "categorical": categorical}
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
    mix is one :class:`~pyro_discrete.mix.PerSite` runs (see the module's docstring).
    """
    resolve(elbo, annotations(guide_trace))


def surrogate_for(elbo, model, guide, args, kwargs):
    """
    ``(surrogate, rows)`` for a model and guide: ``elbo``'s own surrogate, or
    a :class:`~pyro_discrete.mix.PerSite` mix when the guide's sites carry annotations of other
    methods (``"auto"`` ones replaced by :func:`~pyro_discrete.auto.choose`'s
    choice), and a :class:`~pyro_discrete.auto.SiteChoice` per discrete guide
    site saying which method it gets and why.
    """
    from .auto import SiteChoice

    try:
        annotated, names = guide_annotations(guide, args, kwargs, with_sites=True)
    except Exception:  # noqa: BLE001 -- a guide that runs only in the ELBO's plates: checked on the traces
        return elbo.surrogate, []
    own_label = _label(elbo)
    auto = [n for n, spec in annotated.items() if isinstance(spec, str) and spec == AUTO]
    choices = _choose(elbo, model, guide, args, kwargs, auto) if auto else {}
    annotated = {n: spec for n, spec in annotated.items() if n not in choices}
    annotated.update({n: c.method for n, c in choices.items() if c.method != own_label})
    others = resolve(elbo, annotated) if annotated else {}
    rows = []
    for name in names:
        if name in choices:
            rows.append(choices[name])
        elif name in others:
            rows.append(SiteChoice(name, others[name][0], "annotated"))
        else:
            why = "annotated with the ELBO's own method" if name in annotated else "not annotated: the ELBO's own"
            rows.append(SiteChoice(name, own_label, why))
    if not others:
        return elbo.surrogate, rows
    surrogate = PerSite(elbo.surrogate, others)
    surrogate.bind(elbo)
    return surrogate, rows


def _choose(elbo, model, guide, args, kwargs, names):
    from .auto import choose
    from .drawing import count_plate_dims
    from .structure import analyze_left_of_plates

    try:
        with preserved_rng():
            depth = count_plate_dims(model, guide, args, kwargs)
            if elbo.vectorize_particles and elbo.num_particles > 1:
                depth += 1  # enumerated dims go left of the particles' dim: the model must broadcast there
            if elbo.max_plate_nesting != float("inf"):
                depth = max(depth, elbo.max_plate_nesting)
            structure, broadcasts = analyze_left_of_plates(model, guide, args, kwargs, -depth - 1)
    except Exception:  # noqa: BLE001 -- a model the analysis cannot run: choose() says so
        structure, broadcasts = None, False
    return choose(elbo, structure, broadcasts, names)


def guide_annotations(guide, args, kwargs, with_sites=False):
    """
    The annotations of one run of ``guide`` (random state kept, nothing
    recorded); with ``with_sites``, also the names of its discrete latent
    sites, in guide order.
    """
    import torch

    with preserved_rng(), torch.no_grad(), poutine.block():
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
    if not with_sites:
        return annotations(trace)
    names = [
        name for name, site in sample_sites(trace) if not site["is_observed"] and site_kind(site["fn"]) != CONTINUOUS
    ]
    return annotations(trace), names
