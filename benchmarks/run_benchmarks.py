# SPDX-License-Identifier: Apache-2.0
"""
The benchmark suite: ms per step and peak memory of every estimator on the
Storchastic tutorial's VAE (784-512-256 encoder, mirrored decoder), each next
to a hand-written PyTorch step of the same estimator (``handwritten.py``) timed
in the same run, interleaved. One thing varies at a time from the base point
(2x10 latents, batch 64, 10 particles): particles 1/4/16/64, batch 64/256/1024,
latents 2x10/20x10::

    python benchmarks/run_benchmarks.py                 # the whole grid, CPU
    python benchmarks/run_benchmarks.py --quick         # base point only
    python benchmarks/run_benchmarks.py --varied base,batch --rounds 21 --out headline
    python benchmarks/run_benchmarks.py --device cuda   # on a GPU

Every estimator is run two ways, both Pyro-native:

* ``svi``: ``pyro.infer.SVI(model, guide, pyro.optim.Adam, loss=elbo).step(x)``;
* ``torch``: ``elbo.differentiable_loss(model, guide, x).backward()`` with a
  ``torch.optim.Adam`` over the network's parameters (what
  ``elbo(model, guide)`` does for ``nn.Module`` s, the interface Pyro documents
  for PyTorch optimizers and Lightning).

The difference between the two is Pyro's SVI machinery, the same for every
ELBO: it captures the parameters with a trace, steps one optimizer per
parameter, and after the step replaces every gradient by a freshly allocated
zero tensor (``pyro.infer.util.zero_grads``) that the next backward pass adds
into, where ``optimizer.zero_grad()`` frees it.

Memory is counted by the allocator (CPU: every allocation and free seen by
``torch.profiler``, from before the model is built; CUDA:
``torch.cuda.max_memory_allocated``): ``peak MB`` is the largest amount of
tensor memory a contender holds at any moment of one step (parameters,
gradients, optimizer state and activations), ``step MB`` the part of it above
what was held when the step began (activations and temporaries).

The allocator: with glibc's default tuning, every step returns its large
temporaries (a few MB) to the system and faults them back in on the next step;
on the 2-core VM these benchmarks were written on, a page fault costs about
5 us, which adds milliseconds per step that depend on the order in which each
contender happens to allocate and free, not on its arithmetic (the same step
ran 1.1-1.7x slower, and the same Pyro step's binary cross-entropy took 1.6 ms
instead of 0.7 ms). So the script restarts itself with
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set, so that freed
memory stays in the process (the effect PyTorch's CPU tuning guide gets from
jemalloc or tcmalloc); ``--default-malloc`` keeps the default. Every row
records which was used.

Writes ``benchmarks/results/grid[_<device>].{csv,md}``. Pyro's validation is
off (as in production runs); the hand-written steps validate nothing either.
"""

import argparse
import copy
import gc
import itertools
import os
import platform
import statistics
import sys

import pyro
import torch
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam
from torch.profiler import ProfilerActivity, profile, record_function

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from pyro_discrete.registry import REGISTRY  # noqa: E402

from bench_common import (  # noqa: E402
    MALLOC_TUNING,
    RESULTS,
    BernoulliVAE,
    DiscreteVAE,
    benchmark_data,
    malloc_label,
    malloc_tuned,
    restart_with_malloc_tuning,
    time_interleaved,
    write_table,
)
from handwritten import LOSSES, make_step  # noqa: E402

#: Pyro's own ELBOs in the grid: name -> (make ELBO from particles, hand-written loss, cost kind)
PYRO_ELBOS = {
    "pyro Trace_ELBO": (
        lambda s: Trace_ELBO(num_particles=s, vectorize_particles=True, max_plate_nesting=1),
        "score",
        "particles",
    ),
    "pyro TraceEnum_ELBO": (lambda s: TraceEnum_ELBO(max_plate_nesting=1), "expect", "enumeration"),
    "pyro JitTrace_ELBO": (
        lambda s: JitTrace_ELBO(
            num_particles=s, vectorize_particles=True, max_plate_nesting=1, ignore_jit_warnings=True
        ),
        "score",
        "particles",
    ),
}


def contender(name):
    """
    ``(make ELBO from particles, hand-written loss name or None, cost kind)`` of a
    grid contender: a registry name (``+jit`` for its compiled step) or one of
    :data:`PYRO_ELBOS`. The cost kind says what the particle axis means:
    ``"particles"`` (cost grows with them), ``"replay"`` (one particle and its
    replays), ``"enumeration"`` (no particles; skipped where the support is huge).
    """
    if name in PYRO_ELBOS:
        return PYRO_ELBOS[name]
    base, jit = (name[: -len("+jit")], True) if name.endswith("+jit") else (name, False)
    entry = REGISTRY[base]
    options = {"max_plate_nesting": 1}
    if jit:
        options.update(jit_compile=True, ignore_jit_warnings=True)
    kind = entry.cost

    def make(s):
        return entry.make(**options) if kind != "particles" else entry.make(num_particles=s, **options)

    return make, (base if base in LOSSES else None), kind


#: the default grid: every registered estimator and Pyro's Trace_ELBO / TraceEnum_ELBO
DEFAULT_ESTIMATORS = list(REGISTRY) + ["pyro Trace_ELBO", "pyro TraceEnum_ELBO"]
#: ``--estimators jit``: the compiled score family next to the plain one and Pyro's
JIT_ESTIMATORS = ["loo", "loo+jit", "vargrad", "vargrad+jit", "pyro Trace_ELBO", "pyro JitTrace_ELBO"]


def grid(quick=False, batches=(256, 1024)):
    base = {"latents": 2, "batch": 64, "particles": 10}
    points = [dict(base, varied="base")]
    if quick:
        return points
    points += [dict(base, particles=p, varied="particles") for p in (1, 4, 16, 64)]
    points += [dict(base, batch=b, varied="batch") for b in batches]
    points += [dict(base, latents=20, varied="latents")]
    # the DisARM / RODEO protocol: 200 Bernoulli latents, batch 100, two samples
    points += [{"latents": 200, "batch": 100, "particles": 2, "varied": "bernoulli"}]
    return points


def takes(name, kind):
    """Whether a contender takes guide sites of ``kind`` (Pyro's: Trace_ELBO all, TraceEnum_ELBO small supports)."""
    if name in PYRO_ELBOS:
        return kind == "onehot" or "TraceEnum" not in name
    return kind in REGISTRY[name.replace("+jit", "")].site_kinds


def memory_use(build, device, warmup=2):
    """
    ``(peak, step)`` bytes of one step of the contender made by ``build()``:
    its largest tensor memory held during the step, and that peak minus what it
    held when the step began. ``build`` makes the model, the optimizer and the
    step function inside the accounting window, so that everything the
    contender holds is counted.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        step = build()
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        gc.collect()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return peak - before, peak - start
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step = build()
        for _ in range(warmup):
            step()
        gc.collect()
        with record_function("measured step"):
            step()
    events = list(prof.profiler.kineto_results.events())
    window = next(e for e in events if e.name() == "measured step")
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    held = start = peak = 0
    for time_ns, nbytes in memory:
        if time_ns > window.end_ns():
            break
        if time_ns < window.start_ns():
            held += nbytes
            start = peak = held
            continue
        held += nbytes
        peak = max(peak, held)
    return peak, peak - start


def builders(name, base, num_particles, batches):
    """Zero-argument functions that make the three contenders' step functions."""
    make_elbo, hand_name, _ = contender(name)
    if isinstance(base, BernoulliVAE):
        hand_name = None  # the hand-written steps are of the categorical VAE

    def model_and_guide(vae):
        if name == "pyro TraceEnum_ELBO":
            return separate_model_guide(vae)
        return vae.model, vae.guide

    def build_svi():
        vae = copy.deepcopy(base)
        vae.name = "svi"
        model, guide = model_and_guide(vae)
        svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=make_elbo(num_particles))
        return lambda: svi.step(next(batches))

    def build_torch():
        vae = copy.deepcopy(base)
        vae.name = "torch"
        model, guide = model_and_guide(vae)
        elbo = make_elbo(num_particles)
        optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad()
            loss = elbo.differentiable_loss(model, guide, next(batches))
            loss.backward()
            optimizer.step()
            return loss.item()

        return step

    def build_hand():
        step = make_step(hand_name, copy.deepcopy(base))
        return lambda: step(next(batches), num_particles)

    build = {"svi": build_svi, "torch": build_torch}
    if hand_name is not None:
        build["hand"] = build_hand
    return build


def run_point(point, names, data, device, args, progress):
    K, B, S = point["latents"], point["batch"], point["particles"]
    torch.manual_seed(0)
    bernoulli = point["varied"] == "bernoulli"
    base = (BernoulliVAE(latents=K) if bernoulli else DiscreteVAE(latents=K)).to(device)
    names = [n for n in names if takes(n, "bernoulli" if bernoulli else "onehot")]
    batches = itertools.cycle([b.to(device) for b in data[: B * 4].split(B)])
    rows = []
    for name in names:
        make_elbo, hand_name, kind = contender(name)
        if kind == "enumeration" and K > 3:
            continue  # 10**20 configurations
        if kind != "particles" and point["varied"] == "particles":
            continue  # particles do not apply
        s = S if kind == "particles" else 1
        try:
            make_elbo(s)
        except ValueError:
            continue  # e.g. leave-one-out with one particle
        pyro.clear_param_store()
        build = builders(name, base, s, batches)
        per_round = max(1, args.steps // max(1, (B * s) // 640))
        sync = torch.cuda.synchronize if device.type == "cuda" else None
        times = time_interleaved({k: f() for k, f in build.items()}, args.warmup, args.rounds, per_round, sync)
        ms = {k: statistics.median(v) for k, v in times.items()}
        pyro.clear_param_store()
        mem = {k: memory_use(f, device) for k, f in build.items()}
        mb = {k: (v[0] / 2**20, v[1] / 2**20) for k, v in mem.items()}
        nan = float("nan")
        hand_ms = ms.get("hand", nan)
        hand_mb = mb.get("hand", (nan, nan))
        row = {
            "estimator": name,
            "varied": point["varied"],
            "latents": "{}x10".format(K),
            "batch": B,
            "particles": s if kind == "particles" else "-",
            "SVI ms": ms["svi"],
            "torch ms": ms["torch"],
            "hand ms": hand_ms,
            "SVI time ratio": ms["svi"] / hand_ms,
            "torch time ratio": ms["torch"] / hand_ms,
            "SVI peak MB": mb["svi"][0],
            "torch peak MB": mb["torch"][0],
            "hand peak MB": hand_mb[0],
            "SVI memory ratio": mb["svi"][0] / hand_mb[0],
            "torch memory ratio": mb["torch"][0] / hand_mb[0],
            "SVI step MB": mb["svi"][1],
            "torch step MB": mb["torch"][1],
            "hand step MB": hand_mb[1],
            "torch step memory ratio": mb["torch"][1] / hand_mb[1],
        }
        rows.append(row)
        progress(
            "{:>20} K={:<2} B={:<4} S={:<3} ms svi {:7.2f} torch {:7.2f} hand {:7.2f} ({:.2f}x, {:.2f}x)  "
            "peak MB {:6.1f} {:6.1f} {:6.1f}  step MB {:6.1f} {:6.1f} {:6.1f}".format(
                name,
                K,
                B,
                s,
                ms["svi"],
                ms["torch"],
                hand_ms,
                row["SVI time ratio"],
                row["torch time ratio"],
                mb["svi"][0],
                mb["torch"][0],
                hand_mb[0],
                mb["svi"][1],
                mb["torch"][1],
                hand_mb[1],
            )
        )
    # against Pyro's Trace_ELBO at the same point and particles, where it ran
    pyro_ms = {row["particles"]: row["torch ms"] for row in rows if row["estimator"] == "pyro Trace_ELBO"}
    for row in rows:
        reference = pyro_ms.get(row["particles"], pyro_ms.get(1 if row["particles"] == "-" else None, float("nan")))
        row["torch time vs Trace_ELBO"] = row["torch ms"] / reference
    return rows


def separate_model_guide(vae):
    """The tutorial VAE with one site per latent, for Pyro's TraceEnum_ELBO."""
    import pyro.distributions as dist

    def model(x):
        pyro.module(vae.name + ".decoder", vae.decoder)
        with pyro.plate("data", x.shape[0]):
            zs = [
                pyro.sample("z{}".format(k), dist.OneHotCategorical(logits=x.new_zeros(vae.categories)))
                for k in range(vae.latents)
            ]
            z = torch.stack(torch.broadcast_tensors(*zs), -2)
            pyro.sample("x", dist.Bernoulli(logits=vae.decode(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module(vae.name + ".encoder", vae.encoder)
        logits = vae.encode(x)
        with pyro.plate("data", x.shape[0]):
            for k in range(vae.latents):
                pyro.sample("z{}".format(k), dist.OneHotCategorical(logits=logits[..., k, :]))

    return model, config_enumerate(guide, "parallel")


def _point_label(row):
    # the column of a grid row: what was varied from the base point (particle-free
    # estimators have no particle count, so the column does not name one)
    if row["varied"] == "particles":
        return "{} particle{}".format(row["particles"], "" if str(row["particles"]) == "1" else "s")
    if row["varied"] == "batch":
        return "batch {}".format(row["batch"])
    if row["varied"] == "latents":
        return "{} latents".format(row["latents"])
    if row["varied"] == "bernoulli":
        return "200 Bernoulli, batch 100, 2 samples"
    return "base"


def _point_order(row):
    varied = ("base", "particles", "batch", "latents", "bernoulli").index(row["varied"])
    return varied, int(row["particles"]) if row["varied"] == "particles" else 0, int(row["batch"])


def write_summary(rows, name):
    """
    ``<name>_summary.md``: one row per estimator, one column per grid point
    (``base``: 2x10 latents, batch 64, 10 particles, and one thing varied from
    it); cells ``time torch / time SVI · memory torch / memory SVI``, ratios to
    the hand-written step.
    """
    labels = []
    for row in sorted(rows, key=_point_order):
        label = _point_label(row)
        if label not in labels:
            labels.append(label)
    estimators = []
    for row in rows:
        if row["estimator"] not in estimators:
            estimators.append(row["estimator"])
    keys = ("torch time ratio", "SVI time ratio", "torch memory ratio", "SVI memory ratio")
    cells = {
        (row["estimator"], _point_label(row)): "{:.2f} / {:.2f} · {:.2f} / {:.2f}".format(
            *(float(row[k]) for k in keys)
        )
        for row in rows
    }
    path = os.path.join(RESULTS, name + "_summary.md")
    with open(path, "w") as f:
        f.write("| estimator | " + " | ".join(labels) + " |\n")
        f.write("|---|" + "---|" * len(labels) + "\n")
        for est in estimators:
            f.write("| {} | ".format(est) + " | ".join(cells.get((est, label), "–") for label in labels) + " |\n")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--estimators",
        default=",".join(DEFAULT_ESTIMATORS),
        help="comma-separated, from the registry (" + ", ".join(REGISTRY) + "; append +jit for a "
        "compiled step) and " + ", ".join(PYRO_ELBOS) + "; or 'jit' for the compiled score family "
        "next to the plain one and Pyro's Trace_ELBO / JitTrace_ELBO",
    )
    parser.add_argument("--quick", action="store_true", help="the base point only")
    parser.add_argument(
        "--varied", default="base,particles,batch,latents", help="which rows of the grid to run (comma-separated)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=5, help="steps per round at the base point")
    parser.add_argument("--out", default=None, help="table name (default grid or grid_<device>)")
    parser.add_argument(
        "--default-malloc", action="store_true", help="keep glibc's default malloc tuning (see the module docstring)"
    )
    parser.add_argument(
        "--summarize", action="store_true", help="only rewrite <out>_summary.md from an existing <out>.csv"
    )
    args = parser.parse_args(argv)
    if args.summarize:
        import csv

        name = args.out or ("grid" if args.device == "cpu" else "grid_" + torch.device(args.device).type)
        with open(os.path.join(RESULTS, name + ".csv")) as f:
            print("wrote", write_summary(list(csv.DictReader(f)), name))
        return 0
    if argv is None and not args.default_malloc:
        restart_with_malloc_tuning()
    names = JIT_ESTIMATORS if args.estimators == "jit" else [n.strip() for n in args.estimators.split(",")]
    device = torch.device(args.device)
    pyro.enable_validation(False)
    data, source = benchmark_data(1024 * 4)
    varied = set(v.strip() for v in args.varied.split(","))
    points = [p for p in grid(args.quick) if p["varied"] in varied]
    malloc = (
        "glibc default"
        if not malloc_tuned()
        else "glibc with " + " ".join("{}={}".format(k, v) for k, v in MALLOC_TUNING.items())
    )
    print(
        "data: {}; torch {} on {} ({} threads, {}); malloc: {}; {} points".format(
            source,
            torch.__version__,
            device,
            torch.get_num_threads(),
            platform.processor() or platform.machine(),
            malloc,
            len(points),
        ),
        flush=True,
    )
    rows = []
    for point in points:
        rows += run_point(point, names, data, device, args, lambda s: print(s, flush=True))
    for row in rows:
        row["malloc"] = malloc_label()
    name = args.out or ("grid" if device.type == "cpu" else "grid_" + device.type)
    csv_path, md_path = write_table(rows, name, list(rows[0]))
    summary_path = write_summary(rows, name)
    print("wrote", csv_path, md_path, summary_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
