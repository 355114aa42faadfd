# SPDX-License-Identifier: Apache-2.0
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_discrete import TraceScoreELBO
from pyro_discrete.baselines import Baseline, MovingAverageBaseline

from common import (
    FAMILY_BUILDERS,
    assert_loss_methods_agree,
    check_unbiased,
    gradient_draws,
    init_params,
    make_family,
    reference,
)
from tutorial_vae import make_tutorial_vae

# the registry's entries (score, loo, moving_average) are checked in test_registry.py;
# here the aliases and other particle counts
BASELINES = [("loo", 8), ("batch_average", 4), ("none", 3)]


@pytest.mark.slow
@pytest.mark.parametrize("family_name", list(FAMILY_BUILDERS))
@pytest.mark.parametrize("baseline,num_particles", BASELINES)
def test_unbiased(family_name, baseline, num_particles):
    family = make_family(family_name)
    init_params(family)
    ref = reference(family)
    elbo = TraceScoreELBO(num_particles=num_particles, baseline=baseline)
    stats = gradient_draws(elbo, family, num_batches=50, draws_per_batch=40, warmup=3)
    assert stats.num_draws >= 2000
    check_unbiased(stats, ref, num_se=5.0, what="TraceScoreELBO({!r})".format(baseline))


@pytest.mark.slow
def test_unbiased_with_dependency_tracking():
    family = make_family("global_bernoulli_local_categorical")
    init_params(family)
    ref = reference(family)
    elbo = TraceScoreELBO(num_particles=4, baseline="loo", track_dependencies=True)
    stats = gradient_draws(elbo, family)
    check_unbiased(stats, ref, what="TraceScoreELBO(track_dependencies=True)")


class _SelfIncludingMean(Baseline):
    """A wrong baseline: the mean over particles *including* the particle itself."""

    def __call__(self, score_site):
        return score_site.cost.mean(score_site.particle_dim, keepdim=True)


@pytest.mark.slow
def test_harness_detects_a_biased_estimator():
    # the statistical check must be able to fail: this baseline shrinks the
    # score-function term by (S-1)/S = 1/2
    family = make_family("amortized_vae")
    init_params(family)
    ref = reference(family)
    elbo = TraceScoreELBO(num_particles=2, baseline=_SelfIncludingMean())
    stats = gradient_draws(elbo, family)
    with pytest.raises(AssertionError, match="biased beyond"):
        check_unbiased(stats, ref)


@pytest.mark.slow
def test_loo_reduces_variance_on_amortized_vae():
    family = make_family("amortized_vae")
    init_params(family)
    loo = gradient_draws(TraceScoreELBO(num_particles=8, baseline="loo"), family).total_variance()
    none = gradient_draws(TraceScoreELBO(num_particles=8, baseline=None), family).total_variance()
    print(
        "\ntotal gradient variance, amortized VAE, 8 particles: loo {:.4g}, none {:.4g}, "
        "ratio none/loo = {:.1f}".format(loo, none, none / loo)
    )
    assert loo < none


def test_no_baseline_equals_trace_elbo():
    family = make_family("global_bernoulli_local_categorical")
    params = init_params(family)
    # the same guide samples for both (they draw categoricals differently)
    pyro.set_rng_seed(7)
    guide_trace = poutine.trace(family.guide).get_trace(*family.args)
    guide = poutine.replay(family.guide, trace=guide_trace)
    results = []
    for elbo in (TraceScoreELBO(baseline=None, max_plate_nesting=1), Trace_ELBO(max_plate_nesting=1)):
        loss = elbo.differentiable_loss(family.model, guide, *family.args)
        results.append((loss, torch.autograd.grad(loss, list(params.values()))))
    assert results[0][0].item() == pytest.approx(results[1][0].item(), abs=1e-12)
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("baseline,num_particles", [("loo", 5), (None, 1), ("moving_average", 3)])
@pytest.mark.parametrize("vectorize", [True, False])
def test_loss_methods_agree(baseline, num_particles, vectorize):
    family = make_family("amortized_vae")
    init_params(family)
    kw = dict(num_particles=num_particles, baseline=baseline, vectorize_particles=vectorize, max_plate_nesting=1)
    assert_loss_methods_agree(lambda: TraceScoreELBO(**kw), family)


def test_loss_changes_no_state():
    family = make_family("amortized_vae")
    init_params(family)
    elbo = TraceScoreELBO(num_particles=3, baseline="moving_average")
    elbo.loss(family.model, family.guide, *family.args)
    assert elbo.baseline.averages == {}
    elbo.differentiable_loss(family.model, family.guide, *family.args)
    assert set(elbo.baseline.averages) == {"z"}


class _RecordingMovingAverage(MovingAverageBaseline):
    def __init__(self):
        super().__init__(decay=0.5)
        self.seen = []

    def __call__(self, score_site):
        before = self.averages.get(score_site.name)
        self.seen.append((None if before is None else before.item(), score_site.cost.mean().item()))
        return super().__call__(score_site)


def test_moving_average_is_used_before_update():
    family = make_family("amortized_vae")
    init_params(family)
    baseline = _RecordingMovingAverage()
    elbo = TraceScoreELBO(num_particles=2, baseline=baseline)
    for _ in range(3):
        elbo.differentiable_loss(family.model, family.guide, *family.args)
    seen = baseline.seen
    assert seen[0][0] is None  # first step: no baseline yet
    # the baseline of step t is made of steps < t only
    assert seen[1][0] == pytest.approx(seen[0][1])
    assert seen[2][0] == pytest.approx(0.5 * seen[0][1] + 0.5 * seen[1][1])


def test_moving_average_with_changing_batch_and_subsampling():
    family = make_family("local_categorical_subsampled")
    init_params(family)
    data = family.args[0]
    elbo = TraceScoreELBO(num_particles=2, baseline="moving_average")
    for size in (2, 5, 3, 6):
        loss = elbo.differentiable_loss(family.model, family.guide, data, size)
        assert torch.isfinite(loss)
    assert elbo.baseline.averages["z"].dim() == 0


def test_per_site_baseline_choice():
    def model():
        a = pyro.sample("a", dist.Bernoulli(0.3))
        b = pyro.sample("b", dist.Bernoulli(0.6))
        pyro.sample("x", dist.Normal(a + b, 1.0), obs=torch.tensor(1.0))

    def guide():
        p = pyro.param("p", torch.tensor([0.4, 0.5]))
        pyro.sample("a", dist.Bernoulli(p[0]), infer={"score_baseline": "moving_average"})
        pyro.sample("b", dist.Bernoulli(p[1]))

    elbo = TraceScoreELBO(num_particles=3, baseline="loo")
    elbo.differentiable_loss(model, guide)
    assert set(elbo.surrogate.site_baselines) == {"a"}
    assert set(elbo.surrogate.site_baselines["a"].averages) == {"a"}

    def bad_guide():
        p = pyro.param("p", torch.tensor([0.4, 0.5]))
        pyro.sample("a", dist.Bernoulli(p[0]), infer={"score_baseline": "loo"})
        pyro.sample("b", dist.Bernoulli(p[1]))

    with pytest.raises(ValueError, match=r"site 'a'.*num_particles >= 2"):
        TraceScoreELBO(num_particles=1, baseline=None).differentiable_loss(model, bad_guide)


def test_error_loo_with_one_particle():
    for name in ("loo", "batch_average"):
        with pytest.raises(ValueError, match=r"TraceScoreELBO.*{}.*num_particles >= 2".format(name)):
            TraceScoreELBO(num_particles=1, baseline=name)


def test_default_baseline():
    # TraceScoreELBO() as written works: leave-one-out needs 2 particles, so one gets a moving average
    assert repr(TraceScoreELBO().baseline) == "MovingAverageBaseline(decay=0.9)"
    assert repr(TraceScoreELBO(num_particles=2).baseline) == "LeaveOneOutBaseline()"
    family = make_family("amortized_vae")
    init_params(family)
    assert TraceScoreELBO().loss(family.model, family.guide, *family.args) > 0


def test_error_unknown_baseline():
    with pytest.raises(ValueError, match=r"TraceScoreELBO: unknown baseline 'average'.*'loo'"):
        TraceScoreELBO(num_particles=4, baseline="average")


def test_error_model_latent_missing_from_guide():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.3))
        w = pyro.sample("w_missing", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z + w, 1.0), obs=torch.tensor(0.5))

    def guide():
        pyro.sample("z", dist.Bernoulli(pyro.param("p", torch.tensor(0.5))))

    with pytest.warns(UserWarning, match="Found vars in model but not guide"):
        with pytest.raises(ValueError, match=r"TraceScoreELBO: model sample site 'w_missing'.*guide"):
            TraceScoreELBO(num_particles=2).loss(model, guide)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64(dtype):
    torch.set_default_dtype(dtype)
    family = make_family("amortized_vae")
    params = init_params(family)
    loss = TraceScoreELBO(num_particles=4).differentiable_loss(family.model, family.guide, *family.args)
    assert loss.dtype == dtype
    grads = torch.autograd.grad(loss, list(params.values()))
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


def test_works_with_poutine_handlers():
    family = make_family("amortized_vae")
    init_params(family)
    elbo = TraceScoreELBO(num_particles=4)
    conditioned = pyro.poutine.scale(family.model, scale=2.0)
    guide = pyro.poutine.scale(family.guide, scale=2.0)
    pyro.set_rng_seed(1)
    base = TraceScoreELBO(num_particles=4).loss(family.model, family.guide, *family.args)
    pyro.set_rng_seed(1)
    scaled = elbo.loss(conditioned, guide, *family.args)
    assert scaled == pytest.approx(2 * base, rel=1e-10)


def test_svi_trains_tutorial_vae():
    torch.set_default_dtype(torch.float32)
    pyro.set_rng_seed(0)
    model, guide, batches = make_tutorial_vae(num_batches=8)
    svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=TraceScoreELBO(num_particles=10, baseline="loo"))
    losses = []
    for step in range(120):
        losses.append(svi.step(batches[step % len(batches)]) / batches[0].shape[0])
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print("\n-ELBO per data point: first 10 steps {:.1f}, last 10 steps {:.1f}".format(first, last))
    assert last < 0.8 * first
