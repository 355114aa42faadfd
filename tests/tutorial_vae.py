# SPDX-License-Identifier: Apache-2.0
"""The Storchastic tutorial's discrete VAE (784-512-256-(2x10)) on synthetic binary images."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn


def synthetic_images(num, seed=0):
    """Binary 28x28 images: 10 random stroke prototypes with 5% pixel noise (no download)."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.zeros(10, 28, 28)
    for k in range(10):
        r = torch.randint(4, 24, (6,), generator=gen)
        protos[k, r[0] : r[0] + 4, :] = 1.0
        protos[k, :, r[1] : r[1] + 3] = 1.0
        protos[k, r[2] : r[3], r[4] : r[5]] = 1.0
    labels = torch.randint(0, 10, (num,), generator=gen)
    flips = torch.rand(num, 28, 28, generator=gen) < 0.05
    images = (protos[labels] + flips.float()).remainder(2.0)
    return images.reshape(num, 784).to(torch.get_default_dtype())


class TutorialVAE(nn.Module):
    def __init__(self, latents=2, categories=10):
        super().__init__()
        self.latents, self.categories = latents, categories
        self.encoder = nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, latents * categories)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latents * categories, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 784)
        )

    def model(self, x):
        pyro.module("decoder", self.decoder)
        prior = x.new_zeros(self.latents, self.categories)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.OneHotCategorical(logits=prior).to_event(1))
            logits = self.decoder(z.reshape(z.shape[:-2] + (-1,)))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        logits = self.encoder(x).reshape(x.shape[:-1] + (self.latents, self.categories))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.OneHotCategorical(logits=logits).to_event(1))


def make_tutorial_vae(num_batches=8, batch_size=64, seed=0):
    torch.manual_seed(seed)
    vae = TutorialVAE()
    images = synthetic_images(num_batches * batch_size, seed)
    return vae.model, vae.guide, list(images.split(batch_size))
