"""The documents stand alone: every relative link in a Markdown file of the repository leads to a
file that exists, and to a heading that exists when it names one; nothing points outside the
repository's own tree (such as a folder of notes kept beside a checkout)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    files = [ROOT / name for name in listed.stdout.split()]
    # Files not committed yet count too (the working tree is what a reader of this checkout sees).
    files += [p for p in ROOT.glob("*.md") if p not in files] + [p for p in ROOT.glob("docs/*.md") if p not in files]
    return sorted(p for p in files if p.exists())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6} (.+)", line)):
            base = slug(match.group(1))
            n = 0
            while (name := base if n == 0 else f"{base}-{n}") in found:
                n += 1
            found.add(name)
    return found


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # links in code blocks are code
    return [a or b for a, b in LINK.findall(text)]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    broken = []
    for target in links(path):
        if re.match(r"[a-z]+:", target) or target.startswith("//"):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif ROOT not in (dest, *dest.parents):
            broken.append(f"{target}: outside the repository")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, broken


def test_the_readme_opens_with_the_two_commands_and_has_contents() -> None:
    readme = (ROOT / "README.md").read_text()
    opening = readme.split("\n## ", 1)[0]
    assert "./scripts/up.sh" in opening and "http://127.0.0.1:8080" in opening and "./scripts/test.sh" in opening
    assert "## Contents" in readme and "## Troubleshooting" in readme


#: A sibling folder of a checkout that a clone does not have (spelt in parts, so this file does not name it).
OUTSIDE = "shar" + "ed"


def test_nothing_points_outside_the_repository_to_a_shared_folder() -> None:
    found = subprocess.run(
        ["git", "grep", "-l", "-e", f"\\.\\./{OUTSIDE}/", "-e", f"/work/{OUTSIDE}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert found.stdout.split() == [], "the repository must stand alone: point at docs/ instead"


def test_the_slugs_follow_github() -> None:
    assert slug("12. This server's additions") == "12-this-servers-additions"
    assert slug("Running with `docker compose`") == "running-with-docker-compose"
