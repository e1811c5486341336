"""The package installs: a wheel built from the checkout, installed (not editable) in a fresh
venv, validates the shipped config from another directory with the schema inside the package."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.workflow


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}"
    return proc.stdout


def test_a_wheel_installed_in_a_fresh_venv_validates_the_config(tmp_path):
    # no PYTHONPATH: the checkout's src/ must not stand in for the installed package
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # build from a copy of what the wheel is made of, so the checkout gets no build/ or egg-info
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."], source, env)
    (wheel,) = wheels.glob("tuneatlas-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            tmp_path,
            env,
        ).strip()
    )
    # the project venv's dependencies, seen through a .pth line: .pth files inside a directory
    # added this way are not processed, so its editable tuneatlas stays invisible
    deps = [sysconfig.get_path("purelib"), *site.getsitepackages()]
    (purelib / "project_dependencies.pth").write_text(
        "\n".join(dict.fromkeys(str(Path(d)) for d in deps)) + "\n"
    )
    _run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        tmp_path,
        env,
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = _run([str(python), "-c", "import tuneatlas; print(tuneatlas.__file__)"], elsewhere, env)
    assert Path(found.strip()).resolve().is_relative_to(venv.resolve()), found
    out = _run(
        [str(venv / "bin" / "tuneatlas"), "validate", str(REPO / "config.yaml")], elsewhere, env
    )
    assert f"{REPO / 'config.yaml'}: valid (hash " in out, out
    print(out)
