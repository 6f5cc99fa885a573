"""Fit codebooks on scikit-learn's 8x8 digits, compare with k-means and draw the reconstructions.

The digits (1,797 images of 64 pixels) ship inside scikit-learn, so the demo
needs no download.  For each codebook size it trains a vqcore codebook on 80 %
of the images, encodes and decodes the other 20 %, and prints the compression
ratio and the reconstruction error next to scikit-learn's ``KMeans`` with the
same number of codes.  The picture shows held-out digits beside their
reconstructions and how evenly each codebook's codes are used.
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from .._optional import require
from ..metrics import perplexity

__all__ = ["run", "add_arguments", "main"]

DEFAULT_SIZES = (16, 64, 256)
QUICK_SIZES = (16, 64)
PIXEL_MAX = 16.0  # digits pixels are integers 0..16
RESIDUAL_CODES = 16  # codes per residual stage: 4 bits, so 1, 2, 4, 8 stages give 4 to 32 bits per digit


def add_arguments(parser):
    """Options of ``vqcore demo``."""
    parser.add_argument("--out", default="demo-output", metavar="DIR",
                        help="directory for the picture (default ./demo-output)")
    parser.add_argument("--sizes", type=int, nargs="+", metavar="K",
                        help=f"codebook sizes (default {' '.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--quick", action="store_true", help="fewer codebooks and passes (for tests)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def load_split(seed):
    """Digits scaled to [0, 1] as float32, split 80/20 at random: ``(train, test, test_labels)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / PIXEL_MAX).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[order[:cut]], x[order[cut:]], digits.target[order[cut:]]


def fit_vqcore(train, k, *, epochs, seed):
    """A vqcore codebook: k-means on the whole training set, then EMA passes with dead-code re-seeding."""
    from ..quantizer import VectorQuantizer

    quantizer = VectorQuantizer(train.shape[1], k, kmeans_init=True, kmeans_iters=20, decay=0.8,
                                threshold_ema_dead_code=1.0, seed=seed)
    quantizer.fit(train, batch_size=len(train), epochs=epochs, progress=False)
    return quantizer


def compare(train, test, k, *, epochs, seed):
    """Fit vqcore and scikit-learn k-means with ``k`` codes; errors on ``test`` and timings."""
    from sklearn.cluster import KMeans

    start = time.perf_counter()
    quantizer = fit_vqcore(train, k, epochs=epochs, seed=seed)
    vq_time = time.perf_counter() - start
    codes = quantizer.encode(test)
    reconstruction = quantizer.decode(codes)

    start = time.perf_counter()
    kmeans = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(train)
    km_time = time.perf_counter() - start
    km_reconstruction = kmeans.cluster_centers_[kmeans.predict(test)]

    train_counts = np.bincount(quantizer.encode(train).ravel(), minlength=k)
    bits = max(math.ceil(math.log2(k)), 1)
    return {
        "k": k,
        "bits": bits,
        "ratio": train.shape[1] * 32 / bits,
        "mse": float(np.mean((reconstruction - test) ** 2)),
        "kmeans_mse": float(np.mean((km_reconstruction - test) ** 2)),
        "time": vq_time,
        "kmeans_time": km_time,
        "perplexity": perplexity(train_counts),
        "dead": int((train_counts == 0).sum()),
        "reconstruction": reconstruction,
        "train_counts": train_counts,
    }


def print_table(results, stream):
    """The comparison table (errors are mean squared pixel errors, pixels scaled to [0, 1])."""
    print("codes  bits/vector  ratio vs float32  test MSE vqcore  test MSE k-means  fit s vqcore  "
          "fit s k-means  perplexity  unused codes", file=stream)
    for r in results:
        print(f"{r['k']:>5}  {r['bits']:>11}  {r['ratio']:>15.0f}x  {r['mse']:>15.5f}  {r['kmeans_mse']:>16.5f}  "
              f"{r['time']:>12.2f}  {r['kmeans_time']:>13.2f}  {r['perplexity']:>10.1f}  {r['dead']:>12}",
              file=stream)


def residual_stages(train, test, *, seed, quick):
    """A residual quantizer of 16-code stages: test reconstructions after 1, 2, 4 and 8 stages.

    Returns a list of ``(stages, bits per vector, test MSE, reconstruction)``.
    """
    from ..residual import ResidualQuantizer

    stages = 4 if quick else 8
    quantizer = ResidualQuantizer(train.shape[1], RESIDUAL_CODES, stages, seed=seed).fit(train, progress=False)
    codes = quantizer.encode(test)
    bits = int(math.log2(RESIDUAL_CODES))
    out = []
    for m in (1, 2, 4, 8):
        if m <= stages:
            reconstruction = quantizer.decode(codes[:, :m])
            out.append((m, bits * m, float(np.mean((reconstruction - test) ** 2)), reconstruction))
    return out


def print_residual_table(rows, stream):
    """Error after each number of residual stages (bits per vector = 4 x stages)."""
    print(f"residual quantizer, {RESIDUAL_CODES} codes per stage:", file=stream)
    print("stages  bits/vector  test MSE", file=stream)
    for stages, bits, mse, _ in rows:
        print(f"{stages:>6}  {bits:>11}  {mse:>8.5f}", file=stream)


def draw(path, test, labels, results, residual=()):
    """Write the picture: one held-out digit per class above its reconstructions
    (single codebooks, then residual stages); code usage below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = [int(np.flatnonzero(labels == digit)[0]) for digit in range(10) if (labels == digit).any()]
    rows = [("original", test)] + [(f"k = {r['k']} ({r['bits']} bits)", r["reconstruction"]) for r in results]
    rows += [(f"RQ {stages} stage{'s' * (stages > 1)} ({bits} bits)", recon) for stages, bits, _, recon in residual]
    fig = plt.figure(figsize=(max(1.1 * len(picks), 3.2 * len(results)) + 1.2, 1.1 * len(rows) + 2.8),
                     layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.1 * len(rows), 2.6])
    axes = top.subplots(len(rows), len(picks), squeeze=False)
    for i, (name, images) in enumerate(rows):
        for j, pick in enumerate(picks):
            ax = axes[i, j]
            ax.imshow(images[pick].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    for i, (ax, r) in enumerate(zip(bottom.subplots(1, len(results), squeeze=False)[0], results)):
        counts = np.sort(r["train_counts"])[::-1]
        ax.bar(np.arange(len(counts)), counts, width=1.0, color="tab:blue")
        ax.axhline(counts.sum() / len(counts), color="tab:red", lw=1, label="uniform")
        ax.set_title(f"code usage, k = {r['k']}", fontsize=9)
        ax.set_xlabel("codes, most used first", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.set_ylabel("training vectors", fontsize=8)
            ax.legend(fontsize=7)
    fig.suptitle("vqcore on scikit-learn's 8x8 digits: held-out originals and their reconstructions")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out_dir="demo-output", sizes=None, *, quick=False, seed=0, stream=None):
    """Run the demo; return the results and the picture's path.

    Parameters
    ----------
    out_dir : str
        Directory for ``digits.png`` (created if missing).
    sizes : sequence of int, optional
        Codebook sizes; default 16, 64, 256 (16, 64 with ``quick``).
    quick : bool
        Fewer EMA passes and sizes, for tests.
    seed : int
    stream : file, optional
        Where the table goes (default stdout).

    Returns
    -------
    results : list of dict
    path : str
    """
    stream = sys.stdout if stream is None else stream
    sizes = tuple(sizes or (QUICK_SIZES if quick else DEFAULT_SIZES))
    train, test, labels = load_split(seed)
    for k in sizes:
        if not 1 <= k <= len(train):
            raise ValueError(f"--sizes {k}: a codebook size must lie in [1, {len(train)}] (training images)")
    print(f"digits: {len(train)} training and {len(test)} held-out images of 8x8 pixels", file=stream)
    start = time.perf_counter()
    results = [compare(train, test, k, epochs=3 if quick else 10, seed=seed) for k in sizes]
    print_table(results, stream)
    residual = residual_stages(train, test, seed=seed, quick=quick)
    print_residual_table(residual, stream)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "digits.png")
    draw(path, test, labels, results, residual)
    print(f"picture: {path}  ({time.perf_counter() - start:.1f} s)", file=stream)
    return results, path


def main(args):
    """``vqcore demo``: run with the parsed command-line options; returns the exit code."""
    for module in ("sklearn", "matplotlib"):
        require(module, "vqcore demo")  # before any work: exit 2 naming the extra
    run(args.out, args.sizes, quick=args.quick, seed=args.seed)
    return 0
