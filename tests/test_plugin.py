"""Strategy registry: third-party plugins through entry points, duplicates, parameter listing."""

from __future__ import annotations

import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aria.strategies import AllocationStrategy, get_strategy, list_strategies, register_strategy
from aria.strategies.registry import describe_parameters

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "aria-myplug"
version = "0.0.1"

[project.entry-points."aria.strategies"]
myplug = "aria_myplug"

[tool.setuptools]
py-modules = ["aria_myplug"]
"""

PLUGIN = '''\
"""A throwaway aria strategy plugin: regions in proportion to size, with a uniform floor."""
import numpy as np
from pydantic import Field

from aria.strategies import AllocationStrategy, StrategyConfig, register_strategy
from aria.strategies.base import mix_floor


class MyPlugConfig(StrategyConfig):
    eps: float = Field(0.5, ge=0, le=1, description="uniform floor of the plugin")


@register_strategy("myplug")
class MyPlug(AllocationStrategy):
    """Plugin strategy: size-proportional with a floor."""

    Config = MyPlugConfig

    def probabilities(self, state):
        return mix_floor(np.asarray(state["sizes"], dtype=float), self.config.eps, self.active(state))
'''


def test_entry_point_plugin_is_listed_and_usable(tmp_path):
    """Install a plugin into a fresh venv and list it with ``aria strategies`` there.

    ``--system-site-packages`` exposes the *base* interpreter's packages, not those of the venv
    running the tests (where aria is installed), so a .pth file adds the latter's site dirs.
    """
    source = tmp_path / "aria-myplug"
    source.mkdir()
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "aria_myplug.py").write_text(PLUGIN)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    bridge = "".join(f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages())
    (Path(target_site) / "_aria_parent_env.pth").write_text(bridge)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-index", str(source)],
        check=True, capture_output=True, text=True,
    )
    listing = subprocess.run([python, "-m", "aria.cli", "strategies"],
                             check=True, capture_output=True, text=True).stdout
    line = next(entry for entry in listing.splitlines() if entry.startswith("myplug "))
    assert "[package aria-myplug]" in line or "[package aria_myplug]" in line
    assert "eps: float = 0.5  # uniform floor of the plugin" in listing
    use = textwrap.dedent("""
        from aria.strategies import RegionInfo, create_strategy
        s = create_strategy("myplug", {"eps": 0.25})
        print(s.origin, s.allocate(s.init(RegionInfo([0, 3, 1]), 0), 0, 8).regions.min())
    """)
    out = subprocess.run([python, "-c", use], check=True, capture_output=True, text=True).stdout.split()
    assert out[0] == "package" and int(out[-1]) >= 1  # region 0 is empty


def test_duplicate_registration_raises():
    class Impostor(AllocationStrategy):
        def probabilities(self, state):
            raise AssertionError("never called")

    for name in ("aria", "rc"):
        with pytest.raises(ValueError, match="already registered"):
            register_strategy(name)(Impostor)
        assert get_strategy(name) is not Impostor


def test_a_strategy_that_learns_from_unknown_samples_is_refused():
    class Paired(AllocationStrategy):
        learns_from = "paired"

        def probabilities(self, state):
            raise AssertionError("never called")

    with pytest.raises(ValueError, match="learns_from must be None or 'switched'"):
        register_strategy("paired-only")(Paired)
    assert "paired-only" not in list_strategies()


def test_parameters_are_described_readably():
    rows = {field: (kind, default) for field, kind, default, _ in describe_parameters(get_strategy("aria"))}
    assert rows["rule"] == ("'softmax' | 'power'", "softmax")
    assert rows["alpha"][0] == "float" and rows["warm_start"][0] == "bool"
