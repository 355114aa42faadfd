# SPDX-License-Identifier: Apache-2.0
"""
Worker functions of ``test_distributed.py``: each runs in one of several CPU
processes (gloo), started by :func:`torch.multiprocessing.spawn`, and writes
what the test checks to ``out/rank{r}.pt``.

The model: ``N`` data points of ``D`` binary pixels, one one-hot ``C``-way latent per
data point; the guide is a linear encoder, the decoder a ``C x D`` table of
logits. The plate's size is the whole data set and each process sees its shard
(``pyro.plate("data", N, subsample=index)``), as in
``examples/lightning_ddp.py``.
"""

import os

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyro_discrete import ExpectELBO, registry

N, D, C = 24, 4, 3
UNION = torch.arange(0, 16)  # the global batch: rank r sees UNION[r::world]


def data():
    generator = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.full((N, D), 0.4, dtype=torch.float64), generator=generator)


class TinyVAE(nn.Module):
    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.encoder = nn.Linear(D, C).double()
        with torch.no_grad():
            self.encoder.weight.copy_(torch.randn(C, D, generator=generator, dtype=torch.float64))
            self.encoder.bias.copy_(torch.randn(C, generator=generator, dtype=torch.float64))
        self.decoder = nn.Parameter(torch.randn(C, D, generator=generator, dtype=torch.float64))

    def model(self, x, index):
        with pyro.plate("data", N, subsample=index):
            z = pyro.sample("z", dist.OneHotCategorical(logits=x.new_zeros(C)))
            pyro.sample("x", dist.Bernoulli(logits=z @ self.decoder).to_event(1), obs=x)

    def guide(self, x, index):
        with pyro.plate("data", N, subsample=index):
            pyro.sample("z", dist.OneHotCategorical(logits=self.encoder(x)))


class Loss(nn.Module):
    """The VAE and ``elbo(model, guide)`` in one module (what DDP wraps)."""

    def __init__(self, elbo):
        super().__init__()
        self.vae = TinyVAE()
        self.loss = elbo(self.vae.model, self.vae.guide)

    def forward(self, x, index):
        return self.loss(x, index)


def flat_grad(module):
    return torch.cat([p.grad.reshape(-1) for p in module.vae.parameters()])


def union_gradient(elbo):
    """The single-process gradient and loss of the whole global batch."""
    module = Loss(elbo)
    loss = module(data()[UNION], UNION)
    loss.backward()
    return flat_grad(module), loss.detach()


def _setup(rank, world, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world)


def _shard(rank, world):
    index = UNION[rank::world]
    return data()[index], index


def gradients(rank, world, port, out, estimator, num_draws, num_particles):
    """``num_draws`` DDP-averaged gradients of ``estimator`` (rank-specific seeds)."""
    _setup(rank, world, port)
    try:
        pyro.set_rng_seed(100 + rank)
        module = DistributedDataParallel(Loss(registry.make(estimator, num_particles)))
        x, index = _shard(rank, world)
        draws, losses = [], []
        for _ in range(num_draws):
            module.zero_grad()
            loss = module(x, index)
            loss.backward()
            draws.append(flat_grad(module.module))
            losses.append(loss.detach())
        reference, reference_loss = union_gradient(ExpectELBO())
        torch.save(
            {
                "draws": torch.stack(draws),
                "losses": torch.stack(losses),
                "reference": reference,
                "reference_loss": reference_loss,
            },
            os.path.join(out, "rank{}.pt".format(rank)),
        )
    finally:
        tdist.destroy_process_group()


def state(rank, world, port, out, estimator, num_steps, num_particles):
    """
    ``num_steps`` SGD steps under DDP; saves the estimator's state and its
    auxiliary parameters, and the same steps' state from one process that sees
    only this rank's shard (with this rank's seed).
    """
    _setup(rank, world, port)
    try:
        x, index = _shard(rank, world)

        def train(distributed):
            pyro.clear_param_store()  # the two runs must not share the control variate's parameters
            pyro.set_rng_seed(100 + rank)
            elbo = registry.make(estimator, num_particles)
            loss = Loss(elbo)
            module = DistributedDataParallel(loss) if distributed else loss
            initial = {k: v.detach().clone() for k, v in loss.loss.auxiliary.state_dict().items()}
            optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
            for _ in range(num_steps):
                optimizer.zero_grad()
                module(x, index).backward()
                optimizer.step()
            auxiliary = {k: v.detach().clone() for k, v in loss.loss.auxiliary.state_dict().items()}
            return {"elbo": elbo.state_dict(), "auxiliary": auxiliary, "initial_auxiliary": initial}

        torch.save(
            {"ddp": train(True), "alone": train(False)},
            os.path.join(out, "rank{}.pt".format(rank)),
        )
    finally:
        tdist.destroy_process_group()
