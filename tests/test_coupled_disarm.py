# SPDX-License-Identifier: Apache-2.0
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_discrete.arsm as arsm
from pyro_discrete import ARSMELBO, CoupledDisARMELBO, config_estimator

from common import check_unbiased, gradient_draws, init_params, make_family, reference


def test_stick_breaking_choices_give_the_categorical():
    torch.manual_seed(0)
    logits = torch.randn(7, 6, dtype=torch.float64) * 3
    p = torch.sigmoid(arsm.stick_breaking_logits(logits))  # (7, 5)
    not_before = torch.cat([torch.ones(7, 1, dtype=p.dtype), (1 - p).cumprod(-1)], -1)
    probs = not_before * torch.cat([p, torch.ones(7, 1, dtype=p.dtype)], -1)
    assert torch.allclose(probs, logits.softmax(-1), atol=1e-12)


def test_draws_and_antithetic_draws_have_the_sites_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([1.0, -0.5, 2.0, 0.0, -3.0])
    eta = arsm.stick_breaking_logits(logits)
    u = torch.rand(200000, 4)
    z = arsm._first_success(u < torch.sigmoid(eta))
    z_anti = arsm._pseudo_actions(arsm.CATEGORICAL, u, eta, stick_breaking=True)[0]
    probs = logits.softmax(-1)
    for draws in (z, z_anti):
        freq = torch.bincount(draws, minlength=5).to(probs.dtype) / len(draws)
        assert torch.allclose(freq, probs, atol=5 * (probs * (1 - probs) / len(draws)).sqrt().max().item())
    assert (z != z_anti).float().mean() > 0.5  # coupled: they differ more often than independent draws would


def _categorical_model_guide(num_categories=10):
    table = torch.linspace(-2, 2, num_categories)
    data = torch.tensor([0.5, -1.0, 1.7])

    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(num_categories)))
            pyro.sample("x", dist.Normal(table[z], 0.7), obs=data)

    def guide():
        logits = pyro.param("cd_logits", torch.linspace(-1, 1, 3 * num_categories).reshape(3, num_categories).sin())
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Categorical(logits=logits))

    return model, guide


def test_two_evaluations_per_particle_whatever_the_categories():
    model, guide = _categorical_model_guide(10)
    pyro.clear_param_store()
    elbo = CoupledDisARMELBO(num_particles=3)
    elbo.loss_and_grads(model, guide)
    assert elbo.num_evaluations == 6
    arsm_elbo = ARSMELBO(num_particles=3)
    arsm_elbo.loss_and_grads(model, guide)
    assert arsm_elbo.num_evaluations == 3 * 46


def test_unbiased_and_the_test_fails_without_the_rao_blackwellized_terms(monkeypatch):
    family = make_family("amortized_vae")
    init_params(family)
    ref = reference(family)
    stats = gradient_draws(CoupledDisARMELBO(num_particles=2), family, num_batches=50, draws_per_batch=40)
    check_unbiased(stats, ref, num_se=5.0, what="coupled_disarm")

    def both_reached_only(noise, eta, f_true, f_anti):
        # DisARM on the choices both sequences reach, the others' terms dropped
        p = torch.sigmoid(eta.detach())
        b, b_anti = noise < p, 1.0 - noise < p
        positions = torch.arange(eta.shape[-1])
        both = (positions <= arsm._first_success(b).unsqueeze(-1)) & (
            positions <= arsm._first_success(b_anti).unsqueeze(-1)
        )
        df = (f_true - f_anti).reshape(f_true.shape + (1,) * (eta.dim() - f_true.dim()))
        sign = 1.0 - 2.0 * b_anti.to(eta.dtype)
        return 0.5 * df * sign * (b != b_anti).to(eta.dtype) * torch.sigmoid(eta.detach().abs()) * both

    monkeypatch.setattr(arsm, "_stick_breaking_gradient", both_reached_only)
    stats = gradient_draws(CoupledDisARMELBO(num_particles=2), family, num_batches=50, draws_per_batch=40)
    with pytest.raises(AssertionError, match="biased beyond"):
        check_unbiased(stats, ref, num_se=5.0, what="without Rao-Blackwellization")


def test_lower_variance_than_arsm_at_equal_evaluations_on_ten_categories():
    # 46 evaluations: ARSM one particle, coupled DisARM 23
    model, guide = _categorical_model_guide(10)
    variances = {}
    for label, elbo in [("coupled", CoupledDisARMELBO(num_particles=23)), ("arsm", ARSMELBO(num_particles=1))]:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        grads = []
        for _ in range(200):
            guide()
            param = pyro.param("cd_logits").unconstrained()
            (grad,) = torch.autograd.grad(elbo.differentiable_loss(model, guide), param)
            grads.append(grad)
        variances[label] = torch.stack(grads).var(0).sum().item()
    assert variances["coupled"] < variances["arsm"], variances


def test_a_site_annotated_coupled_disarm_in_an_arsm_elbo_is_drawn_by_stick_breaking():
    # per site: the mix draws z for coupled DisARM, and the result is the standalone estimator draw for draw
    model, guide = _categorical_model_guide(5)
    grads = []
    for elbo, guide_fn in [
        (CoupledDisARMELBO(num_particles=2), guide),
        (ARSMELBO(num_particles=2), config_estimator(guide, {"z": "coupled_disarm"})),
    ]:
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        guide()
        param = pyro.param("cd_logits").unconstrained()
        pyro.set_rng_seed(3)
        (grad,) = torch.autograd.grad(elbo.differentiable_loss(model, guide_fn), param)
        grads.append(grad)
    assert torch.allclose(grads[0], grads[1])
