# SPDX-License-Identifier: Apache-2.0
"""
Networks that accept extra leading dims.

Vectorized particles, enumeration and replays lay values out along batch dims
left of a model's plates. Elementwise code broadcasts over them; most
``torch.nn`` modules do not (``nn.LSTMCell`` takes one batch dim, a network
that flattens its input mixes the extra dims into its features).
:func:`broadcastable` wraps such a module: the extra leading dims of its inputs
are broadcast together, folded into its batch dim, and restored on its
outputs, so that the module sees the shapes it was written for.
"""

import functools
import math

import torch
from torch import nn

__all__ = ["broadcastable", "failing_module"]


def _tensors(value):
    # the tensors of a (possibly nested) tuple/list, in order
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _map(value, fn):
    if torch.is_tensor(value):
        return fn(value)
    if isinstance(value, (tuple, list)):
        mapped = [_map(v, fn) for v in value]
        return type(value)(mapped) if isinstance(value, list) else tuple(mapped)
    return value


class _Broadcastable(nn.Module):
    def __init__(self, module, batch_dims, input_dims):
        super().__init__()
        self.module = module
        self.batch_dims = batch_dims
        self.input_dims = input_dims

    def forward(self, *args, **kwargs):
        core = self.batch_dims + self.input_dims
        tensors = _tensors(args) + _tensors(list(kwargs.values()))
        if not tensors or all(t.dim() <= core for t in tensors):
            return self.module(*args, **kwargs)
        for t in tensors:
            if t.dim() < core:
                raise ValueError(
                    "broadcastable: an input has shape {}, fewer than the {} dims the module takes per call "
                    "(batch_dims={}, input_dims={}).".format(tuple(t.shape), core, self.batch_dims, self.input_dims)
                )
        extra = torch.broadcast_shapes(*[t.shape[: t.dim() - core] for t in tensors])
        batch = torch.broadcast_shapes(*[t.shape[t.dim() - core : t.dim() - self.input_dims] for t in tensors])
        flat = math.prod(extra) * math.prod(batch)

        def fold(t):
            lead = t.shape[: t.dim() - self.input_dims]
            t = t.expand(extra + batch + t.shape[len(lead) :]) if lead != extra + batch else t
            return t.reshape((flat,) + t.shape[len(extra) + len(batch) :])

        out = self.module(*_map(args, fold), **{k: _map(v, fold) for k, v in kwargs.items()})

        def unfold(t):
            if t.dim() == 0 or t.shape[0] != flat:
                return t
            return t.reshape(extra + batch + t.shape[1:])

        return _map(out, unfold)


def broadcastable(module, batch_dims=1, input_dims=1):
    """
    ``module`` (a :class:`torch.nn.Module` or any callable on tensors) made to
    accept extra leading dims: for inputs shaped ``extra + batch + per-example``
    (``batch`` of ``batch_dims`` dims, ``per-example`` of ``input_dims`` dims),
    the ``extra`` dims of all tensor inputs (nested tuples and lists included,
    e.g. an LSTM cell's ``(h, c)``) are broadcast together and folded into one
    batch dim of size ``prod(extra) * prod(batch)``; each tensor output whose
    first dim is that size gets ``extra + batch`` back. Inputs with no extra
    dims call the module as it is. A module stays a module (its parameters
    are the wrapped module's), so ``pyro.module`` and optimizers see it.

    Example: an ``nn.LSTMCell`` in a guide run under vectorized particles::

        cell = pyro_discrete.broadcastable(nn.LSTMCell(10, 32))
        h, c = cell(x, (h, c))   # x: (particles, batch, 10); h, c: (particles, batch, 32)

    :param int batch_dims: the batch dims the module takes (1 for ``nn.Linear``
        on ``(batch, features)``).
    :param int input_dims: the dims of one example (1 for a feature vector, 3
        for an image ``(C, H, W)``).
    """
    if isinstance(module, nn.Module):
        return _Broadcastable(module, batch_dims, input_dims)
    wrapper = _Broadcastable(_Callable(module), batch_dims, input_dims)
    functools.update_wrapper(wrapper, module, updated=())
    return wrapper


class _Callable(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def failing_module(error):
    """
    Where in the :class:`torch.nn.Module` s an error was raised, from the
    traceback of ``error`` and of the errors it was raised from: the class
    names of the modules whose ``forward`` was running, outermost first,
    joined by ``" > "`` (``"Encoder > Linear"``), or ``None``.
    """
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    names = []
    for e in reversed(chain):  # the original error first: its traceback reaches into the module
        tb = e.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and not isinstance(owner, (_Broadcastable, _Callable)):
                name = type(owner).__name__
                if not names or names[-1] != name:
                    names.append(name)
            tb = tb.tb_next
        if names:
            break
    return " > ".join(names) if names else None
