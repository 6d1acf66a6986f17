"""Lists faultlab's packages from the folders pyproject's package-dir maps (see the comment there)."""

from pathlib import Path

from setuptools import setup

ROOTS = {"faultlab.operator": "operator", "faultlab.nodes": "nodes", "faultlab.protos": "protos"}
SKIP = {"__pycache__"}


def packages() -> list[str]:
    found: list[str] = []
    for name, folder in ROOTS.items():
        found.append(name)
        for sub in sorted(Path(folder).rglob("*")):
            if sub.is_dir() and not SKIP.intersection(sub.parts) and any(sub.glob("*.py")):
                found.append(name + "." + ".".join(sub.relative_to(folder).parts))
    return found


setup(packages=packages())
