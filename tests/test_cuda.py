# SPDX-License-Identifier: Apache-2.0
"""
Every estimator on CUDA tensors: the device follows the model's tensors.
The smoke test also runs on CPU (so that its code is exercised everywhere);
the CUDA cases skip without a GPU.
"""

import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_discrete.registry import REGISTRY

from common import applicable, check_unbiased, gradient_draws, init_params, make_family, reference

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
    ),
]


def _on(device, family):
    return tuple(a.to(device) if torch.is_tensor(a) else a for a in family.args)


@pytest.mark.registry_check
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family_name", ["to_event_onehot", "bernoulli_vector", "local_categorical_subsampled"])
@pytest.mark.parametrize("estimator", list(REGISTRY))
@pytest.mark.parametrize("device", DEVICES)
def test_estimator_runs_on_device(device, estimator, family_name, dtype):
    entry = REGISTRY[estimator]
    if not applicable(entry, make_family(family_name)):
        pytest.skip("{} does not take this family".format(estimator))
    torch.set_default_dtype(dtype)
    with torch.device(device):
        family = make_family(family_name)
        params = init_params(family)
        args = _on(device, family)
        svi = SVI(family.model, family.guide, Adam({"lr": 1e-2}), loss=entry.make())
        for _ in range(2):
            loss = svi.step(*args)
        assert loss == loss
        elbo = entry.make()
        loss = elbo.differentiable_loss(family.model, family.guide, *args)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    assert loss.device.type == device and loss.dtype == dtype
    for g in grads:
        if g is not None:
            assert g.device.type == device and g.dtype == dtype and torch.isfinite(g).all()


@pytest.mark.slow
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("estimator", [name for name, e in REGISTRY.items() if e.unbiased and not e.exact])
def test_unbiased_on_cuda(estimator):
    with torch.device("cuda"):
        family = make_family("to_event_onehot")
        init_params(family)
        args = _on("cuda", family)
        family.args = args
        ref = reference(family)
        stats = gradient_draws(REGISTRY[estimator].make(), family, args=args)
    check_unbiased(stats, ref, what="{} on CUDA".format(estimator))
