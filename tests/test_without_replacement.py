# SPDX-License-Identifier: Apache-2.0
"""
Sampling without replacement: the inclusion ratios against enumeration, the
samplers' set frequencies, the estimators' exact expectation over every
possible set, equality with ExpectELBO when the sample is the whole support,
and float32 with extreme logits.
"""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_discrete import ExpectELBO
from pyro_discrete.errors import EstimatorError
from pyro_discrete.gumbel import gumbel_top_k, inclusion_log_ratios, stochastic_beam_search, top_k_joint
from pyro_discrete.sum_and_sample import SumAndSampleELBO
from pyro_discrete.unordered_set import UnorderedSetELBO

from common import init_params, make_family


def set_probability(p, subset):
    """P(S) of an unordered sample without replacement, summing its orderings (Plackett-Luce)."""
    total = 0.0
    for order in itertools.permutations(subset):
        prob, rest = 1.0, 1.0
        for s in order:
            prob *= p[s] / rest
            rest -= p[s]
        total += prob
    return total


def removed(p, items):
    q = list(p)
    for s in items:
        mass = q[s]
        q = [v / (1 - mass) if j != s else 0.0 for j, v in enumerate(q)]
    return q


def exact_ratios(p, subset):
    full = set_probability(p, subset)
    r1, r2 = [], []
    for s in subset:
        rest = [t for t in subset if t != s]
        one = set_probability(removed(p, [s]), rest) if rest else 1.0
        r1.append(one / full)
        row = []
        for t in subset:
            if t == s:
                row.append(1.0)
                continue
            two_rest = [u for u in subset if u not in (s, t)]
            two = set_probability(removed(p, [s, t]), two_rest) if two_rest else 1.0
            row.append(two / one)
        r2.append(row)
    return torch.tensor(r1), torch.tensor(r2)


@pytest.mark.parametrize("scale", [0.5, 2.0, 6.0])
@pytest.mark.parametrize("subset", [[1], [0, 3], [0, 2, 5], [1, 2, 3, 4]])
def test_inclusion_ratios_equal_enumeration(scale, subset):
    torch.manual_seed(int(scale * 10) + len(subset))
    log_p = (torch.randn(6) * scale).log_softmax(-1)
    p = log_p.exp().tolist()
    rest = [i for i in range(6) if i not in subset]
    log_r1, log_r2 = inclusion_log_ratios(log_p[subset].unsqueeze(-1), log_p[rest].logsumexp(-1).unsqueeze(-1))
    r1, r2 = exact_ratios(p, subset)
    assert torch.allclose(log_r1.squeeze(-1), r1.log(), atol=1e-10)
    assert torch.allclose(log_r2.squeeze(-1), r2.log(), atol=1e-10)
    # the weights p(s) R(S, s) sum to one, and so do the baseline's for every s (from two values on:
    # with one there is no other value to estimate the rest, and the estimator uses no baseline)
    weights = (log_p[subset] + log_r1.squeeze(-1)).exp()
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    if len(subset) > 1:
        rows = (log_p[subset].unsqueeze(0) + log_r2.squeeze(-1)).exp().sum(1)
        assert torch.allclose(rows, torch.ones(len(subset)), atol=1e-12)


def test_inclusion_ratios_float32_extreme_logits():
    # logits +-30 in float32: finite; the ratio of the improbable member is 1 / P(drawn third)
    logits = torch.tensor([30.0, -30.0, 0.0, 30.0, -30.0, 5.0, -12.0], dtype=torch.float32)
    log_p = logits.log_softmax(-1)
    chosen, rest = [0, 3, 2], [1, 4, 5, 6]
    log_r1, log_r2 = inclusion_log_ratios(log_p[chosen].unsqueeze(-1), log_p[rest].logsumexp(-1).unsqueeze(-1))
    assert log_r1.dtype == torch.float32 and torch.isfinite(log_r1).all() and torch.isfinite(log_r2).all()
    # the two certain members have ratio 1; the third is drawn third with probability p2 / (p2 + rho)
    p2, rho = log_p[2].double().exp(), log_p[rest].double().logsumexp(-1).exp()
    expected = -torch.log(p2 / (p2 + rho))
    assert log_r1[2].item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(log_r1[0].item()) < 1e-5 and abs(log_r1[1].item()) < 1e-5


def test_inclusion_ratios_when_the_sample_is_the_support():
    log_p = torch.tensor([0.2, 0.5, 0.3]).log()
    log_r1, log_r2 = inclusion_log_ratios(log_p.unsqueeze(-1), torch.tensor([-math.inf]))
    assert torch.equal(log_r1, torch.zeros(3, 1)) and torch.equal(log_r2, torch.zeros(3, 3, 1))


def _frequencies(sets, n):
    counts = {}
    for key in sets:
        counts[key] = counts.get(key, 0) + 1
    return {key: c / n for key, c in counts.items()}


def test_gumbel_top_k_draws_sets_with_their_probability():
    torch.manual_seed(0)
    p = torch.tensor([0.4, 0.3, 0.2, 0.1])
    n = 40000
    index, _, _ = gumbel_top_k(p.log().expand(n, 4), 2)
    freq = _frequencies(map(tuple, index.sort(0).values.T.tolist()), n)
    for subset in itertools.combinations(range(4), 2):
        prob = set_probability(p.tolist(), subset)
        assert abs(freq.get(subset, 0.0) - prob) < 5 * math.sqrt(prob * (1 - prob) / n)


def test_stochastic_beam_search_draws_sets_with_their_probability():
    torch.manual_seed(1)
    log_p = torch.randn(3, 2).log_softmax(-1)  # three binary latents: 8 joint values
    joint = log_p[0][:, None, None] + log_p[1][None, :, None] + log_p[2][None, None, :]
    joint = joint.reshape(-1).exp()
    n = 40000
    index, log_p_sample, log_rest = stochastic_beam_search(log_p.expand(n, 3, 2), 3)
    flat = index[..., 0] * 4 + index[..., 1] * 2 + index[..., 2]
    assert (flat[0] != flat[1]).all() and (flat[1] != flat[2]).all() and (flat[0] != flat[2]).all()
    assert torch.allclose(log_p_sample.exp(), joint[flat])
    assert torch.allclose(log_rest.exp(), 1 - joint[flat].sum(0), atol=1e-12)
    freq = _frequencies(map(tuple, flat.sort(0).values.T.tolist()), n)
    for subset in itertools.combinations(range(8), 3):
        prob = set_probability(joint.tolist(), subset)
        assert abs(freq.get(subset, 0.0) - prob) < 5 * math.sqrt(prob * (1 - prob) / n) + 1e-4


def test_top_k_joint_is_exact():
    torch.manual_seed(2)
    log_p = torch.randn(3, 4).log_softmax(-1)
    joint = (log_p[0][:, None, None] + log_p[1][None, :, None] + log_p[2][None, None, :]).reshape(-1)
    index, log_p_top, log_rest = top_k_joint(log_p, 5)
    flat = index[:, 0] * 16 + index[:, 1] * 4 + index[:, 2]
    assert flat.tolist() == joint.topk(5).indices.tolist()
    assert torch.allclose(log_rest.exp(), 1 - joint.topk(5).values.exp().sum(), atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_unordered_set_estimator_is_exactly_unbiased(k):
    # E over every possible set S of the estimator of E_p[f] and of its gradient, with the built-in baseline
    from pyro_discrete.unordered_set import UnorderedSetSampler

    torch.manual_seed(3)
    logits = torch.randn(5, requires_grad=True)
    f = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0])
    log_p = logits.log_softmax(-1)
    exact_value = (log_p.exp() * f).sum()
    (exact_grad,) = torch.autograd.grad(exact_value, logits, retain_graph=True)
    p = log_p.detach().exp().tolist()
    sampler = UnorderedSetSampler.__new__(UnorderedSetSampler)
    sampler.num = k
    value, grad = 0.0, torch.zeros(5)
    for subset in itertools.combinations(range(5), k):
        prob = set_probability(p, subset)
        rest = [i for i in range(5) if i not in subset]
        sampler.log_p = log_p.detach()[list(subset)]
        sampler.log_rest = log_p.detach()[rest].logsumexp(-1) if rest else torch.tensor(-math.inf)
        weights, baseline = sampler.weights(baseline=True)
        fs = f[list(subset)]
        value = value + prob * (weights * fs).sum()
        centered = weights * (fs - (baseline * fs.unsqueeze(0)).sum(1))
        (g,) = torch.autograd.grad((log_p[list(subset)] * centered).sum(), logits, retain_graph=True)
        grad = grad + prob * g
    assert value.item() == pytest.approx(exact_value.item(), abs=1e-10)
    assert torch.allclose(grad, exact_grad, atol=1e-10)


@pytest.mark.parametrize("family_name", ["to_event_onehot", "local_categorical_subsampled", "bernoulli_vector"])
def test_whole_support_equals_expect(family_name):
    family = make_family(family_name)
    params = init_params(family)
    args = family.exact_args or family.args
    support = {"to_event_onehot": 9, "local_categorical_subsampled": 3, "bernoulli_vector": 16}[family_name]
    results = []
    for elbo in (
        ExpectELBO(),
        UnorderedSetELBO(num_samples=support),
        UnorderedSetELBO(num_samples=support + 2),  # more than the support: padded with weight zero
        SumAndSampleELBO(num_summed=support, num_samples=0),
        SumAndSampleELBO(num_summed=support, num_samples=2),
    ):
        loss = elbo.differentiable_loss(family.model, family.guide, *args)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        results.append((loss.item(), [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads)]))
    (exact_loss, exact_grads), others = results[0], results[1:]
    for loss, grads in others:
        assert loss == pytest.approx(exact_loss, abs=1e-6)
        for g, e in zip(grads, exact_grads):
            assert torch.allclose(g, e, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: UnorderedSetELBO(num_samples=18), lambda: SumAndSampleELBO(17, 2)])
def test_float32_extreme_logits_near_the_support_size(make):
    torch.set_default_dtype(torch.float32)
    # 20 categories with logits +-30; k close to the support size
    logits = torch.linspace(-30.0, 30.0, 20)

    def model():
        w = pyro.param("w", torch.linspace(-1, 1, 20))
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Categorical(logits=logits))
            pyro.sample("x", dist.Normal(w[z], 1.0), obs=torch.zeros(3))

    def guide():
        q = pyro.param("q", logits.flip(-1).expand(3, 20).clone())
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Categorical(logits=q))

    for _ in range(3):
        loss = make().differentiable_loss(model, guide)
        grads = torch.autograd.grad(loss, [pyro.param("w"), pyro.param("q")])
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("elbo_class", [SumAndSampleELBO, UnorderedSetELBO])
def test_discrete_sites_in_different_plates_are_an_error_naming_them(elbo_class):
    # both set estimators take several discrete sites in the same plates (tests/test_beam.py has the sequences
    # they take); here the global 'g' and the local 'z' are not
    family = make_family("global_bernoulli_local_categorical")
    init_params(family)
    with pytest.raises(EstimatorError) as info:
        elbo_class().loss(family.model, family.guide, *family.args)
    assert info.value.requirement == "discrete_sites_in_the_same_plates" and info.value.sites == ("g", "z")


def test_looped_particles_are_refused():
    with pytest.raises(ValueError, match="UnorderedSetELBO: needs vectorize_particles=True"):
        UnorderedSetELBO(vectorize_particles=False)


def test_structure_check_runs_on_the_first_step_only():
    family = make_family("amortized_vae")
    init_params(family)
    elbo = UnorderedSetELBO(num_samples=3)
    assert elbo.surrogate.wants_provenance(_step(elbo, family))
    elbo.loss(family.model, family.guide, *family.args)
    assert not elbo.surrogate.wants_provenance(_step(elbo, family))


def _step(elbo, family):
    from pyro_discrete.elbo import Step

    return Step(elbo, family.model, family.guide, family.args, {}, False)


def test_a_guide_without_discrete_sites_keeps_one_draw_per_sample():
    # continuous sites are shared by the k values only upstream of a discrete site; with none, each of the k
    # particles draws its own (before: one shared draw, the variance of one sample whatever k)
    from pyro.infer import Trace_ELBO

    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.7))

    def guide():
        pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.2)), 0.8))

    spreads = {}
    for label, elbo in [
        ("unordered", UnorderedSetELBO(num_samples=50)),
        ("trace", Trace_ELBO(num_particles=50, vectorize_particles=True)),
    ]:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        grads = []
        for _ in range(200):
            guide()
            m = pyro.param("m").unconstrained()
            (grad,) = torch.autograd.grad(elbo.differentiable_loss(model, guide), m)
            grads.append(grad)
        spreads[label] = torch.stack(grads).std().item()
    assert spreads["unordered"] < 1.5 * spreads["trace"], spreads


@pytest.mark.parametrize("k", [2, 4, 8, 20])
def test_inclusion_ratios_agree_with_a_fine_full_grid(k, monkeypatch):
    # the grid's step (0.1) and its cropped low tail against the full grid at step 0.05, on random and extreme
    # sets; at a step of 0.3 the same comparison fails (errors of 1e-4)
    import pyro_discrete.gumbel as gumbel

    torch.manual_seed(k)
    cases = [
        (-(torch.rand(k, 40) * scale).double() - 1e-3, (torch.log(torch.rand(40)) * scale / 4).double())
        for scale in (0.3, 3.0, 10.0, 40.0)
    ]
    got = [gumbel.inclusion_log_ratios(a, b) for a, b in cases]
    monkeypatch.setattr(gumbel, "_GRID_STEP", 0.05)
    monkeypatch.setattr(gumbel, "_first_needed", lambda x, log_r, possible: 0)
    for (a, b), (r1, r2) in zip(cases, got):
        e1, e2 = gumbel.inclusion_log_ratios(a, b)
        for new, ref in ((r1, e1), (r2, e2)):
            finite = torch.isfinite(ref)
            assert torch.equal(finite, torch.isfinite(new))
            assert (new - ref)[finite].abs().max() < 1e-11
