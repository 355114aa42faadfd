# SPDX-License-Identifier: Apache-2.0
"""
Pyro's AIR pattern (``examples/air.py``): sequential presence sites, continuous
sites masked by them, a baseline network passed as ``baseline_value`` with a
decaying average. A guide written for ``TraceGraph_ELBO`` gets
``TraceGraph_ELBO``'s gradient from :class:`~pyro_discrete.TraceScoreELBO`,
for every parameter, the baseline network's included, draw for draw.
"""

import os
import sys

import pyro
import pytest
import torch
from pyro.infer import TraceGraph_ELBO

from pyro_discrete import TraceScoreELBO, VarGradELBO

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))
from air import AIR, multi_digit_canvases  # noqa: E402


def _air():
    torch.manual_seed(0)
    air = AIR(canvas=12, steps=3, what=2, hidden=8)
    images, _ = multi_digit_canvases(6, canvas=12, max_digits=2, seed=0)
    return air, images


def _gradients(elbo, air, images, seed, steps=3):
    """The gradients after ``steps`` steps of ``loss_and_grads`` (parameters unchanged), from one seed."""
    pyro.set_rng_seed(seed)
    params = list(air.parameters())
    for _ in range(steps):
        for p in params:
            p.grad = None
        loss = elbo.loss_and_grads(air.model, air.guide, images)
    return loss, [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]


@pytest.mark.parametrize(
    "particles,vectorize", [(1, False), (4, True), (4, False)], ids=["1 particle", "4 vectorized", "4 looped"]
)
def test_equals_tracegraph_elbo_draw_for_draw(particles, vectorize):
    air, images = _air()
    ours = TraceScoreELBO(num_particles=particles, vectorize_particles=vectorize, max_plate_nesting=1)
    pyros = TraceGraph_ELBO(num_particles=particles, vectorize_particles=vectorize, max_plate_nesting=1)
    # three steps: the decaying averages have moved from zero by the last
    loss_a, ours_grads = _gradients(ours, air, images, seed=1)
    loss_b, pyro_grads = _gradients(pyros, air, images, seed=1)
    assert abs(loss_a - loss_b) < 1e-6 * (1 + abs(loss_b))
    names = [n for n, _ in air.named_parameters()]
    baseline_moved = False
    for name, a, b in zip(names, ours_grads, pyro_grads):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-8), (name, (a - b).abs().max())
        baseline_moved |= name.startswith("baseline") and bool(b.abs().sum() > 0)
    assert baseline_moved  # the baseline network is trained, as TraceGraph_ELBO trains it


def test_the_baseline_network_learns_through_svi():
    air, images = _air()
    before = [p.detach().clone() for p in air.baseline.parameters()]
    svi = pyro.infer.SVI(air.model, air.guide, pyro.optim.Adam({"lr": 0.01}), loss=TraceScoreELBO(num_particles=1))
    for _ in range(5):
        svi.step(images)
    assert all(not torch.equal(b, p) for b, p in zip(before, air.baseline.parameters()))


def test_vargrad_says_it_ignores_the_baseline_network():
    from pyro_discrete.traces import IgnoredInferOption

    air, images = _air()
    with pytest.warns(IgnoredInferOption, match="not used and not trained") as record:
        VarGradELBO(num_particles=2, vectorize_particles=False).differentiable_loss(air.model, air.guide, images)
    assert "tensor(" not in str(record[0].message)  # the options, not a tensor of numbers
