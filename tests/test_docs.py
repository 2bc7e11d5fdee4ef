"""The repository's own documents: no citation of a document that is not in it, and every
"docs/method.md §N" cited anywhere names a section docs/method.md has."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
METHOD = ROOT / "docs" / "method.md"
# Built from pieces so this file does not match what it looks for.
MISSING_DOC = ("SPEC" + " §", "SPEC" + ".md")
CITATION = re.compile(r"docs/method\.md §(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6} §(\d+(?:\.\d+)*)\s", re.MULTILINE)


def repo_files() -> list[Path]:
    """Tracked files plus new ones git does not ignore (what the next commit can hold), that exist."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    paths = (ROOT / p for p in out.decode("utf-8").split("\0") if p)
    return sorted(p for p in paths if p.is_file())


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def test_no_file_cites_the_missing_spec_document():
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for path in repo_files()
            for n, line in enumerate(read(path).splitlines(), 1)
            if any(needle in line for needle in MISSING_DOC)]
    assert not hits, "cites a document that is not in the repository:\n" + "\n".join(hits)


def method_sections() -> set[str]:
    assert METHOD.is_file(), "docs/method.md is missing"
    return set(HEADING.findall(read(METHOD)))


def test_method_sections_are_numbered():
    sections = method_sections()
    top = sorted(int(s) for s in sections if "." not in s)
    assert top == list(range(1, len(top) + 1)) and len(top) >= 7, f"top-level sections {top}"
    for sub in (s for s in sections if "." in s):
        assert sub.rsplit(".", 1)[0] in sections, f"§{sub} has no parent section"


def test_every_cited_method_section_exists():
    sections = method_sections()
    cited = {(str(path.relative_to(ROOT)), number)
             for path in repo_files() for number in CITATION.findall(read(path))}
    assert cited, "no code cites docs/method.md §N"
    missing = sorted(f"{where}: §{number}" for where, number in cited if number not in sections)
    assert not missing, "cited sections that docs/method.md does not have:\n" + "\n".join(missing)
