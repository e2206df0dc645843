"""What this server is: its version, the commit it was built from (when known), its Python.

Read once per process from files, never from a subprocess: the installed package's metadata,
else the ``pyproject.toml`` of the checkout it runs from; the commit from that checkout's
``.git`` (a worktree's too). In an image built without ``.git`` the commit is ``unknown``."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BuildInfo:
    version: str
    commit: str
    python: str


@functools.cache
def build_info() -> BuildInfo:
    return BuildInfo(_version(), _commit(ROOT / ".git") or "unknown", platform.python_version())


def _version() -> str:
    try:
        return importlib.metadata.version("chatserver")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        return version
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def _commit(git: Path) -> str:
    """The commit checked out at ``git`` (a folder, or a worktree's ``gitdir:`` file); '' if none."""
    try:
        if git.is_file():
            git = (git.parent / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head.removeprefix("ref: ")
        common = (git / (git / "commondir").read_text().strip()).resolve() if (git / "commondir").exists() else git
        for folder in (git, common):
            if (folder / ref).is_file():
                return (folder / ref).read_text().strip()[:12]
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line[:12]
    except (OSError, IndexError, ValueError):
        pass
    return ""
