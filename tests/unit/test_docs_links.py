"""The repository explains itself: nothing in it points at documents outside it, and its own links resolve.

- No file refers to the team notes that are not part of the repository (the design guide, the reference
  notes, the machine notes); their facts live in ``docs/``.
- Every relative markdown link in README.md, CONTRIBUTING.md and docs/*.md names an existing file, and an
  anchor (``page.md#section``) names a heading of that page (GitHub's heading slugs).
- Every ``docs/<page>.md`` that a code comment or config names exists, and a section it quotes
  (``docs/page.md, "Section"``) is a heading of that page.
Pure text processing: no latentgen import, well under a second.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED_DIRS = ("src", "conf", "tests", "experiments", "benchmarks", "docs")
SCANNED_ROOT_FILES = ("README.md", "CONTRIBUTING.md", "Makefile", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh", ".cfg", ".ini", ".json"}
SKIPPED_DIRS = {"__pycache__", "outputs", "multirun", "wandb"}

# Written in pieces so that a grep of the repository for these names finds nothing, not even this file.
_OUTSIDE_NAMES = ["DES" + "IGN", "REFER" + "ENCE", "MACHINE[-_ ]" + "NOTES"]
OUTSIDE_REFERENCE = re.compile("|".join(rf"\b{name}\b" for name in _OUTSIDE_NAMES) + r"|\.\./sha" + r"red/")

LINKED_PAGES = ("README.md", "CONTRIBUTING.md", "docs/*.md")
_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_DOC_MENTION = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+)|,\s*\"([^\"]+)\")?")


def scanned_files() -> Iterator[Path]:
    for name in SCANNED_ROOT_FILES:
        if (ROOT / name).is_file():
            yield ROOT / name
    yield from sorted(ROOT.glob("*.py"))
    for top in SCANNED_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            parts = path.relative_to(ROOT).parts
            if any(p in SKIPPED_DIRS or p.startswith(".") or p.endswith(".egg-info") for p in parts[:-1]):
                continue
            if path.is_file() and path.suffix in TEXT_SUFFIXES:
                yield path


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a markdown text outside fenced code blocks."""
    in_fence = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link syntax reduced to its text, lower case, punctuation dropped,
    spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(page: Path) -> tuple[set[str], set[str]]:
    """(anchors, heading texts in lower case) of a markdown page; repeated headings get -1, -2, ..."""
    anchors: set[str] = set()
    texts: set[str] = set()
    counts: dict[str, int] = {}
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = counts.get(base, 0)
        counts[base] = n + 1
        anchors.add(base if n == 0 else f"{base}-{n}")
        texts.add(m.group(2).strip().lower())
    return anchors, texts


def linked_pages() -> list[Path]:
    pages: list[Path] = []
    for pattern in LINKED_PAGES:
        pages.extend(sorted(ROOT.glob(pattern)))
    return pages


def test_docs_folder_has_the_pages_the_code_relies_on():
    for name in ("README.md", "architecture.md", "first_stage.md", "diffusion.md", "evaluation.md",
                 "f_study.md", "pitfalls.md", "machines.md"):  # fmt: skip
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"


def test_no_file_refers_to_documents_outside_the_repository():
    offenders = []
    this_file = Path(__file__).resolve()
    for path in scanned_files():
        if path.resolve() == this_file:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if OUTSIDE_REFERENCE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "references to documents outside the repository (point at docs/ instead):\n" + "\n".join(
        offenders
    )


def test_the_outside_reference_pattern_catches_what_it_is_for():
    # A test of the pattern itself, so that the scan above cannot pass by matching nothing.
    for line in ("see " + "DES" + "IGN.md", "(" + "REFER" + "ENCE §1)", "MACHINE" + "-NOTES", "../sha" + "red/x.md"):
        assert OUTSIDE_REFERENCE.search(line), line
    for line in ("held by reference", "ReferenceCache", "docs/machines.md", "conditioning/shared.py"):
        assert not OUTSIDE_REFERENCE.search(line), line


@pytest.mark.parametrize("page", linked_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_markdown_links_resolve(page: Path):
    broken = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        for target in _LINK.findall(_INLINE_CODE.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (no such file)")
                continue
            if anchor and dest.suffix == ".md" and anchor not in headings(dest)[0]:
                broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (no heading with anchor #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_docs_pages_and_sections_named_in_the_code_exist():
    missing = []
    for path in scanned_files():
        if path.parent == ROOT / "docs" or path.resolve() == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            for name, anchor, section in _DOC_MENTION.findall(line):
                page = ROOT / "docs" / name
                where = f"{path.relative_to(ROOT)}:{number}"
                if not page.is_file():
                    missing.append(f"{where}: docs/{name} does not exist")
                    continue
                anchors, texts = headings(page)
                if anchor and anchor not in anchors:
                    missing.append(f"{where}: docs/{name} has no heading with anchor #{anchor}")
                if section and section.lower() not in texts:
                    missing.append(f'{where}: docs/{name} has no section "{section}"')
    assert not missing, "\n".join(missing)


def test_slug_follows_github_rules():
    assert slug("Lightning LeafSpec warning") == "lightning-leafspec-warning"
    assert slug("Latent scale and shift") == "latent-scale-and-shift"
    assert slug("The `metrics.json` record") == "the-metricsjson-record"
    assert slug("One training step (latent model)") == "one-training-step-latent-model"
