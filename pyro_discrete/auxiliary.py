# SPDX-License-Identifier: Apache-2.0
r"""
Auxiliary parameters: what an estimator learns with an objective of its own,
such as a learned baseline (trained on the squared centered cost) or the
control variate of RELAX (trained on the variance of the gradient estimate).

An :class:`Auxiliary` holds an :class:`~torch.nn.Module`. During a gradient
step it is registered with :func:`pyro.module`, so that
:class:`~pyro.infer.SVI` finds its parameters and steps them like any Pyro
parameter; the ELBO's ``__call__`` module lists them among its parameters, so
that a torch optimizer over ``elbo(model, guide).parameters()`` steps them too.
Its weights are part of the ELBO's ``state_dict``.

**Gradient injection.** The surrogate loss of a step has one gradient for
every parameter; the auxiliary parameters must receive the gradient of their
own objective and nothing else, and the model and guide parameters must not
receive any of it. :meth:`Auxiliary.term` returns a tensor of value zero whose
gradient is exactly that:

.. math::

    t = \sum_j \langle \phi_j, \operatorname{stopgrad}(g_j) \rangle
        - \operatorname{stopgrad}(\cdot), \qquad
    g_j = \frac{\partial J}{\partial \phi_j} - \frac{\partial S}{\partial \phi_j},

where :math:`J` is the auxiliary objective and :math:`S` the part of the
surrogate that depends on :math:`\phi` (its gradient is cancelled, so that
the surrogate's :math:`\phi`-dependence does not leak into :math:`\phi`'s
update). Adding :math:`t` to the surrogate changes no other gradient.
"""

import pyro
import torch

__all__ = ["Auxiliary", "inject"]


def inject(params, grads):
    """A tensor of value zero whose gradient with respect to ``params[j]`` is ``grads[j]`` (and zero otherwise)."""
    terms = [(p * g.detach()).sum() for p, g in zip(params, grads) if g is not None]
    if not terms:
        return 0.0
    term = terms[0]
    for t in terms[1:]:
        term = term + t
    return term - term.detach()


class Auxiliary:
    """
    Parameters with an objective of their own.

    :param str name: the prefix of their names in Pyro's param store.
    :param torch.nn.Module module: the module that holds them.
    """

    def __init__(self, name, module):
        self.name = name
        self.module = module

    def register(self):
        """
        Registers the module with :func:`pyro.module` (call inside a gradient
        step, so that SVI captures the parameters).

        If the param store holds other tensors under the module's parameter
        names (a restored checkpoint, or another estimator of the same
        ``name``), the module takes their *values* and the store then holds
        the module's own tensors: the parameter objects never change, so a
        torch optimizer built over ``elbo(model, guide).parameters()`` keeps
        stepping the tensors that the estimator uses. (With
        ``pyro.module(..., update_module_params=True)`` the module would take
        the stored tensors themselves, and such an optimizer would silently
        step stale copies.)
        """
        store = pyro.get_param_store()
        for param_name, param in self.module.named_parameters():
            full_name = "{}$$${}".format(self.name, param_name)
            if full_name in store:
                stored = store[full_name]
                if stored is not param:
                    with torch.no_grad():
                        param.copy_(stored.detach().to(param))
                    del store[full_name]
        return pyro.module(self.name, self.module)

    def parameters(self):
        """The module's parameters that require a gradient."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def term(self, objective, surrogate=None):
        """
        A zero-valued tensor to add to the surrogate: its gradient with respect
        to the auxiliary parameters is that of ``objective`` (minus that of
        ``surrogate``, the part of the surrogate that depends on them); with
        respect to everything else it is zero.
        """
        params = self.parameters()
        if not params or not torch.is_tensor(objective) or not objective.requires_grad:
            return 0.0
        grads = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
        if surrogate is not None and torch.is_tensor(surrogate) and surrogate.requires_grad:
            leaked = torch.autograd.grad(surrogate, params, retain_graph=True, allow_unused=True)
            grads = [g if s is None else (-s if g is None else g - s) for g, s in zip(grads, leaked)]
        return inject(params, grads)
