"""Packaging: a non-editable install ships the bundles (``lckd_med/bundles/<name>/``) and finds them from any working
directory; the package list in ``pyproject.toml`` names every package of the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lckd_med.demo import method_bundles
from lckd_med.engines.workflow import bundle_dir, bundles_root

REPO = Path(__file__).resolve().parents[1]
BUNDLES = tuple(method_bundles())
#: what every bundle ships (other methods' evaluate/inference are overlays of LCKD's, still files of their own)
BUNDLE_FILES = ("train.json", "evaluate.json", "inference.json", "metadata.json")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_package_list_names_every_package_of_the_source_tree():
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for top in ("lckd_med", "data_prep")
        for p in (REPO / top).rglob("__init__.py")
    }
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    assert listed == found | {"lckd_med.bundles"}


def test_bundles_root_of_a_source_checkout_is_the_top_level_folder():
    assert bundles_root() == REPO / "bundles"
    for name in BUNDLES:
        assert Path(bundle_dir(name)) == REPO / "bundles" / name


def test_unknown_bundle_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match=r"no bundle 'nope'.*'lckd'.*'omd'"):
        bundle_dir("nope")


def _source_copy(dst: Path) -> Path:
    """The files a clean clone has (no run outputs, caches or build leftovers), so the build leaves REPO alone."""
    ignore = shutil.ignore_patterns(
        ".git", "runs", "demo_data", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", "*.nii*", "*.pt"
    )
    shutil.copytree(REPO, dst, ignore=ignore)
    return dst


def _offline_build_missing() -> str | None:
    """Why ``pip wheel --no-build-isolation`` (no download of the build backend) cannot run here, if it cannot."""
    from packaging.version import Version

    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed"
    if Version(setuptools.__version__) < Version("70.1"):  # older ones build wheels through the wheel package
        try:
            import wheel  # noqa: F401
        except ImportError:
            return f"setuptools {setuptools.__version__} without the wheel package"
    return None


@pytest.mark.slow
def test_wheel_ships_the_bundles_and_finds_them_from_any_directory(tmp_path):
    if why := _offline_build_missing():
        pytest.skip(f"cannot build a wheel offline: {why}")
    src = _source_copy(tmp_path / "src")
    (src / "bundles" / "lckd" / "runs").mkdir()
    (src / "bundles" / "lckd" / "runs" / "leftover.json").write_text("{}")  # run outputs must stay out
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "dist", "."]
    done = subprocess.run(build, cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    wheel = next((src / "dist").glob("lckd_med-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    for name in BUNDLES:
        for file in BUNDLE_FILES:
            assert f"lckd_med/bundles/{name}/{file}" in names, (name, file)
    lckd_only = ("multi_gpu_train.json", "demo.json", "logging.conf")
    assert {f"lckd_med/bundles/lckd/{f}" for f in lckd_only} <= names and "lckd_med/data/split_lists" in " ".join(names)
    assert not [n for n in names if "/runs/" in n]

    # the unpacked wheel is what `pip install` puts in site-packages; run from an unrelated folder
    (tmp_path / "elsewhere").mkdir()
    site = tmp_path / "site"
    code = (
        "import lckd_med, monai.bundle as mb; from lckd_med.engines import bundle_dir; "
        "omd = bundle_dir('omd'); p = mb.ConfigParser(); "
        "p.read_config([bundle_dir('lckd') + '/evaluate.json', omd + '/evaluate.json']); "
        "print(lckd_med.__file__); print(omd); print(p.get_parsed_content('bundle_root'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path / "elsewhere",
        env={**env, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    package, omd, bundle_root = done.stdout.splitlines()[-3:]
    assert Path(package) == site / "lckd_med" / "__init__.py"
    assert Path(omd) == Path(bundle_root) == site / "lckd_med" / "bundles" / "omd"


# ---------------------------------------------------------------------------------------------- one version


def _changelog_versions() -> list[str]:
    import re

    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    return re.findall(r"^## (\d+\.\d+\.\d+)\s*$", text, re.MULTILINE)


def test_the_bundles_require_the_package_version_and_the_changelogs_agree():
    """metadata.json's required lckd_med is the package's own version; CHANGELOG.md and each metadata.json list the
    same versions (a bundle those since its first release), newest first, the newest being the package's."""
    import json

    import lckd_med

    versions = _changelog_versions()
    assert versions and versions[0] == lckd_med.__version__, versions
    assert versions == sorted(versions, key=lambda v: tuple(map(int, v.split("."))), reverse=True)
    for name in BUNDLES:
        meta = json.loads((REPO / "bundles" / name / "metadata.json").read_text(encoding="utf-8"))
        assert meta["required_packages_version"]["lckd_med"] == lckd_med.__version__, name
        # a bundle lists every version since its first release (HeMIS's is 0.4.0)
        assert meta["changelog"] and list(meta["changelog"]) == versions[: len(meta["changelog"])], name
        assert meta["version"] == versions[0], name
    pyproject = _pyproject()
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lckd_med.__version__"}
