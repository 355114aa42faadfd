# SPDX-License-Identifier: Apache-2.0
"""
Estimators under data-parallel training: 2 CPU processes (gloo) running
:class:`~torch.nn.parallel.DistributedDataParallel` on ``elbo(model, guide)``,
each on its shard of a global batch whose plate is the whole data set
(``tests/distributed_workers.py``), and checkpoints that resume.
"""

import socket

import distributed_workers as workers
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from pyro_discrete import registry

WORLD = 2

pytestmark = pytest.mark.skipif(not tdist.is_available() or not tdist.is_gloo_available(), reason="needs gloo")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, tmp_path, *args):
    mp.spawn(fn, args=(WORLD, _free_port(), str(tmp_path)) + args, nprocs=WORLD, join=True)
    return [torch.load(tmp_path / "rank{}.pt".format(r)) for r in range(WORLD)]


def _z(draws, reference):
    mean = draws.mean(0)
    se = draws.std(0) / draws.shape[0] ** 0.5
    return ((mean - reference).abs() / se.clamp(min=1e-12)).max().item()


def test_expect_averaged_gradient_is_the_union_gradient(tmp_path):
    results = _spawn(workers.gradients, tmp_path, "expect", 1, 1)
    for result in results:
        gradient, reference = result["draws"][0], result["reference"]
        assert torch.allclose(gradient, reference, atol=1e-6, rtol=0), (gradient - reference).abs().max()
        # the processes' losses average to the loss of the union
        loss = sum(r["losses"][0] for r in results) / WORLD
        assert abs(loss - result["reference_loss"]) < 1e-6
    # the check can fail: the reference is far from zero, and a process whose plate were sized by its
    # shard instead of the data set (no subsampling scale) would be off by the factor 8/24
    assert reference.abs().max() > 0.1
    assert not torch.allclose(gradient * 8 / 24, reference, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_leave_one_out_is_unbiased_for_the_union_gradient(tmp_path):
    results = _spawn(workers.gradients, tmp_path, "loo", 600, 4)
    draws, reference = results[0]["draws"], results[0]["reference"]
    # DDP left both processes with the same averaged gradient
    assert torch.allclose(results[1]["draws"], draws, atol=1e-10)
    # the processes drew different samples
    assert not torch.allclose(results[0]["losses"], results[1]["losses"])
    z = _z(draws, reference)
    assert z < 4.5, "leave-one-out under DDP: max z-score {:.2f} against the union's exact gradient".format(z)
    losses = (results[0]["losses"] + results[1]["losses"]) / WORLD
    loss_z = abs(losses.mean() - results[0]["reference_loss"]) / (losses.std() / len(losses) ** 0.5)
    assert loss_z < 4.5
    # the same check fails for a gradient 5% off
    assert _z(draws, 1.05 * reference) > 4.5


def test_moving_average_baselines_are_per_process(tmp_path):
    # documented (examples/lightning_ddp.py, docs): each process averages the costs of its own shard
    # one step, so that both runs start from the same weights: the DDP run's average is the one a process
    # alone on that shard computes (it never sees the other process's costs)
    results = _spawn(workers.state, tmp_path, "moving_average", 1, 1)
    averages = [r["ddp"]["elbo"]["surrogate"] for r in results]
    for result in results:
        assert _flat_state(result["ddp"]["elbo"]) == pytest.approx(_flat_state(result["alone"]["elbo"]), abs=1e-12)
    assert _flat_state({"s": averages[0]}) != pytest.approx(_flat_state({"s": averages[1]}), abs=1e-6)


def test_learned_control_variates_are_synchronized(tmp_path):
    # RELAX/REBAR's eta and temperature are parameters of elbo(model, guide): DDP averages their gradients
    results = _spawn(workers.state, tmp_path, "rebar", 4, 1)
    first, second = (r["ddp"]["auxiliary"] for r in results)
    assert first.keys() and first.keys() == second.keys()
    for key in first:
        assert torch.allclose(first[key], second[key], atol=1e-12), key
    moved = any(not torch.allclose(first[k], results[0]["ddp"]["initial_auxiliary"][k]) for k in first)
    assert moved, "the control variate's parameters did not learn"
    # alone, each process would have learned its own values
    alone = [r["alone"]["auxiliary"] for r in results]
    assert any(not torch.allclose(alone[0][k], alone[1][k]) for k in first)


def _flat_state(state):
    values = []

    def walk(x):
        if torch.is_tensor(x):
            values.extend(x.reshape(-1).tolist())
        elif isinstance(x, dict):
            for k in sorted(x):
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, (int, float)):
            values.append(float(x))

    walk(state)
    return values


# ----------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------
def _svi_run(elbo, steps, x, state=None):
    model, guide = _svi_model()
    optim = pyro.optim.Adam({"lr": 0.05})
    svi = pyro.infer.SVI(model, guide, optim, loss=elbo)
    if state is not None:
        pyro.get_param_store().set_state(state["params"])
        optim.set_state(state["optim"])
        elbo.load_state_dict(state["elbo"])
        torch.set_rng_state(state["rng"])
    for _ in range(steps):
        svi.step(x)
    return svi, optim


def _svi_model():
    def model(x):
        decoder = pyro.param("decoder", torch.zeros(3, x.shape[-1]))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.OneHotCategorical(logits=x.new_zeros(3)))
            pyro.sample("x", dist.Bernoulli(logits=z @ decoder).to_event(1), obs=x)

    def guide(x):
        weight = pyro.param("weight", torch.zeros(x.shape[-1], 3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.OneHotCategorical(logits=x @ weight))

    return model, guide


def _params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


@pytest.mark.parametrize("estimator", ["moving_average", "rebar"])
def test_state_dict_with_param_store_resumes_to_the_same_step(estimator):
    x = torch.bernoulli(torch.full((8, 4), 0.3))
    pyro.set_rng_seed(3)
    _svi_run(registry.make(estimator, 2), 6, x)
    uninterrupted = _params()

    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    elbo = registry.make(estimator, 2)
    svi, optim = _svi_run(elbo, 3, x)
    saved = {
        "params": pyro.get_param_store().get_state(),
        "optim": optim.get_state(),
        "elbo": elbo.state_dict(),
        "rng": torch.get_rng_state(),
    }
    pyro.clear_param_store()
    pyro.set_rng_seed(12345)  # whatever happens in between
    _svi_run(registry.make(estimator, 2), 3, x, state=saved)
    resumed = _params()
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    assert saved["elbo"]["num_steps"] == 3
    # the state matters: resuming without it gives another step
    pyro.clear_param_store()
    _svi_run(registry.make(estimator, 2), 3, x, state=dict(saved, elbo=registry.make(estimator, 2).state_dict()))
    assert any(not torch.equal(_params()[n], uninterrupted[n]) for n in uninterrupted)


def test_lightning_checkpoint_resumes_to_the_same_step(tmp_path):
    pytest.importorskip("lightning")
    import lightning_checkpoint

    uninterrupted = lightning_checkpoint.train(tmp_path, epochs=2)
    lightning_checkpoint.train(tmp_path, epochs=1, save=tmp_path / "stop.ckpt")
    resumed = lightning_checkpoint.train(tmp_path, epochs=2, resume=tmp_path / "stop.ckpt")
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    # and a different seed would not have given these weights
    other = lightning_checkpoint.train(tmp_path, epochs=2, seed=1)
    assert any(not torch.equal(other[n], uninterrupted[n]) for n in uninterrupted)
