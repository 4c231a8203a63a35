"""The documentation stands alone: every reference points inside the repository, and is right.

Code comments, docstrings and documents cite the project's reference pages as ``xva-format.md §5.4``
(or ``docs/xva-format.md §5.4``). Each cited page must be a file in docs/ and each section number a
numbered heading in it; no file may point into the shared folder of the developers' machines, which
users of the project do not have; and every file in testdata/ says in testdata/README.md how it
was made.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TESTDATA = ROOT / "testdata"
SCANNED = ("xvatool", "tests", "bench", "docs", "testdata/README.md", "README.md", "Makefile")
TEXT_SUFFIXES = frozenset({".py", ".md", ".json", ".toml", ".txt", ".mjs", ".cfg", ".ini", ".yml", ".yaml"})
SKIPPED_PARTS = frozenset({"__pycache__", "node_modules", ".pytest_cache"})

OUTSIDE = "shared" + "/docs"  # spelled in two pieces so that this file does not name it
HEADING = re.compile(r"^#{1,6} (\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
SECTION = r"§ ?\d+(?:\.\d+)*"
CITATION = re.compile(rf"(?P<page>[\w.-]+\.md)\s*(?P<refs>{SECTION}(?:\s*(?:,|/|-|–|and)\s*{SECTION})*)")
NUMBER = re.compile(r"§ ?(\d+(?:\.\d+)*)")
MD_NAME = re.compile(r"(?<![\w.-])((?:[\w.-]+/)*[\w.-]+\.md)\b")
TOP_LEVEL_PAGES = frozenset({"README.md"})
OTHER_SPEC = re.compile(r"(?:RFC \d+|SP 800-\d+\w*)[^\n§]{0,3}$")
"""A public standard cited right before the §: its sections are not ours to check."""
DEFAULT_PAGE = {
    "docs/xva-format.md": "xva-format.md",
    "docs/host-protocol.md": "host-protocol.md",
    "docs/incremental.md": "incremental.md",
    "docs/problems.md": "xva-format.md",  # "Section numbers (§) refer to … xva-format.md"
}
"""Files whose bare ``§N`` cite one page; everywhere else a § must follow the page's name."""


def _scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
            continue
        for found in sorted(path.rglob("*")):
            if found.is_file() and found.suffix in TEXT_SUFFIXES and not SKIPPED_PARTS & set(found.parts):
                files.append(found)
    return files


FILES = _scanned_files()


def _sections(page: str) -> set[str]:
    return set(HEADING.findall((DOCS / page).read_text(encoding="utf-8")))


SECTIONS = {path.name: _sections(path.name) for path in DOCS.glob("*.md")}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _line(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def test_the_scan_covers_the_project() -> None:
    names = {_rel(path) for path in FILES}
    assert {"README.md", "Makefile", "docs/xva-format.md", "xvatool/xva/reader.py"} <= names
    assert any(name.startswith("bench/") for name in names)


def test_reference_pages_have_numbered_sections() -> None:
    for page in ("xva-format.md", "host-protocol.md", "incremental.md"):
        assert {"1", "2", "3"} <= SECTIONS[page], page


def test_nothing_points_into_the_shared_folder() -> None:
    found = [
        f"{_rel(path)}:{_line(text, m.start())}"
        for path in FILES
        for text in [path.read_text(encoding="utf-8")]
        for m in re.finditer(re.escape(OUTSIDE), text)
    ]
    assert found == []


def test_every_cited_section_exists() -> None:
    bad = []
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        for match in CITATION.finditer(text):
            page = match["page"]
            where = f"{_rel(path)}:{_line(text, match.start())}: {match[0]!r}"
            if page not in SECTIONS:
                bad.append(f"{where}: no docs/{page}")
                continue
            missing = [n for n in NUMBER.findall(match["refs"]) if n not in SECTIONS[page]]
            if missing:
                bad.append(f"{where}: no section {', '.join(missing)} in docs/{page}")
    assert bad == []


def test_every_bare_section_has_a_page() -> None:
    """A ``§N`` without a page name before it cites the file's own page, or is not allowed."""
    bad = []
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        cited = {i for m in CITATION.finditer(text) for i in range(m.start(), m.end())}
        page = DEFAULT_PAGE.get(_rel(path))
        for match in NUMBER.finditer(text):
            start = match.start()
            if start in cited or OTHER_SPEC.search(text, max(0, start - 40), start):
                continue
            where = f"{_rel(path)}:{_line(text, start)}: {match[0]!r}"
            if page is None:
                bad.append(f"{where}: name the page (docs/<page>.md §N)")
            elif match[1] not in SECTIONS[page]:
                bad.append(f"{where}: no such section in docs/{page}")
    assert bad == []


def test_every_named_page_exists() -> None:
    """A bare file name ending in .md is a page of docs/ (or README.md); one under docs/ a file there.

    Paths into other repositories (``ocaml/vhd-tool/src/tar.md``) name their folder and are not
    checked; the same file name alone would be.
    """
    bad = []
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        for match in MD_NAME.finditer(text):
            name = match[1]
            if name.startswith("docs/"):
                ok = (ROOT / name).is_file()
            elif "/" in name:
                ok = True
            else:
                ok = name in SECTIONS or name in TOP_LEVEL_PAGES
            if not ok:
                bad.append(f"{_rel(path)}:{_line(text, match.start())}: {name}")
    assert bad == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see xva-format.md §5.4 here", [("xva-format.md", ["5.4"])]),
        ("(docs/host-protocol.md §4.1, §4.5)", [("host-protocol.md", ["4.1", "4.5"])]),
        ("incremental.md §1.2–§1.4 and §2.2", [("incremental.md", ["1.2", "1.4", "2.2"])]),
        ("[xva-format.md §2.1](xva-format.md)", [("xva-format.md", ["2.1"])]),
        ("RFC 8878 §3.1", []),
    ],
)
def test_citation_pattern(text: str, expected: list[tuple[str, list[str]]]) -> None:
    found = [(m["page"], NUMBER.findall(m["refs"])) for m in CITATION.finditer(text)]
    assert found == expected


def _testdata_lines() -> dict[str, str]:
    """`testdata/README.md` list items: the path in backticks that starts each, and its text."""
    text = (TESTDATA / "README.md").read_text(encoding="utf-8")
    return {m[1]: m[2] for m in re.finditer(r"^- `([^`]+)` — (.+(?:\n  .+)*)", text, re.MULTILINE)}


def test_every_testdata_file_says_how_it_was_made() -> None:
    listed = _testdata_lines()
    files = {
        str(path.relative_to(TESTDATA))
        for path in TESTDATA.rglob("*")
        if path.is_file() and path.name != "README.md" and not SKIPPED_PARTS & set(path.parts)
    }
    assert files, "testdata/ is empty"
    assert sorted(files - set(listed)) == [], "files without a line in testdata/README.md"
    assert sorted(set(listed) - files) == [], "lines in testdata/README.md for files that do not exist"
    assert all(len(line.split()) >= 5 for line in listed.values())
