"""Residual and product quantization (issue 11): vqcore against faiss on image patches.

4x4x3 patches of scikit-image's sample photographs (48 floats in [0, 1]);
the bottom fifth of every image is held out for testing.  The train case
times fitting (the fitted models are kept for the encode case and the
error-against-bits curve); quality is the test MSE over the test variance.
"""
from __future__ import annotations

import numpy as np

from .core import Case, Config, Impl, Target, Unavailable, run_case
from .peers import require

NAME = "residual"
DESCRIPTION = ("RQ (beam 1, 5), grouped RQ and PQ fit/encode vs faiss ResidualQuantizer/ProductQuantizer "
               "on image patches; test MSE/variance against bits per vector")

FLOOR = "BLAS floor: per-stage GEMMs"  # a reference row, not a library
FULL = {"train": 65536, "test": 16384, "k": 256, "stages": 8, "groups": 2}
QUICK = {"train": 2048, "test": 512, "k": 16, "stages": 4, "groups": 2}
IMAGES = ("astronaut", "coffee", "chelsea")
PATCH = 4
STRIDE = 2
HELD_OUT = 0.2
BEAMS = (1, 5)
SEED_EPOCHS = 2


def image_patches(quick=False, images=IMAGES, seed=0):
    """Train and test rows (float32, 48 features in [0, 1]) from scikit-image's sample photographs.

    Patches of ``PATCH x PATCH`` pixels every ``STRIDE`` pixels; a patch
    whose rows start in the last ``HELD_OUT`` of its image is a test patch,
    so no test pixel is seen in training.  Both sets are shuffled and cut to
    the sizes of ``QUICK``/``FULL``.
    """
    data = require("skimage.data")
    params = QUICK if quick else FULL
    train, test = [], []
    for name in images:
        image = getattr(data, name)().astype(np.float32) / 255.0
        height, width = image.shape[:2]
        windows = np.lib.stride_tricks.sliding_window_view(image, (PATCH, PATCH), axis=(0, 1))
        windows = windows[::STRIDE, ::STRIDE]  # (rows, cols, channels, PATCH, PATCH)
        rows = windows.transpose(0, 1, 3, 4, 2).reshape(windows.shape[0], windows.shape[1], -1)
        cut = int(np.ceil((height * (1 - HELD_OUT)) / STRIDE))
        # a training patch must end above the held-out band
        last_train = max(0, (int(height * (1 - HELD_OUT)) - PATCH) // STRIDE + 1)
        train.append(rows[:last_train].reshape(-1, rows.shape[-1]))
        test.append(rows[cut:].reshape(-1, rows.shape[-1]))
    rng = np.random.default_rng(seed)
    train, test = np.concatenate(train), np.concatenate(test)
    train = train[rng.permutation(len(train))[:params["train"]]]
    test = test[rng.permutation(len(test))[:params["test"]]]
    return np.ascontiguousarray(train), np.ascontiguousarray(test)


def relative_mse(test, reconstruction):
    """Test MSE over the test set's variance (per element): 1.0 is predicting the mean."""
    variance = float(test.astype(np.float64).var(axis=0).mean())
    diff = test.astype(np.float64) - reconstruction
    return float(np.mean(diff * diff) / variance)


class Models:
    """Models fitted in the train case, reused by the encode case and the curve."""

    def __init__(self):
        self.fitted = {}

    def keep(self, name, model):
        self.fitted[name] = model
        return model

    def get(self, name):
        if name not in self.fitted:
            raise Unavailable(f"{name} was not fitted in the train case")
        return self.fitted[name]


def run(config: Config) -> list[Case]:
    """Train case, encode case, and the error-against-bits curve."""
    params = QUICK if config.quick else FULL
    train, test = image_patches(config.quick)
    k, stages, groups = params["k"], params["stages"], params["groups"]
    d = train.shape[1]
    bits = stages * int(np.log2(k))
    models = Models()
    label = f"{len(train)} train / {len(test)} test patches, d={d}, {stages} x {k} codes ({bits} bits)"
    common = {**params, "d": d, "dtype": "float32", "images": list(IMAGES)}

    def quality(name, encoders):
        def inspect(model):
            models.keep(name, model)
            return {key: relative_mse(test, decode()) for key, decode in encoders(model).items()}
        return inspect

    def rq_quality(beam):
        return lambda model: {"mse": lambda: model.decode(model.encode(test, beam_size=beam))}

    def faiss_quality(model):
        return {"mse": lambda: model.decode(model.compute_codes(test))}

    def vq_quality(model):
        return {"mse": lambda: model.decode(model.encode(test))}

    fit_impls = [
        Impl(f"vqcore RQ beam {b}", lambda b=b: _vqcore_rq(train, k, stages, 1, b),
             quality(f"vqcore RQ beam {b}", rq_quality(b)), f"beam_size={b} in training and encoding")
        for b in BEAMS
    ]
    fit_impls += [
        Impl(f"vqcore RQ groups={groups}", lambda: _vqcore_rq(train, k, stages // groups, groups, 1),
             quality(f"vqcore RQ groups={groups}", rq_quality(1)), f"{groups} groups x {stages // groups} stages"),
        Impl("vqcore PQ", lambda: _vqcore_pq(train, k, stages), quality("vqcore PQ", vq_quality)),
        Impl("vqcore k-means", lambda: _vqcore_kmeans(train, k), quality("vqcore k-means", vq_quality),
             f"one codebook of {k} codes ({int(np.log2(k))} bits)"),
    ]
    fit_impls += [
        Impl(f"faiss RQ beam {b}", lambda b=b: _faiss_rq(train, k, stages, b), quality(f"faiss RQ beam {b}", faiss_quality),
             f"max_beam_size={b} in training and encoding")
        for b in BEAMS
    ]
    epochs = 1 if config.quick else SEED_EPOCHS
    fit_impls += [
        Impl("faiss PQ", lambda: _faiss_pq(train, k, stages), quality("faiss PQ", faiss_quality)),
        Impl("vqp 1.14.5 ResidualVQ EMA", lambda: _seed_rvq(train, k, stages, epochs),
             quality("vqp 1.14.5 ResidualVQ EMA", lambda model: {"mse": lambda: model.decode(test)}),
             f"vector-quantize-pytorch, {epochs} epoch(s) of batches of 1024, k-means init, for reference"),
    ]
    fit_targets = [Target(f"vqcore RQ beam {b}", f"faiss RQ beam {b}", 0.5) for b in BEAMS]
    fit_targets += [Target("vqcore PQ", "faiss PQ", 1.0)]
    fit_targets += [Target(f"vqcore RQ beam {b}", f"faiss RQ beam {b}", 1.0, key="mse",
                           note=f"test MSE at beam {b}") for b in BEAMS]
    fit_targets += [Target("vqcore PQ", "faiss PQ", 1.02, key="mse")]
    fit_case = Case(NAME, f"fit: {label}", {**common, "mode": "fit"}, targets=fit_targets)
    cases = [run_case(fit_case, fit_impls, config.repeat, config.budget_s, config.threads)]

    encode_impls = [Impl(f"vqcore RQ beam {b}", lambda b=b: _encode_rq(models.get(f"vqcore RQ beam {b}"), test, b),
                         lambda codes, b=b: {"mse": relative_mse(test, models.get(f"vqcore RQ beam {b}").decode(codes))})
                    for b in BEAMS]
    encode_impls += [Impl(f"faiss RQ beam {b}", lambda b=b: _encode_faiss(models.get(f"faiss RQ beam {b}"), test),
                          lambda codes, b=b: {"mse": relative_mse(test, models.get(f"faiss RQ beam {b}").decode(codes))})
                     for b in BEAMS]
    encode_impls += [
        Impl("vqcore PQ", lambda: _encode_vq(models.get("vqcore PQ"), test),
             lambda codes: {"mse": relative_mse(test, models.get("vqcore PQ").decode(codes))}),
        Impl("faiss PQ", lambda: _encode_faiss(models.get("faiss PQ"), test),
             lambda codes: {"mse": relative_mse(test, models.get("faiss PQ").decode(codes))}),
    ]
    encode_impls.append(Impl(FLOOR, lambda: _score_floor(models.get("vqcore RQ beam 1"), test),
                             note="numpy's BLAS scoring every stage's codes, nothing else: the floor of a "
                                  "beam-1 encode that scores all codes in fp32"))
    encode_targets = [Target(f"vqcore RQ beam {b}", f"faiss RQ beam {b}", 0.5) for b in BEAMS]
    encode_targets += [Target("vqcore PQ", "faiss PQ", 1.0), Target(FLOOR, "faiss RQ beam 1", None),
                       Target("vqcore RQ beam 1", FLOOR, None)]
    encode_case = Case(NAME, f"encode: {label}", {**common, "mode": "encode"}, targets=encode_targets)
    cases.append(run_case(encode_case, encode_impls, config.repeat, config.budget_s, config.threads))
    cases.append(_curve(models, train, test, k, stages, common, config.quick))
    return cases


def _curve(models, train, test, k, stages, common, quick):
    """Test MSE/variance against bits per vector for VQ, PQ, RQ and grouped RQ (a note per method)."""
    case = Case(NAME, "MSE/variance against bits per vector", {**common, "mode": "curve"})
    per_code = int(np.log2(k))
    curve = {}
    try:
        rq = models.get("vqcore RQ beam 1")
        curve["RQ beam 1"] = {per_code * m: relative_mse(test, rq.decode(rq.encode(test)[:, :m]))
                              for m in range(1, stages + 1)}
        grouped = next(model for name, model in models.fitted.items() if name.startswith("vqcore RQ groups"))
        codes = grouped.encode(test)
        curve[f"RQ groups={grouped.groups}"] = {
            per_code * grouped.groups * m: relative_mse(test, grouped.decode(codes[..., :m]))
            for m in range(1, grouped.num_quantizers + 1)}
    except (Unavailable, StopIteration) as exc:
        case.notes.append(f"RQ curve missing: {exc}")
    vqcore = require("vqcore")
    curve["PQ"] = {}
    for subspaces in (1, 2, 4) if quick else (1, 2, 4, 8, 16):
        if subspaces * per_code > stages * per_code * 2 or train.shape[1] % subspaces:
            continue
        pq = vqcore.ProductQuantizer(train.shape[1], k, subspaces, seed=0).fit(train, progress=False)
        curve["PQ"][per_code * subspaces] = relative_mse(test, pq.decode(pq.encode(test)))
    curve["VQ"] = {}
    for bits in range(per_code - 1, per_code + 1) if quick else range(4, per_code + 3):
        vq = vqcore.ProductQuantizer(train.shape[1], 2 ** bits, 1, seed=0).fit(train, progress=False)
        curve["VQ"][bits] = relative_mse(test, vq.decode(vq.encode(test)))
    for method, points in curve.items():
        case.notes.append(f"{method}: " + ", ".join(f"{b} bits {v:.4f}" for b, v in sorted(points.items())))
    case.params["curve"] = {method: {str(b): v for b, v in points.items()} for method, points in curve.items()}
    _plot(curve, quick)
    return case


def _plot(curve, quick):
    """Save the curve as results/residual_mse_bits.png (``_quick`` in quick mode) when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    from pathlib import Path

    figure, axes = plt.subplots(figsize=(6, 4))
    for method, points in curve.items():
        xs = sorted(points)
        axes.plot(xs, [points[b] for b in xs], marker="o", label=method)
    axes.set_xlabel("bits per vector")
    axes.set_ylabel("test MSE / variance")
    axes.set_yscale("log")
    axes.legend()
    axes.set_title("4x4x3 image patches")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    figure.tight_layout()
    figure.savefig(out / f"residual_mse_bits{'_quick' if quick else ''}.png", dpi=100)
    plt.close(figure)


# -- implementations: each returns the zero-argument call to time ---------------------
def _vqcore_rq(train, k, stages, groups, beam):
    cls = require("vqcore", "ResidualQuantizer")
    return lambda: cls(train.shape[1], k, stages, groups=groups, beam_size=beam, seed=0).fit(train, progress=False)


def _vqcore_pq(train, k, subspaces):
    cls = require("vqcore", "ProductQuantizer")
    return lambda: cls(train.shape[1], k, subspaces, seed=0).fit(train, progress=False)


def _vqcore_kmeans(train, k):
    # a one-subspace product quantizer is a single k-means codebook with encode/decode
    cls = require("vqcore", "ProductQuantizer")
    return lambda: cls(train.shape[1], k, 1, seed=0).fit(train, progress=False)


def _faiss_rq(train, k, stages, beam):
    faiss = require("faiss")

    def fit():
        model = faiss.ResidualQuantizer(train.shape[1], stages, int(np.log2(k)))
        model.max_beam_size = beam
        model.train(train)
        return model
    return fit


def _faiss_pq(train, k, subspaces):
    faiss = require("faiss")

    def fit():
        model = faiss.ProductQuantizer(train.shape[1], subspaces, int(np.log2(k)))
        model.train(train)
        return model
    return fit


class _SeedModel:
    """The seed's trained ResidualVQ, decoding numpy rows through its eval forward."""

    def __init__(self, layer, torch):
        self.layer, self.torch = layer, torch

    def decode(self, rows):
        with self.torch.no_grad():
            return self.layer(self.torch.from_numpy(rows)[None])[0][0].numpy()


def _seed_rvq(train, k, stages, epochs):
    seed = require("vector_quantize_pytorch")
    torch = require("torch")

    def fit():
        torch.manual_seed(0)
        layer = seed.ResidualVQ(dim=train.shape[1], num_quantizers=stages, codebook_size=k, kmeans_init=True,
                                threshold_ema_dead_code=2).train()
        rows = torch.from_numpy(train)
        with torch.no_grad():
            for _ in range(epochs):
                for start in range(0, len(rows), 1024):
                    layer(rows[start:start + 1024][None])
        return _SeedModel(layer.eval(), torch)
    return fit


def _score_floor(model, test):
    """One GEMM per stage, ``test @ codebook.T``: what a beam-1 encode cannot do without."""
    codebooks = [np.ascontiguousarray(c.T) for c in model.codebooks]

    def scores():
        for codebook_t in codebooks:
            np.dot(test, codebook_t)
    return scores


def _encode_rq(model, test, beam):
    return lambda: model.encode(test, beam_size=beam)


def _encode_vq(model, test):
    return lambda: model.encode(test)


def _encode_faiss(model, test):
    return lambda: model.compute_codes(test)
