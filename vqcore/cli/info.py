"""``vqcore info``: what a quantizer file holds, and how evenly its codes are used."""
from __future__ import annotations

import numpy as np

from ..quantizer import VectorQuantizer
from .common import load_quantizer

USAGE_BINS = (  # (label, upper edge as a multiple of uniform use)
    ("< 0.1x", 0.1), ("0.1-0.5x", 0.5), ("0.5-2x", 2.0), ("2-10x", 10.0), (">= 10x", np.inf),
)


def add_parser(sub):
    """Register ``info`` on the subcommand parsers."""
    info = sub.add_parser("info", help="show a codebook's configuration and usage",
                          description="Show a quantizer file's kind, configuration, code usage (EMA sizes), "
                                      "perplexity and dead codes.")
    info.add_argument("codebook", metavar="CODEBOOK.npz")
    info.set_defaults(func=cmd_info)


def usage_histogram(counts, dead_threshold, width=40):
    """Text histogram: how many codes are dead, or used at each multiple of the uniform share."""
    counts = np.asarray(counts, dtype=np.float64).ravel()
    uniform = counts.sum() / counts.size if counts.sum() > 0 else 1.0
    dead = counts < dead_threshold
    relative = counts[~dead] / uniform
    bins = [(f"dead (< {dead_threshold:g})", int(dead.sum()))]
    lower = 0.0
    for label, upper in USAGE_BINS:
        bins.append((label, int(((relative >= lower) & (relative < upper)).sum())))
        lower = upper
    top = max(count for _, count in bins) or 1
    lines = []
    for label, count in bins:
        bar = "#" * int(round(width * count / top))
        lines.append(f"  {label:>14} | {bar:<{width}} {count}")
    return "\n".join(lines)


def cmd_info(args):
    """``vqcore info``: configuration, usage histogram, perplexity, dead codes."""
    quantizer = load_quantizer(args.codebook)
    config = quantizer.config
    print(f"file:        {args.codebook}")
    print(f"kind:        {type(quantizer).__name__}")
    if not hasattr(quantizer, "usage"):  # FSQ/LFQ kinds: an implicit codebook, no usage statistics
        print("config:      " + ", ".join(f"{k}={v}" for k, v in sorted(config.items())))
        print(f"codes:       {quantizer.codebook_size} implicit codes (nothing trained); codes of shape "
              f"{tuple(quantizer.code_shape)} per vector")
        return 0
    usage = quantizer.usage()
    if not isinstance(quantizer, VectorQuantizer):
        print("config:      " + ", ".join(f"{k}={v}" for k, v in sorted(config.items())))
        for name in ("perplexity", "dead_codes"):
            print(f"{name + ':':<13}{usage[name]} (EMA usage, per codebook)")
        return 0
    threshold = config["threshold_ema_dead_code"] or 1e-3
    trained = bool(quantizer.state_dict()["_codebook.initted"][0])
    print(f"codebook:    {quantizer.codebook_size} codes x {quantizer.codebook_dim} dims "
          f"({'cosine' if quantizer.use_cosine_sim else 'euclidean'}), {quantizer.heads} head(s), "
          f"input dim {quantizer.dim}")
    print(f"trained:     {'yes' if trained else 'no (k-means initialisation has not run)'}")
    print("config:      " + ", ".join(f"{k}={v}" for k, v in sorted(config.items())))
    print(f"perplexity:  {usage['perplexity']:.4g} of {quantizer.codebook_size} codes (EMA sizes; "
          "fit's summary counts the codes the data chose)")
    print(f"dead codes:  {usage['dead_codes']} (EMA size < {threshold:g})")
    print("usage (codes per multiple of the uniform share):")
    print(usage_histogram(usage["counts"], threshold))
    return 0
