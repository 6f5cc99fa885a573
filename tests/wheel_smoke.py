"""Smoke test of a plain install (run by ``./dev package`` in a fresh venv holding only the wheel).

Fits, encodes, saves and loads with numpy alone, and checks that the optional
parts name their extra.  Not collected by pytest (no ``test_`` prefix).
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import vqcore

rng = np.random.default_rng(0)
x = rng.standard_normal((2000, 16)).astype(np.float32)
vq = vqcore.VectorQuantizer(16, 32, kmeans_init=True, seed=0)
vq.fit(x, batch_size=1000, epochs=2, progress=False)
codes = vq.encode(x)
assert (vqcore.nearest(x, vq.codebook) == codes).all()
rq = vqcore.ResidualQuantizer(16, 32, 2, seed=0).fit(x, progress=False)
with tempfile.TemporaryDirectory() as folder:
    vq.save(Path(folder) / "vq.npz")
    rq.save(Path(folder) / "rq.npz")
    assert (vqcore.load(Path(folder) / "vq.npz").encode(x) == codes).all()
    assert (vqcore.load(Path(folder) / "rq.npz").encode(x) == rq.encode(x)).all()
    for module in ("torch", "sklearn", "mpi4py"):
        assert module not in sys.modules, module
    torchless = subprocess.run([sys.executable, "-c", "import vqtorch"], capture_output=True, text=True)
    assert 'pip install "vqcore[torch]"' in torchless.stderr, torchless.stderr
    demo = subprocess.run([sys.executable, "-m", "vqcore", "demo", "--quick", "--out", folder],
                          capture_output=True, text=True)
    assert demo.returncode == 2 and 'vqcore[demo]' in demo.stderr, demo.stderr
print(f"wheel smoke test passed: vqcore {vqcore.__version__} on Python {sys.version.split()[0]}")
