"""Check what a built wheel and sdist hold (run by ``./dev package``): what they must, nothing they must not."""
import sys
import tarfile
import zipfile
from pathlib import Path

dist = Path(sys.argv[1])
wheel = zipfile.ZipFile(next(dist.glob("*.whl"))).namelist()
sdist = tarfile.open(next(dist.glob("*.tar.gz"))).getnames()
problems = []
for name in ("vqcore/__init__.py", "vqcore/cli/main.py", "vqcore/kernels/search.py", "vqtorch/__init__.py"):
    if name not in wheel:
        problems.append(f"wheel lacks {name}")
if not any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in wheel):
    problems.append("wheel lacks the license file")
for forbidden in ("tests/", "benchmarks/", ".venv", "results/", "demo-output", "__pycache__", ".nbi", ".nbc"):
    problems += [f"wheel holds {n}" for n in wheel if forbidden in n]
    if forbidden not in ("tests/", "benchmarks/"):  # the sdist carries the tests, not scratch files
        problems += [f"sdist holds {n}" for n in sdist if forbidden in n]
for name in ("LICENSE", "README.md", "pyproject.toml", "vqcore/__init__.py"):
    if not any(n.endswith("/" + name) for n in sdist):
        problems.append(f"sdist lacks {name}")
if problems:
    sys.exit("dist check failed:\n  " + "\n  ".join(problems))
print(f"dist check passed: wheel {len(wheel)} files, sdist {len(sdist)} files")
