# SPDX-License-Identifier: Apache-2.0
"""
Error messages that name the estimator and suggest what to use instead. The
suggestions come from the registry (:mod:`pyro_discrete.registry`), so a new
estimator appears in them by being registered.
"""

__all__ = ["estimator_error", "suggest"]


def estimator_error(elbo, message):
    """Prefix an error message with the estimator's name (an ELBO, a class or a string)."""
    if isinstance(elbo, str):
        name = elbo
    elif isinstance(elbo, type):
        name = elbo.__name__
    else:
        name = type(elbo).__name__
    return "{}: {}".format(name, message)


def _join(names):
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " or " + names[-1]


def suggest(kind=None, exclude=None, require=None):
    """
    ``"use A, B or C"``: the registered unbiased estimators that take guide
    sites of ``kind`` (a site kind of :mod:`pyro_discrete.util`) and satisfy
    ``require`` (a predicate of a registry entry), other than ``exclude`` (an
    ELBO or class).
    """
    from .registry import REGISTRY

    if exclude is not None and not isinstance(exclude, type):
        exclude = type(exclude)
    names = []
    for entry in REGISTRY.values():
        if not entry.unbiased or entry.cls is exclude or entry.cls.__name__ in names:
            continue
        if kind is not None and kind not in entry.site_kinds:
            continue
        if require is not None and not require(entry):
            continue
        names.append(entry.cls.__name__)
    return "use " + _join(names) if names else "no registered estimator applies"
