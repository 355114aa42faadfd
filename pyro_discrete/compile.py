# SPDX-License-Identifier: Apache-2.0
"""
``jit_compile=True``: the step compiled with :func:`pyro.ops.jit.trace`, once
per model, guide and shapes of the tensor arguments, as
:class:`~pyro.infer.JitTrace_ELBO` does.
"""

import weakref

import pyro.ops.jit
import torch

__all__ = ["CompileCache"]


def _hashable(value):
    try:
        hash(value)
        return ("value", value)
    except TypeError:
        return ("id", id(value))


class CompileCache:
    """
    The compiled steps of one ELBO. Tensors among the positional arguments
    are traced as inputs; everything else is fixed in the compiled function,
    so it is part of the key, as are the tensors' shapes, dtypes and devices.
    The compiled closure holds the ELBO weakly.
    """

    def __init__(self):
        self.functions = {}

    def __len__(self):
        return len(self.functions)

    def __call__(self, elbo, model, guide, args, kwargs, update):
        key = (
            model,
            guide,
            update,
            tuple((a.shape, a.dtype, a.device) if torch.is_tensor(a) else _hashable(a) for a in args),
        )
        compiled = self.functions.get(key)
        if compiled is None:
            template = tuple(None if torch.is_tensor(a) else a for a in args)
            compiled = _compile(elbo, model, guide, update, template)
            self.functions[key] = compiled
        return compiled(*(a for a in args if torch.is_tensor(a)), **kwargs)


def _compile(elbo, model, guide, update, template):
    # pyro.ops.jit.trace handles the parameters (traced as inputs, read from the
    # param store on every call); ``template``: the positional arguments, None
    # where a tensor goes
    weak_elbo = weakref.ref(elbo)

    def loss_and_surrogate(*tensors, **kwargs):
        tensors = iter(tensors)
        args = tuple(next(tensors) if a is None else a for a in template)
        loss, surrogate = weak_elbo()._traced_loss_and_surrogate(model, guide, args, kwargs, update)
        if not torch.is_tensor(loss):
            loss = torch.zeros(())
        if not torch.is_tensor(surrogate):  # no parameter to differentiate; a traced function returns tensors
            surrogate = loss.new_zeros(())
        return loss, surrogate

    return pyro.ops.jit.trace(
        loss_and_surrogate, ignore_warnings=elbo.ignore_jit_warnings, jit_options=elbo.jit_options
    )
