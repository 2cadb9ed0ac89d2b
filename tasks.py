#!/usr/bin/env python3
"""Developer tasks, needing nothing but Python 3.11+ (and apt for the test tools).

    python3 tasks.py demo     # set up .venv and run the demonstration
    python3 tasks.py test     # set up .venv (+ the tools the tests drive) and run the whole suite
    python3 tasks.py lint     # ruff + mypy --strict
    python3 tasks.py bench    # the side-by-side benchmarks (see benchmarks/README.md)
    python3 tasks.py docs     # build the documentation site (mkdocs build --strict)

Each task creates the virtualenv it needs in .venv (or uses $PROCFLOW_VENV).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("PROCFLOW_VENV", ROOT / ".venv"))
PY = VENV / "bin" / "python"
#: Programs the tests and recipes drive for real, and the Debian packages that bring them.
TOOLS = {
    "zstd": "zstd",
    "xz": "xz-utils",
    "gzip": "gzip",
    "ffmpeg": "ffmpeg",
    "ffprobe": "ffmpeg",
    "cc": "gcc",
    "git": "git",
    "tar": "tar",
    "bash": "bash",
}


def sh(*cmd: str | Path, **kw: object) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)  # type: ignore[call-overload]


def venv(extras: str) -> None:
    stamp = VENV / f".ready-{extras}"
    pyproject = ROOT / "pyproject.toml"
    if stamp.exists() and stamp.stat().st_mtime >= pyproject.stat().st_mtime:
        return
    if not PY.exists():
        try:
            sh(sys.executable, "-m", "venv", VENV)
        except subprocess.CalledProcessError:
            # Debian's python3 without python3-venv has no ensurepip: make the venv
            # without pip and let this Python's pip install into it.
            shutil.rmtree(VENV, ignore_errors=True)
            sh(sys.executable, "-m", "venv", "--without-pip", VENV)
    if subprocess.run([PY, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        pip = [PY, "-m", "pip"]
    else:
        pip = [Path(sys.executable), "-m", "pip", "--python", PY]
    sh(*pip, "install", "-q", "--disable-pip-version-check", "-e", f".[{extras}]")
    stamp.touch()


def tools() -> None:
    missing = sorted({pkg for prog, pkg in TOOLS.items() if shutil.which(prog) is None})
    if not missing:
        return
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        prefix = "" if os.geteuid() == 0 else "sudo "
        sys.exit(f"the tests drive real tools; install them first: {prefix}apt-get install -y {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sh(apt, "update", "-qq", env=env)
    sh(apt, "install", "-y", "-qq", "--no-install-recommends", *missing, env=env)


def demo() -> None:
    venv("dev")
    sh(PY, "recipes/demo.py")


def test() -> None:
    venv("dev")
    tools()
    sh(PY, "-m", "pytest", *sys.argv[2:])


def lint() -> None:
    venv("dev")
    sh(PY, "-m", "ruff", "check", "procflow", "tests", "recipes", "benchmarks", "tasks.py")
    sh(PY, "-m", "mypy", "--strict", "procflow")


def bench() -> None:
    venv("dev,bench")
    tools()
    sh(PY, "benchmarks/run.py", *sys.argv[2:])


def docs() -> None:
    venv("dev,docs")
    sh(PY, "-m", "mkdocs", "build", "--strict", "--site-dir", "site")


TASKS = {"demo": demo, "test": test, "lint": lint, "bench": bench, "docs": docs}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        sys.exit(__doc__)
    try:
        TASKS[sys.argv[1]]()
    except subprocess.CalledProcessError as e:
        sys.exit(e.returncode)
