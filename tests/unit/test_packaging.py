"""requirements.txt (the pins that scripts install) and pyproject.toml (the metadata) agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_every_declared_dependency_is_pinned_in_requirements_txt() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in meta["dependencies"]}
    for extra in meta["optional-dependencies"].values():
        declared |= {_name(r) for r in extra}
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert "==" in line, f"requirements.txt must pin exact versions: {line!r}"
            pins[_name(line)] = line
    assert declared - set(pins) == set(), "declared in pyproject.toml but not pinned in requirements.txt"
    assert set(pins) - declared == set(), "pinned in requirements.txt but not declared in pyproject.toml"
