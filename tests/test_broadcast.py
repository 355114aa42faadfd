# SPDX-License-Identifier: Apache-2.0
"""
:func:`pyro_discrete.broadcastable`: a module that takes one batch dim runs
under vectorized particles, and equals the module applied per particle; the
error after a failed vectorized run names the module and the wrapper.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_discrete import TraceScoreELBO, broadcastable
from pyro_discrete.errors import EstimatorError


def test_linear_and_lstm_cell_equal_the_module_per_leading_index():
    torch.manual_seed(0)
    cell = nn.LSTMCell(3, 5)
    wrapped = broadcastable(cell)
    x = torch.randn(4, 2, 6, 3)  # two extra dims, batch 6
    h = torch.randn(1, 6, 5)  # broadcast over the first extra dim
    c = torch.randn(2, 6, 5)
    h2, c2 = wrapped(x, (h, c))
    assert h2.shape == (4, 2, 6, 5) and c2.shape == (4, 2, 6, 5)
    for i in range(4):
        for j in range(2):
            a, b = cell(x[i, j], (h[0], c[j]))
            assert torch.allclose(h2[i, j], a, atol=1e-6) and torch.allclose(c2[i, j], b, atol=1e-6)
    # no extra dims: the module as it is; its parameters are the module's
    assert torch.equal(wrapped(x[0, 0], (h[0], c[0]))[0], cell(x[0, 0], (h[0], c[0]))[0])
    assert list(wrapped.parameters()) == list(cell.parameters())


def test_images_and_callables():
    conv = nn.Conv2d(1, 2, 3)
    wrapped = broadcastable(conv, input_dims=3)
    x = torch.randn(5, 4, 1, 8, 8)
    assert torch.allclose(wrapped(x)[2], conv(x[2]), atol=1e-6)
    flat = broadcastable(lambda t: t.flatten(1).sum(-1, keepdim=True), input_dims=2)
    assert flat(torch.ones(3, 2, 4, 4)).shape == (3, 2, 1)


class Flattening(nn.Module):
    """A network written for (batch, features): flattens all but the first dim."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, x):
        return self.linear(x.reshape(x.shape[0], -1)).squeeze(-1)


def _pair(net):
    data = torch.tensor([0.0, 1.0, 1.0])

    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5).expand([3, 4]).to_event(1))
            pyro.sample("x", dist.Normal(net(z), 1.0), obs=data)

    def guide():
        pyro.module("net", net)
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("q", torch.zeros(3, 4))).to_event(1))

    return model, guide


def test_the_broadcast_error_names_the_module_and_the_wrapper_and_the_wrapper_runs():
    pyro.clear_param_store()
    torch.manual_seed(0)
    net = Flattening()
    with pytest.raises(EstimatorError) as info:
        TraceScoreELBO(4, max_plate_nesting=1).differentiable_loss(*_pair(net))
    message = str(info.value)
    assert "Flattening" in message and "broadcastable" in message
    model, guide = _pair(broadcastable(net))
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vectorized = TraceScoreELBO(4, max_plate_nesting=1).differentiable_loss(model, guide)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    assert torch.isfinite(vectorized)
    # the same estimate as the particles run one after another, in expectation: here, at the same values
    looped = TraceScoreELBO(4, max_plate_nesting=1, vectorize_particles=False).loss(*_pair(net))
    assert abs(vectorized.item() - looped) < 3.0
