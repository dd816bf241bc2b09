"""The documentation a user reads holds together: every ``docs/<page>.md, '<heading>'`` cited in
code, scripts and docs names an existing heading; Markdown links in README.md and docs/ resolve;
the README keeps Install first and stays short; nothing outside tests/ cites documents that
users do not have (the project's internal notes, issue numbers, folders beside the clone)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
CITED_SUFFIXES = {".py", ".sh", ".md", ".json5", ".sbatch", ".ini", ".txt", ".cfg", ".toml"}
CITATION = re.compile(r"docs/([\w-]+\.md),? '([^']+)'")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$")
# what users cannot follow: the internal spec, issue numbers, the folder beside the clone
INTERNAL = re.compile(r"SPEC(\.md)? ?§|SPEC\.md|SPEC [0-9]|[Ii]ssue [0-9]+|\(issue|\.\./shared|"
                      r"shared/reference|STYLE(\.md)? ?§")


def tracked_files() -> list[Path]:
    """Files git tracks plus untracked, not ignored ones (what a commit would ship); without git
    (an unpacked archive) every file outside hidden folders, ``runs/`` and ``data/`` outputs."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        skip = {"runs", "__pycache__"}
        return [p for p in ROOT.rglob("*") if p.is_file()
                and not any(part.startswith(".") or part in skip for part in p.relative_to(ROOT).parts)
                and not (p.relative_to(ROOT).parts[0] == "data" and p.suffix == ".gz")]
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def headings(page: Path) -> list[str]:
    """The Markdown headings of ``page`` (fenced code blocks skipped)."""
    found, fenced = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            found.append(m.group(1))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_slug_rule():
    # GitHub anchors of headings of docs/method.md and docs/segment.md, worked out by hand
    assert slug("Model (ALPNet)") == "model-alpnet"
    assert slug("What differs from the 2020 code, and why") == "what-differs-from-the-2020-code-and-why"
    assert slug("Segment your own scans (`segment.py`)") == "segment-your-own-scans-segmentpy"


def test_cited_doc_sections_exist():
    missing = []
    for path in tracked_files():
        if path.suffix not in CITED_SUFFIXES:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for page, heading in CITATION.findall(line):
                target = ROOT / "docs" / page
                if not target.is_file() or heading not in headings(target):
                    missing.append(f"{path.relative_to(ROOT)}:{n}: docs/{page}, '{heading}'")
    assert not missing, "cited docs sections that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))])
def test_markdown_links_resolve(page):
    path = ROOT / page if page == "README.md" else ROOT / "docs" / page
    broken, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):          # http(s), mailto: not checked offline
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                broken.append(f"{target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in {slug(h) for h in headings(dest)}:
                broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page}: broken links:\n" + "\n".join(broken)


def test_readme_install_first_and_short():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    sections = [h for h in headings(ROOT / "README.md")]
    assert sections.index("Install") < sections.index("The two commands")
    assert "python3 -m pytest tests -q" in text
    assert "--index-url https://download.pytorch.org/whl/cpu" in text


def test_no_internal_citations_outside_tests():
    found = []
    for path in tracked_files():
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "tests" or path.suffix not in CITED_SUFFIXES | {""}:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if INTERNAL.search(line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "citations users cannot follow (cite docs/<page>.md, '<heading>'):\n" + "\n".join(found)
