# SPDX-License-Identifier: Apache-2.0
"""
The benchmark's references are the same estimators: with the same random
numbers, each hand-written PyTorch loss (``benchmarks/handwritten.py``) has the
gradient of the Pyro estimator it is timed against. And the benchmark's
contenders and memory accounting run.
"""

import itertools
import os
import sys

import pyro
import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

from pyro_discrete import ExpectELBO, TraceScoreELBO, VarGradELBO  # noqa: E402
from pyro_discrete.registry import REGISTRY  # noqa: E402

from bench_common import BernoulliVAE, DiscreteVAE, synthetic_binary_images  # noqa: E402
from handwritten import LOSSES  # noqa: E402
from run_benchmarks import PYRO_ELBOS, builders, contender, memory_use, takes  # noqa: E402

PYRO_ESTIMATORS = {
    "loo": lambda: TraceScoreELBO(num_particles=5, baseline="loo", max_plate_nesting=1),
    "score": lambda: TraceScoreELBO(num_particles=5, baseline=None, max_plate_nesting=1),
    "vargrad": lambda: VarGradELBO(num_particles=5, max_plate_nesting=1),
    "expect": lambda: ExpectELBO(max_plate_nesting=1),
}


@pytest.mark.parametrize("name", sorted(PYRO_ESTIMATORS))
def test_handwritten_step_has_the_estimators_gradient(name):
    torch.manual_seed(0)
    vae = DiscreteVAE(latents=2, categories=3).double()
    x = synthetic_binary_images(6).double()
    params = list(vae.parameters())
    elbo = PYRO_ESTIMATORS[name]()
    num_samples = elbo.num_particles
    # both draw their categorical samples with one torch.rand of the same shape
    torch.manual_seed(1)
    loss = elbo.differentiable_loss(vae.model, vae.guide, x)
    pyro_grads = torch.autograd.grad(loss, params)
    torch.manual_seed(1)
    hand_grads = torch.autograd.grad(LOSSES[name](vae, x, num_samples), params)
    for p, h in zip(pyro_grads, hand_grads):
        assert torch.allclose(p, h, rtol=1e-9, atol=1e-9), (p - h).abs().max()
    if name == "expect":
        assert loss.item() == pytest.approx(LOSSES[name](vae, x, 1).item(), rel=1e-12)


def test_handwritten_check_can_fail():
    # a different estimator (no baseline vs leave-one-out) is told apart
    torch.manual_seed(0)
    vae = DiscreteVAE(latents=2, categories=3).double()
    x = synthetic_binary_images(6).double()
    params = list(vae.parameters())
    torch.manual_seed(1)
    loss = PYRO_ESTIMATORS["loo"]().differentiable_loss(vae.model, vae.guide, x)
    pyro_grads = torch.autograd.grad(loss, params)
    torch.manual_seed(1)
    hand_grads = torch.autograd.grad(LOSSES["score"](vae, x, 5), params)
    assert not all(torch.allclose(p, h, rtol=1e-9, atol=1e-9) for p, h in zip(pyro_grads, hand_grads))


@pytest.mark.registry_check
@pytest.mark.parametrize("estimator", list(REGISTRY) + list(PYRO_ELBOS))
def test_benchmark_contenders_run(estimator):
    # every registered estimator is in the benchmark grid: its SVI and torch steps (and its
    # hand-written step, where one exists) run, and their memory is accounted
    torch.set_default_dtype(torch.float32)
    with pyro.validation_enabled(False):
        categorical = takes(estimator, "onehot")
        base = DiscreteVAE(latents=2) if categorical else BernoulliVAE(latents=8, hidden=16)
        batches = itertools.cycle(synthetic_binary_images(8).split(4))
        _, hand, kind = contender(estimator)
        hand = hand if categorical else None
        build = builders(estimator, base, 2 if kind == "particles" else 1, batches)
        assert set(build) == ({"svi", "torch", "hand"} if hand else {"svi", "torch"})
        for key, make in build.items():
            pyro.clear_param_store()  # as the grid does between contenders
            step = make()
            loss = step()
            assert loss == loss  # not NaN
            pyro.clear_param_store()
            peak, step_bytes = memory_use(make, torch.device("cpu"), warmup=1)
            # at least the parameters and their gradients are held
            num_bytes = 4 * sum(p.numel() for p in base.parameters())
            assert peak >= 2 * num_bytes > 0 and 0 < step_bytes <= peak, (key, peak, step_bytes)
