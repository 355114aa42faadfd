# SPDX-License-Identifier: Apache-2.0
"""
Optimizing an estimator's step must not change its gradient: for each
estimator whose step was made cheaper, the gradient after three SVI steps
(learned control variates and baselines included) from a fixed seed, in
float64, against the one the code gave before the change
(``tests/data/fixed_seed_gradients.json``, written by running this file).
"""

import json
import os
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam
from torch import nn

from pyro_discrete.registry import REGISTRY

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "fixed_seed_gradients.json")

#: the estimators whose steps were optimized, and the latent each takes
OPTIMIZED = {
    "rodeo": "bernoulli",
    "double_cv": "bernoulli",
    "unordered": "onehot",
    "sum_and_sample": "onehot",
    "rebar": "onehot",
    "arsm": "onehot",
    "indecater": "onehot",
    "gumbel_rao": "onehot",
}


class TinyVAE(nn.Module):
    def __init__(self, kind, latents=3, categories=4, pixels=12):
        super().__init__()
        self.kind, self.latents, self.categories = kind, latents, categories
        code = latents if kind == "bernoulli" else latents * categories
        self.encoder = nn.Sequential(nn.Linear(pixels, 16), nn.Tanh(), nn.Linear(16, code))
        self.decoder = nn.Sequential(nn.Linear(code, 16), nn.Tanh(), nn.Linear(16, pixels))

    def _fn(self, logits):
        if self.kind == "bernoulli":
            return dist.Bernoulli(logits=logits).to_event(1)
        return dist.OneHotCategorical(logits=logits.unflatten(-1, (self.latents, self.categories))).to_event(1)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            size = self.latents if self.kind == "bernoulli" else self.latents * self.categories
            z = pyro.sample("z", self._fn(x.new_zeros(size)))
            code = z if self.kind == "bernoulli" else z.flatten(-2)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(code)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self._fn(self.encoder(x)))


def gradients(name):
    """``{parameter: gradient}`` after three SVI steps from seed 0, float64."""
    torch.set_default_dtype(torch.float64)
    try:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = TinyVAE(OPTIMIZED[name])
        x = torch.bernoulli(torch.rand(5, 12))
        elbo = REGISTRY[name].make(max_plate_nesting=1)
        svi = SVI(vae.model, vae.guide, Adam({"lr": 0.05}), loss=elbo)
        for _ in range(3):
            svi.step(x)
        params = pyro.get_param_store()
        for p in params.values():
            p.grad = None
        elbo.loss_and_grads(vae.model, vae.guide, x)
        return {k: v.grad.flatten().tolist() for k, v in params.items() if v.grad is not None}
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("name", sorted(OPTIMIZED))
def test_gradient_unchanged_by_optimization(name):
    with open(REFERENCE) as f:
        reference = json.load(f)[name]
    got = gradients(name)
    assert sorted(got) == sorted(reference)
    for key, values in reference.items():
        expected = torch.tensor(values)
        assert torch.allclose(torch.tensor(got[key]), expected, rtol=1e-6, atol=1e-9), key
        assert expected.abs().max() > 0  # a gradient that is there to compare


if __name__ == "__main__":  # writes the reference from the code as it is
    out = {name: gradients(name) for name in sorted(OPTIMIZED)}
    os.makedirs(os.path.dirname(REFERENCE), exist_ok=True)
    with open(REFERENCE, "w") as f:
        json.dump(out, f)
    print("wrote", REFERENCE, file=sys.stderr)
