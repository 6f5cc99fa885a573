"""Soak test of vqcore's EMA training: long runs, extreme scales, identical inputs, determinism.

Standalone: ``python benchmarks/soak.py`` (20,000 EMA steps) or ``--quick``
(a few seconds).  Every scenario trains a :class:`vqcore.VectorQuantizer`
with a tiny ``eps`` and dead-code expiry on, and checks after every step that
no NaN or Inf entered the state.  The main run (well-spread data) records the
codebook perplexity over time, plotted to ``benchmarks/results/soak_perplexity.png``;
it is repeated in-process and in fresh processes with 1 and 2 numba threads,
and the whole state must be bit-identical each time.  A summary is written
to ``benchmarks/results/soak.json``; the exit status is 1 when a check fails.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
DIM, CODES, BATCH = 16, 64, 256
SCALES = (1e-20, 1e-10, 1.0, 1e10, 1e20)


def make_quantizer(seed=0):
    """The soak configuration: tiny eps, k-means init, dead-code expiry on."""
    import vqcore

    return vqcore.VectorQuantizer(DIM, CODES, eps=1e-30, kmeans_init=True, kmeans_iters=5,
                                  threshold_ema_dead_code=2.0, decay=0.8, seed=seed)


def spread_batches(steps, seed=0, scale=1.0):
    """``steps`` batches from a mixture of ``CODES`` well-separated Gaussians (the same stream for a seed)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CODES, DIM)) * 4.0
    for _ in range(steps):
        which = rng.integers(0, CODES, BATCH)
        rows = centres[which] + rng.standard_normal((BATCH, DIM)) * 0.3
        yield (rows * scale).astype(np.float32)


def state_digest(quantizer):
    """sha256 of every state array's bytes, in key order."""
    digest = hashlib.sha256()
    for key, value in sorted(quantizer.state_dict().items()):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def finite(quantizer):
    return all(np.all(np.isfinite(v)) for v in quantizer.state_dict().values())


def train(batches, *, record_every=0):
    """Train on ``batches``; returns (quantizer, perplexity trace, first non-finite step or None, refusals)."""
    quantizer = make_quantizer()
    trace, bad_step, refused = [], None, 0
    for step, batch in enumerate(batches):
        try:
            quantizer.partial_fit(batch)
        except ValueError:  # the library may refuse a batch; the state must stay finite all the same
            refused += 1
        if bad_step is None and not finite(quantizer):
            bad_step = step
        if record_every and step % record_every == 0:
            trace.append((step, quantizer.usage()["perplexity"]))
    return quantizer, trace, bad_step, refused


def main_run(steps):
    quantizer, trace, bad_step, refused = train(spread_batches(steps), record_every=max(1, steps // 200))
    return {"digest": state_digest(quantizer), "trace": trace, "first_non_finite_step": bad_step,
            "refused": refused, "final_perplexity": quantizer.usage()["perplexity"],
            "dead_codes": quantizer.usage()["dead_codes"]}


def child_digest(steps, threads):
    """The main run's digest in a fresh process with ``threads`` numba threads."""
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--steps", str(steps)],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def scale_runs(steps):
    """Each scale: steps on spread data times the scale; non-finite steps and refused batches."""
    out = {}
    for scale in SCALES:
        quantizer, _, bad_step, refused = train(spread_batches(steps, seed=1, scale=scale))
        out[f"{scale:g}"] = {"first_non_finite_step": bad_step, "refused": refused,
                             "perplexity": quantizer.usage()["perplexity"]}
    return out


def identical_run(steps):
    """Every row of every batch the same vector: all codes but one go dead and are re-seeded from it."""
    row = np.random.default_rng(2).standard_normal(DIM).astype(np.float32)
    quantizer, _, bad_step, refused = train(np.tile(row, (BATCH, 1)) for _ in range(steps))
    return {"first_non_finite_step": bad_step, "refused": refused,
            "perplexity": quantizer.usage()["perplexity"], "dead_codes": quantizer.usage()["dead_codes"]}


def plot(trace, path, steps):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x, y = zip(*trace)
    ax.plot(x, y, lw=1)
    ax.axhline(CODES, color="grey", ls=":", label=f"uniform use ({CODES})")
    ax.set_xlabel("EMA step")
    ax.set_ylabel("codebook perplexity (EMA cluster sizes)")
    ax.set_title(f"vqcore soak: {steps} steps, eps=1e-30, dead-code expiry at 2")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(steps, side_steps):
    started = time.perf_counter()
    first = main_run(steps)
    second = main_run(steps)
    threads = {n: child_digest(steps, n) for n in (1, 2)}
    summary = {
        "steps": steps, "dim": DIM, "codebook_size": CODES, "batch": BATCH, "eps": 1e-30,
        "main": {k: v for k, v in first.items() if k != "trace"},
        "same_bits_twice": first["digest"] == second["digest"],
        "digest_threads": threads,
        "same_bits_1_vs_2_threads": len(set(threads.values())) == 1,
        "same_bits_child_vs_parent": threads[1] == first["digest"] or threads[2] == first["digest"],
        "scales": scale_runs(side_steps),
        "identical_inputs": identical_run(side_steps),
    }
    summary["all_finite"] = (first["first_non_finite_step"] is None and summary["identical_inputs"]
                             ["first_non_finite_step"] is None and all(
                                 s["first_non_finite_step"] is None for s in summary["scales"].values()))
    summary["seconds"] = round(time.perf_counter() - started, 1)
    os.makedirs(RESULTS, exist_ok=True)
    suffix = "_quick" if steps < 20000 else ""
    plot(first["trace"], os.path.join(RESULTS, f"soak_perplexity{suffix}.png"), steps)
    with open(os.path.join(RESULTS, f"soak{suffix}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: 300 main steps, 50 per side run")
    parser.add_argument("--steps", type=int, default=None, help="main-run EMA steps (default 20000, quick 300)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    steps = args.steps or (300 if args.quick else 20000)
    if args.child:
        print(main_run(steps)["digest"])
        return 0
    warnings.simplefilter("ignore", RuntimeWarning)
    summary = run(steps, 50 if args.quick else 2000)
    print(json.dumps(summary, indent=1))
    ok = summary["all_finite"] and summary["same_bits_twice"] and summary["same_bits_1_vs_2_threads"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
