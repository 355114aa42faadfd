# SPDX-License-Identifier: Apache-2.0
"""
The set estimators over several discrete guide sites (pyro_discrete.beam): the
unordered set estimator by a stochastic beam search across the sites,
sum-and-sample by a beam search without noise (the summed set) and ancestral
draws from the guide restricted to the rest; checked against the exact
gradient (ExpectELBO) on dependent two- and three-site guides.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_discrete.beam as beam
from pyro_discrete import ExpectELBO, SumAndSampleELBO, UnorderedSetELBO
from pyro_discrete.errors import EstimatorError

from common import check_unbiased, gradient_draws, init_params, reference

DATA = torch.tensor([0.3, -0.8, 1.4])
PARAMS = ("qa", "qb", "qc")


def _model(three):
    def model():
        with pyro.plate("data", 3):
            a = pyro.sample("a", dist.Categorical(logits=torch.zeros(3)))
            b = pyro.sample("b", dist.Bernoulli(0.3 + 0.2 * (a == 1).to(DATA.dtype)))
            mean = torch.tensor([-1.0, 0.0, 1.0])[a] + b
            if three:
                c = pyro.sample("c", dist.Categorical(logits=torch.stack([b, 1 - b, b * 0], -1)))
                mean = mean - 0.5 * c
            pyro.sample("x", dist.Normal(mean, 1.0), obs=DATA)

    return model


def _guide(three, scale=1.0):
    def guide():
        qa = pyro.param("qa", scale * torch.tensor([[0.1, -0.3, 0.5], [0.4, 0.0, -0.2], [-0.6, 0.2, 0.1]]))
        qb = pyro.param("qb", scale * torch.tensor([0.2, -0.1, 0.4]))
        qc = pyro.param("qc", scale * (torch.zeros(3, 3) + 0.1))
        with pyro.plate("data", 3):
            a = pyro.sample("a", dist.Categorical(logits=qa))  # b depends on a, c on b
            b = pyro.sample("b", dist.Bernoulli(logits=qb + 0.7 * a))
            if three:
                pyro.sample("c", dist.Categorical(logits=qc + b.unsqueeze(-1) * torch.tensor([1.0, -1.0, 0.5])))

    return guide


def _grads(elbo, model, guide, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide()
    params = [pyro.param(n).unconstrained() for n in PARAMS]
    loss = elbo.differentiable_loss(model, guide)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), torch.cat(
        [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)]
    )


@pytest.mark.parametrize("three", [False, True], ids=["two_sites", "three_sites"])
def test_the_whole_joint_support_is_exact(three):
    # k = the number of joint values (6 or 18 per data point) and beyond: the weights are the probabilities
    model, guide = _model(three), _guide(three)
    with torch.autograd.set_detect_anomaly(False):
        exact_loss, exact = _grads(ExpectELBO(max_plate_nesting=1), model, guide)
        for k in (6, 9) if not three else (18, 25):
            loss, grads = _grads(UnorderedSetELBO(num_samples=k, max_plate_nesting=1), model, guide)
            assert torch.allclose(loss, exact_loss, atol=1e-5) and torch.allclose(grads, exact, atol=1e-5)


def _family(three):
    from common import Family

    return Family("beam", _model(three), _guide(three), (), 1, reference="expect")


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("three", [False, True], ids=["two_sites", "three_sites"])
def test_unbiased_over_dependent_sites(three, k):
    family = _family(three)
    init_params(family)
    stats = gradient_draws(UnorderedSetELBO(num_samples=k), family, num_batches=30, draws_per_batch=40)
    check_unbiased(stats, reference(family), num_se=5.0, what="unordered over {} sites".format(3 if three else 2))


def test_the_test_fails_when_the_earlier_sites_do_not_follow_their_beams(monkeypatch):
    # the bug this search can have: a beam extended by a later site keeps another beam's earlier values
    original = beam._gather_beams

    def stale(tensor, parent):
        if tensor.dim() == parent.dim():  # the values of an earlier site: left in place
            return tensor[: parent.shape[0]]
        return original(tensor, parent)

    family = _family(True)
    init_params(family)
    monkeypatch.setattr(beam, "_gather_beams", stale)
    stats = gradient_draws(UnorderedSetELBO(num_samples=3), family, num_batches=30, draws_per_batch=40)
    with pytest.raises(AssertionError, match="biased beyond"):
        check_unbiased(stats, reference(family), num_se=5.0, what="stale beams")


def test_float32_with_extreme_logits_is_finite():
    model, guide = _model(True), _guide(True, scale=60.0)
    loss, grads = _grads(UnorderedSetELBO(num_samples=4, max_plate_nesting=1), model, guide)
    assert torch.isfinite(loss) and torch.isfinite(grads).all()


@pytest.mark.parametrize(
    "make,partial_runs",
    [
        (lambda: UnorderedSetELBO(num_samples=4, max_plate_nesting=1), 3),
        # the search for the summed set, then the draws from the rest: a partial guide run per site each
        (lambda: SumAndSampleELBO(num_summed=2, num_samples=2, max_plate_nesting=1), 6),
    ],
    ids=["unordered", "sum_and_sample"],
)
def test_the_guide_runs_per_site_before_the_step_and_the_model_once(make, partial_runs):
    runs = {"guide": 0, "model": 0}
    model, guide = _model(True), _guide(True)

    def counted_model():
        runs["model"] += 1
        model()

    def counted_guide():
        runs["guide"] += 1
        guide()

    elbo = make()
    pyro.clear_param_store()
    elbo.loss_and_grads(counted_model, counted_guide)  # the first step also counts the sites and analyzes
    runs.update(guide=0, model=0)
    elbo.loss_and_grads(counted_model, counted_guide)
    assert runs == {"guide": partial_runs + 1, "model": 1}
    assert elbo.num_evaluations == 4


def test_sites_in_different_plates_are_an_error_naming_both():
    def model():
        g = pyro.sample("g", dist.Bernoulli(0.5))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(0.2 + 0.5 * g))

    def guide():
        g = pyro.sample("g", dist.Bernoulli(logits=pyro.param("qg", torch.tensor(0.1))))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("qz", torch.zeros(3)) + g))

    pyro.clear_param_store()
    with pytest.raises(EstimatorError) as info:
        UnorderedSetELBO(num_samples=3).differentiable_loss(model, guide)
    assert info.value.sites == ("g", "z") and info.value.requirement == beam.SAME_PLATES
    assert "unordered" not in info.value.alternatives and "loo" in info.value.alternatives


def test_a_continuous_site_between_discrete_sites_is_an_error_naming_it():
    def model():
        with pyro.plate("data", 3):
            a = pyro.sample("a", dist.Bernoulli(0.5))
            w = pyro.sample("w", dist.Normal(a, 1.0))
            pyro.sample("b", dist.Bernoulli(torch.sigmoid(w)))

    def guide():
        with pyro.plate("data", 3):
            a = pyro.sample("a", dist.Bernoulli(logits=pyro.param("qa2", torch.zeros(3))))
            w = pyro.sample("w", dist.Normal(a, 1.0))
            pyro.sample("b", dist.Bernoulli(logits=w))

    pyro.clear_param_store()
    with pytest.raises(EstimatorError) as info:
        UnorderedSetELBO(num_samples=3).differentiable_loss(model, guide)
    assert info.value.sites == ("a", "w") and info.value.requirement == "no_continuous_between_discrete"


def test_a_continuous_site_before_the_sequence_keeps_its_pathwise_gradient():
    # the bug this had: the shared draw was made without its graph, so the upstream Normal got no pathwise
    # gradient (mean gradient of m -0.12 against 1.25) and nothing said so
    from common import Family

    data = torch.tensor([0.3, -0.8, 1.4])

    def model():
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3):
            a = pyro.sample("a", dist.Bernoulli(0.5))
            b = pyro.sample("b", dist.Bernoulli(0.3 + 0.2 * a))
            pyro.sample("x", dist.Normal(w + a - b, 1.0), obs=data)

    def guide():
        w = pyro.sample("w", dist.Normal(pyro.param("m", torch.tensor(0.5)), 0.7))
        with pyro.plate("data", 3):
            a = pyro.sample("a", dist.Bernoulli(logits=pyro.param("qa", torch.zeros(3)) + w))
            pyro.sample("b", dist.Bernoulli(logits=pyro.param("qb", torch.zeros(3)) + a))

    family = Family("beam_continuous", model, guide, (), 1, reference="sampled")
    init_params(family)
    stats = gradient_draws(UnorderedSetELBO(num_samples=3), family, num_batches=30, draws_per_batch=40)
    check_unbiased(stats, reference(family), num_se=5.0, what="unordered after a continuous site")


# ----------------------------------------------------------------------
# sum-and-sample over several sites
# ----------------------------------------------------------------------
@pytest.mark.parametrize("three", [False, True], ids=["two_sites", "three_sites"])
def test_the_whole_joint_support_is_exact_in_float64(three):
    # both set estimators at the whole joint support against ExpectELBO, to 1e-6 in float64
    model, guide = _model(three), _guide(three)
    support = 18 if three else 6
    torch.set_default_dtype(torch.float64)
    try:
        exact_loss, exact = _grads(ExpectELBO(max_plate_nesting=1), model, guide)
        for elbo in (
            UnorderedSetELBO(num_samples=support, max_plate_nesting=1),
            SumAndSampleELBO(num_summed=support, num_samples=1, max_plate_nesting=1),
        ):
            loss, grads = _grads(elbo, model, guide)
            assert abs(float(loss - exact_loss)) < 1e-6 and float((grads - exact).abs().max()) < 1e-6
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("three", [False, True], ids=["two_sites", "three_sites"])
def test_sum_and_sample_over_the_whole_joint_support_is_exact(three):
    model, guide = _model(three), _guide(three)
    exact_loss, exact = _grads(ExpectELBO(max_plate_nesting=1), model, guide)
    support = 18 if three else 6
    for k, m in ((support, 0), (support, 1), (support + 3, 2)):
        loss, grads = _grads(SumAndSampleELBO(num_summed=k, num_samples=m, max_plate_nesting=1), model, guide)
        assert torch.allclose(loss, exact_loss, atol=1e-5) and torch.allclose(grads, exact, atol=1e-5)


@pytest.mark.parametrize("three,k,m", [(False, 2, 1), (True, 3, 2), (True, 0, 2)])
def test_sum_and_sample_unbiased_over_dependent_sites(three, k, m):
    family = _family(three)
    init_params(family)
    elbo = SumAndSampleELBO(num_summed=k, num_samples=m)
    stats = gradient_draws(elbo, family, num_batches=30, draws_per_batch=40)
    check_unbiased(stats, reference(family), num_se=5.0, what="sum-and-sample over {} sites".format(3 if three else 2))


def _restricted_frequencies(guide, k, m, draws):
    """The summed set and the counts of the sampled sequences (a, b, c) of data point 0, over ``draws`` steps."""
    from pyro_discrete.sum_and_sample import SumAndSampleSampler

    elbo = SumAndSampleELBO(num_summed=k, num_samples=m, max_plate_nesting=1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide()
    searches = []
    original = SumAndSampleSampler.search_sequences

    def recording(self, guide, step):
        searches.append(original(self, guide, step))
        return searches[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SumAndSampleSampler, "search_sequences", recording)
        for _ in range(draws):
            elbo.loss(_model(True), guide)
    summed, counts = None, {}
    for beams in searches:
        summed = {tuple(int(beams.summed.values[n][j, 0]) for n in "abc") for j in range(k)}
        for i in range(m):
            key = tuple(int(beams.values[n][i, 0]) for n in "abc")
            counts[key] = counts.get(key, 0) + 1
    return summed, counts


def test_sum_and_sample_draws_the_rest_from_the_restricted_guide():
    # the sampled sequences of data point 0 against q(z | z not in C), C the summed set, by exact enumeration
    import itertools

    guide = _guide(True)
    k, m, draws = 4, 40, 30
    summed, counts = _restricted_frequencies(guide, k, m, draws)
    assert len(summed) == k and not set(counts) & summed  # no sampled sequence is a summed one
    qa = pyro.param("qa").detach()[0].log_softmax(-1)
    qb, qc = pyro.param("qb").detach()[0], pyro.param("qc").detach()[0]
    prob = {}
    for a, b, c in itertools.product(range(3), range(2), range(3)):
        lb = torch.distributions.Bernoulli(logits=qb + 0.7 * a).log_prob(torch.tensor(float(b)))
        lc = (qc + b * torch.tensor([1.0, -1.0, 0.5])).log_softmax(-1)[c]
        prob[(a, b, c)] = float((qa[a] + lb + lc).exp())
    # C is the k most probable prefixes kept at every latent: here the k most probable sequences
    assert summed == set(sorted(prob, key=prob.get)[-k:])
    rest = 1 - sum(prob[s] for s in summed)
    total = draws * m
    for key, p in prob.items():
        if key in summed:
            continue
        expected = total * p / rest
        se = (total * (p / rest) * (1 - p / rest)) ** 0.5
        assert abs(counts.get(key, 0) - expected) < 5 * se + 1, (key, counts.get(key, 0), expected)


def test_sum_and_sample_float32_with_extreme_logits_is_finite():
    model, guide = _model(True), _guide(True, scale=60.0)
    for k, m in ((2, 2), (0, 2), (4, 1)):
        loss, grads = _grads(SumAndSampleELBO(num_summed=k, num_samples=m, max_plate_nesting=1), model, guide)
        assert torch.isfinite(loss) and torch.isfinite(grads).all()


def test_the_tests_fail_when_the_rest_is_drawn_from_the_unrestricted_guide(monkeypatch):
    # the bug the rest sampler can have: drawing from q instead of q restricted outside the summed set
    monkeypatch.setattr(beam, "_restricted", lambda weight, taken: weight)
    summed, counts = _restricted_frequencies(_guide(True), 4, 40, 3)
    assert set(counts) & summed  # summed sequences drawn again
    family = _family(True)
    init_params(family)
    stats = gradient_draws(SumAndSampleELBO(num_summed=3, num_samples=2), family, num_batches=15, draws_per_batch=40)
    with pytest.raises(AssertionError, match="biased beyond"):
        check_unbiased(stats, reference(family), num_se=5.0, what="unrestricted rest")
