"""Write deploy/requirements.lock: every distribution `binance-assets[production]` needs, at the version
installed in the running environment (pip freeze's pins, limited to the package's dependency closure, so
dev tools stay out). deploy/Dockerfile installs the package under these pins (`--constraint`).

Run from the venv the tests passed in, on the image's platform (Linux, the Dockerfile's Python):

    python deploy/lock_requirements.py > deploy/requirements.lock
"""

from __future__ import annotations

import platform
import sys
from importlib.metadata import Distribution, PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT, EXTRAS = "binance-assets", ("production",)


def closure(name: str, extras: tuple[str, ...]) -> dict[str, Distribution]:
    """The installed distributions `name[extras]` requires, directly or not (markers evaluated here)."""
    found: dict[str, Distribution] = {}
    wanted: dict[str, set[str]] = {}
    todo = [(name, extras)]
    while todo:
        current, current_extras = todo.pop()
        key = canonicalize_name(current)
        if key in wanted and set(current_extras) <= wanted[key]:
            continue
        try:
            found[key] = distribution(current)
        except PackageNotFoundError:
            continue
        wanted[key] = wanted.get(key, set()) | set(current_extras)
        environments = [{"extra": extra} for extra in wanted[key] or {""}]
        for line in found[key].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate(e) for e in environments):
                todo.append((requirement.name, tuple(requirement.extras)))
    return found


def main() -> None:
    pins = sorted(
        f"{dist.metadata['Name']}=={dist.version}"
        for key, dist in closure(ROOT, EXTRAS).items()
        if key != canonicalize_name(ROOT)
    )
    python = ".".join(platform.python_version_tuple()[:2])
    print(f"# {ROOT}[{','.join(EXTRAS)}]: pinned from the test environment by deploy/lock_requirements.py")
    print(f"# (Python {python}, {sys.platform}); deploy/Dockerfile installs with --constraint on this file.")
    print("\n".join(pins))


if __name__ == "__main__":
    main()
