"""The package installs non-editable into a fresh venv under the one import name `lactron`.

The fresh venv borrows the project venv's third-party packages through a .pth path entry (that only adds the
directory to sys.path: the project venv's own editable-install hooks are not executed), so the test checks the
packaging of lactron itself without downloading anything.
"""
import os
import subprocess
import sys
import sysconfig
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_non_editable_install_in_fresh_venv(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    site = subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   text=True).strip()
    with open(os.path.join(site, "zz_project_deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    # Build the wheel with the project's (pinned, modern) setuptools, install it into the fresh venv.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), ROOT], check=True, cwd=tmp_path)
    wheels = list((tmp_path / "dist").glob("lactron-*.whl"))
    assert len(wheels) == 1, wheels
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(wheels[0])], check=True, cwd=tmp_path)
    probe = (
        "import sys, lactron.model, lactron.parallel, lactron.data, lactron.launch\n"
        "assert lactron.model.__file__.startswith(sys.argv[1]), lactron.model.__file__\n"
        "import lactron.model.lm, lactron.model.fast_weights\n"
        "bad = [m for m in ('deepspeed', 'ray') if m in sys.modules]\n"
        "assert not bad, f'lactron.model imported {bad}'\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('model') is None and importlib.util.find_spec('data') is None\n"
        "print('ok')\n")
    out = subprocess.run([py, "-c", probe, site], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    cli = subprocess.run([str(env_dir / "bin" / "lactron"), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert cli.returncode == 0 and "train" in cli.stdout, cli.stderr
