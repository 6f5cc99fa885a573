"""``vqcore demo --quick``: a picture and numbers that make sense."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def test_quick_demo_writes_a_picture_and_sensible_numbers(tmp_path):
    from sklearn.datasets import load_digits

    result = subprocess.run([sys.executable, "-m", "vqcore", "demo", "--quick", "--out", str(tmp_path / "out")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    split = next(i for i, line in enumerate(lines) if line.startswith("residual quantizer"))
    table = [line.split() for line in lines[:split] if line.split() and line.split()[0].isdigit()]
    assert [int(row[0]) for row in table] == [16, 64]
    residual = [line.split() for line in lines[split:] if line.split() and line.split()[0].isdigit()]
    assert [(int(stages), int(bits)) for stages, bits, _ in residual] == [(1, 4), (2, 8), (4, 16)]
    errors = [float(mse) for _, _, mse in residual]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.7 * errors[0]  # each stage helps

    pixels = load_digits().data / 16.0
    variance = pixels.var(axis=0).mean()  # error of the best single code, per pixel
    mse = {}
    for k, bits, ratio, vq_mse, km_mse, *_ in table:
        k = int(k)
        assert int(bits) == math.ceil(math.log2(k))
        assert float(ratio.rstrip("x")) == pytest.approx(64 * 32 / int(bits), abs=1)
        vq_mse, km_mse = float(vq_mse), float(km_mse)
        # vqcore's codebook is about as good as scikit-learn's k-means, and far better than one code
        assert vq_mse < 1.2 * km_mse and vq_mse < 0.6 * variance
        mse[k] = vq_mse
    assert mse[64] < mse[16]

    png = tmp_path / "out" / "digits.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.shape[0] > 400 and image.shape[1] > 600
    assert image[..., :3].std() > 0.1  # not a blank canvas
    assert f"picture: {png.relative_to(tmp_path)}" in result.stdout or str(png) in result.stdout


def test_demo_rejects_a_codebook_larger_than_the_training_set(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vqcore", "demo", "--sizes", "5000", "--out", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "--sizes 5000" in result.stderr
    assert np.all([not p.name.endswith(".png") for p in tmp_path.iterdir()])
