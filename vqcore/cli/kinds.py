"""Which quantizer ``vqcore fit`` trains: one codebook (EMA, streamed), residual or product (k-means in
memory), or FSQ/LFQ (nothing to fit: the configuration is written)."""
from __future__ import annotations

from .common import UsageError, int_at_least

#: Kinds trained from all of a rank's rows at once (stage or subspace k-means).
IN_MEMORY = ("residual", "product")
#: Kinds with an implicit codebook: ``fit`` only writes their configuration.
IMPLICIT = ("fsq", "lfq")


def levels(text):
    """``--fsq 8,5,5,5`` -> [8, 5, 5, 5]."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--fsq {text!r}: give the levels as integers separated by commas, e.g. 8,5,5,5") from None
    return values


def add_arguments(fit):
    """The options that choose and shape the kind."""
    kind = fit.add_argument_group("quantizer kind (default: one codebook trained by k-means, then EMA)")
    kind.add_argument("--residual", type=int_at_least(1), metavar="M",
                      help="M residual stages of -k codes each (RQ-KMeans: stage-by-stage k-means on the residuals)")
    kind.add_argument("--groups", type=int_at_least(1), default=1, metavar="G",
                      help="with --residual: split the dims into G groups, each its own residual stack")
    kind.add_argument("--beam", type=int_at_least(1), default=1, metavar="B",
                      help="with --residual: beam width of the encoder (default 1: greedy)")
    kind.add_argument("--product", type=int_at_least(1), metavar="M",
                      help="M subspaces (product quantization): one -k-code codebook per slice of the dims")
    kind.add_argument("--init", choices=("random", "k-means++"), default=None,
                      help="k-means initialisation (default: the seed's random rows for one codebook and "
                           "residual stages, k-means++ for product subspaces)")
    kind.add_argument("--fsq", type=levels, metavar="LEVELS",
                      help="finite scalar quantization with these levels, e.g. 8,5,5,5 (nothing to train: "
                           "writes the configuration; the data's dim must equal the number of levels)")
    kind.add_argument("--lfq", action="store_true",
                      help="lookup-free quantization with -k codes (a power of two; nothing to train; the data's "
                           "dim must be log2(k))")


def chosen(args):
    """The kind the options ask for; conflicting options are a :class:`UsageError`."""
    picked = [name for name, on in (("residual", args.residual), ("product", args.product),
                                    ("fsq", args.fsq is not None), ("lfq", args.lfq)) if on]
    if len(picked) > 1:
        raise UsageError(f"choose one kind: {' and '.join('--' + p for p in picked)} cannot be combined")
    kind = picked[0] if picked else "vq"
    if kind != "residual" and (args.groups != 1 or args.beam != 1):
        raise UsageError("--groups and --beam shape a residual quantizer: add --residual M")
    if kind != "vq" and (args.heads != 1 or args.codebook_dim is not None or args.cosine and kind != "residual"):
        raise UsageError(f"--heads/--codebook-dim{'/--cosine' if kind != 'residual' else ''} apply to one codebook "
                         f"(or --cosine to --residual); leave them out with --{kind}")
    if kind in IMPLICIT and args.init is not None:
        raise UsageError(f"--init: --{kind} has no codebook to initialise")
    if kind != "fsq" and args.codebook_size is None:
        raise UsageError("-k K (the number of codes) is required")
    return kind


def build(kind, args, dim, seed, comm):
    """The quantizer object for ``kind`` on data of ``dim`` features."""
    from ..fsq import FSQ
    from ..lfq import LFQ
    from ..product import ProductQuantizer
    from ..residual import ResidualQuantizer

    if kind == "residual":
        if dim % args.groups:
            raise UsageError(f"--groups {args.groups} does not divide the data's dim {dim}")
        return ResidualQuantizer(dim, args.codebook_size, args.residual, groups=args.groups, beam_size=args.beam,
                                 use_cosine_sim=args.cosine, decay=args.decay, seed=seed, comm=comm)
    if kind == "product":
        if dim % args.product:
            raise UsageError(f"--product {args.product} does not divide the data's dim {dim}")
        return ProductQuantizer(dim, args.codebook_size, args.product, decay=args.decay, seed=seed, comm=comm)
    if kind == "fsq":
        if dim != len(args.fsq):
            raise UsageError(f"--fsq with {len(args.fsq)} levels needs data of dim {len(args.fsq)}, not {dim}; "
                             "for projections train vqtorch.FSQ and export it with to_vqcore()")
        return FSQ(args.fsq)
    quantizer = LFQ(codebook_size=args.codebook_size)
    if quantizer.dim != dim:
        raise UsageError(f"--lfq with -k {args.codebook_size} needs data of dim {quantizer.dim}, not {dim}; "
                         "for projections train vqtorch.LFQ and export it with to_vqcore()")
    return quantizer


def train(kind, quantizer, x, args, show):
    """Fit an in-memory kind on this rank's rows ``x``."""
    init = args.init or ("k-means++" if kind == "product" else "random")
    quantizer.fit(x, iters=max(args.kmeans_iters, 1), init=init, progress=show)
