"""Every relative link in the README and docs/ resolves: the file exists, and a `#anchor` names one of its headings
(GitHub's rule: lower-cased, punctuation dropped, spaces to hyphens)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*)$")


def _anchors(page: Path) -> set[str]:
    anchors = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        match = HEADING.match(line)
        if match:
            text = re.sub(r"[`*_]", "", match.group(1)).strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text)))
    return anchors


def broken_links(pages: list[Path], root: Path = ROOT) -> list[str]:
    broken = []
    for page in pages:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                    continue
                path, _, anchor = target.partition("#")
                linked = (page.parent / path) if path else page
                if not linked.exists():
                    broken.append(f"{page.relative_to(root)}:{number}: {target} (no such file)")
                elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                    broken.append(f"{page.relative_to(root)}:{number}: {target} (no such heading)")
    return broken


def test_every_relative_link_in_the_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert broken_links(pages) == []


def test_a_missing_file_or_heading_is_reported(tmp_path):
    (tmp_path / "b.md").write_text("# The `gate`, explained\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#the-gate-explained) [gone](c.md) [wrong](b.md#nope) [web](https://x.org/y)\n")
    assert broken_links([page], tmp_path) == ["a.md:1: c.md (no such file)", "a.md:1: b.md#nope (no such heading)"]


UNSEEN = re.compile(r"\b(the plan\b|the issue\b|(?<!openai-python )issue \d+)", re.IGNORECASE)


def unseen_references(pages: list[Path], root: Path = ROOT) -> list[str]:
    """Mentions of things a reader of the repository cannot see: our issue tracker, "the plan"."""
    return [f"{page.relative_to(root)}:{number}: {match.group(0)!r}"
            for page in pages
            for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            for match in UNSEEN.finditer(line)]


def test_the_docs_name_nothing_a_reader_cannot_see(tmp_path):
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "configs").glob("*.yaml"))]
    assert unseen_references(pages) == []
    probe = tmp_path / "probe.md"
    probe.write_text("As issue 20 says, per the plan. See openai-python issue 2084.\n")
    assert len(unseen_references([probe], tmp_path)) == 2
