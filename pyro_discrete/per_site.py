# SPDX-License-Identifier: Apache-2.0
"""
Per-site estimator annotations, in Pyro's idiom: a guide site carries
``infer={"estimator": NAME}`` (a registry name, or an ELBO of this package),
and :func:`config_estimator` annotates a guide's discrete sites as
:func:`pyro.infer.enum.config_enumerate` does for enumeration.

Every ELBO of the package reads the annotations (the design is in the
developer guide, *Per-site estimators*): a site annotated with the ELBO's own
method runs as before; a name that is not registered, or a site annotated
with another method than the ELBO's -- a per-site mix, whose dispatch is not
implemented yet -- is an :class:`~pyro_discrete.errors.EstimatorError` that
names the sites and their methods. An annotation is never silently ignored.
"""

from pyro import poutine

from .errors import EstimatorError
from .util import CONTINUOUS, sample_sites, site_kind

__all__ = ["ESTIMATOR_KEY", "check_estimator_annotations", "config_estimator"]

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


def check_estimator_annotations(elbo, guide_trace):
    """
    Checks the ``infer={"estimator": ...}`` annotations of a guide trace
    against ``elbo``: every annotated discrete site must name ``elbo``'s own
    method (see the module's docstring).
    """
    own = elbo.method()
    others = []
    for name, site in sample_sites(guide_trace):
        if site["is_observed"] or ESTIMATOR_KEY not in site["infer"]:
            continue
        spec = site["infer"][ESTIMATOR_KEY]
        label, method = _method_of(elbo, spec)
        if method is None:
            raise EstimatorError(
                elbo,
                "guide site '{}' has infer={{'estimator': {!r}}}, which is neither a registered estimator's name "
                "nor an ELBO of pyro_discrete.".format(name, spec),
                sites=(name,),
                requirement="registered_estimator",
            )
        if method != own:
            others.append((name, label))
    if others:
        names = sorted({label for _, label in others if isinstance(label, str)})
        raise EstimatorError(
            elbo,
            "guide site{} {} {} annotated with another estimator than this ELBO's ({}); a different estimator "
            "per site is not implemented yet. Remove the annotations, or use one estimator for the whole "
            "model.".format(
                "s" if len(others) > 1 else "",
                ", ".join("'{}' ({})".format(n, label) for n, label in others),
                "are" if len(others) > 1 else "is",
                _label(elbo),
            ),
            sites=tuple(n for n, _ in others),
            requirement="one_estimator_per_model",
            suggest=(lambda e: e.name in names) if names else True,
        )
