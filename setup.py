"""Ship ``configs/*.yaml`` inside the package (as ``chtorch/configs/``) without a second copy in the tree.

``configs/`` at the top of the repository stays the one place the configs are written and documented
(README commands, tests); building a wheel copies them into the package so that an installed chtorch
finds them too (``chtorch configs``, ``chtorch train mlp_mnist_cpu``). Everything else is in
``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithConfigs(build_py):
    """``build_py`` plus ``configs/*.yaml`` -> ``<build>/chtorch/configs/``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the configs from the source tree
        target = Path(self.build_lib) / "chtorch" / "configs"
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted((HERE / "configs").glob("*.yaml")):
            shutil.copyfile(source, target / source.name)


setup(cmdclass={"build_py": BuildPyWithConfigs})
