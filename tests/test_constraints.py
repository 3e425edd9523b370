"""constraints.txt pins what the suite runs with, and agrees with pyproject.toml.

scripts/setup installs with ``-c constraints.txt``: a dependency added to
pyproject.toml without a pin would install whatever is newest on a fresh
machine, and a pin that disagrees with the venv means the suite did not pass
with it. Both fail here, naming the fix: scripts/setup, then scripts/lock."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
FIX = "run scripts/setup, then scripts/lock, and commit constraints.txt"


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            found[canonicalize_name(name)] = version
    return found


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared() -> list[Requirement]:
    project = pyproject()["project"]
    texts = [*project["dependencies"], *pyproject()["build-system"]["requires"]]
    for extra in ("dev", "bench"):
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pinned = pins()
    problems = []
    for requirement in declared():
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement} has no pin")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement} but constraints.txt pins {version}")
    assert not problems, "; ".join(problems) + f": {FIX}"


def test_the_installed_packages_are_the_pinned_ones() -> None:
    # The build backend lives only in pip's isolated build environment.
    requires = pyproject()["build-system"]["requires"]
    build = {canonicalize_name(Requirement(text).name) for text in requires}
    problems = []
    for name, version in pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            # Packages only some platforms need (uvloop off Windows) or the backend's.
            continue
        if name not in build and installed != version:
            problems.append(f"{name} {installed} is installed, constraints.txt pins {version}")
    assert not problems, "; ".join(problems) + f": {FIX}"
