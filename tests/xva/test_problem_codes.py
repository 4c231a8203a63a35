"""docs/problems.md and `problems.SEVERITY` list the same codes with the same severities, and every
code the format layer can raise is in them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from xvatool.xva.problems import METADATA_CODES, SEVERITY, WARNING_CODES

ROOT = Path(__file__).resolve().parents[2]
_ROW = re.compile(r"^\| `([a-z0-9-]+)` \| (error|warning) \| (.+) \|$")
_CODE = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)+")


def documented() -> dict[str, str]:
    table: dict[str, str] = {}
    for line in (ROOT / "docs" / "problems.md").read_text().splitlines():
        match = _ROW.match(line)
        if match:
            assert match.group(1) not in table, f"{match.group(1)} is listed twice"
            table[match.group(1)] = match.group(2)
    return table


def test_the_documented_table_is_the_code_table():
    assert documented() == SEVERITY


def test_derived_sets_come_from_the_table():
    assert WARNING_CODES == {code for code, severity in SEVERITY.items() if severity == "warning"}
    assert METADATA_CODES <= SEVERITY.keys()


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def raised_codes() -> dict[str, str]:
    """Every problem code written in the format layer's source, with where it is."""
    found: dict[str, str] = {}
    files = [*sorted((ROOT / "xvatool" / "xva").glob("*.py")), ROOT / "xvatool" / "errors.py"]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            candidates: list[ast.AST | None] = []
            if isinstance(node, ast.keyword) and node.arg == "code":
                candidates.append(node.value)
            elif isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if name in ("format_error", "_problem", "problem") and node.args:
                    candidates.append(node.args[0])
                elif name == "metadata_error" and len(node.args) > 1:
                    candidates.append(node.args[1])
                elif name == "get" and getattr(node.func.value, "id", "").endswith("_CODES"):  # type: ignore[attr-defined]
                    candidates.extend(node.args[1:])
            elif isinstance(node, ast.Assign) and any(
                getattr(t, "id", getattr(t, "attr", "")) in ("default_code", "code") for t in node.targets
            ):
                candidates.append(node.value)
            elif (
                isinstance(node, ast.Tuple)
                and len(node.elts) == 2
                and isinstance(node.elts[1], ast.JoinedStr | ast.Constant)
            ):
                # ("code", "message") pairs of Metadata.check() and the reader's name problems
                text = _literal(node.elts[0])
                if text is not None and _CODE.fullmatch(text) and _literal(node.elts[1]) != "surrogateescape":
                    candidates.append(node.elts[0])
            elif isinstance(node, ast.FunctionDef):  # def f(..., code: str = "x")
                args = node.args.args[len(node.args.args) - len(node.args.defaults) :]
                candidates.extend(d for a, d in zip(args, node.args.defaults, strict=True) if a.arg == "code")
            elif isinstance(node, ast.Dict):  # _KIND_CODES
                candidates.extend(v for v in node.values if _CODE.fullmatch(_literal(v) or ""))
            for candidate in candidates:
                text = _literal(candidate)
                if text is not None:
                    found.setdefault(text, f"{path.name}:{getattr(candidate, 'lineno', '?')}")
    return found


def test_every_code_in_the_source_is_in_the_table():
    codes = raised_codes()
    assert len(codes) > 40  # the scan does find them
    unknown = {code: where for code, where in codes.items() if code not in SEVERITY}
    assert unknown == {}


def test_every_code_in_the_table_is_used():
    unused = set(SEVERITY) - set(raised_codes())
    assert unused == set()


def test_readme_states_the_budgets_the_code_enforces():
    from xvatool.xva import compression, ovaxml, reader, tarstream
    from xvatool.xva.problems import MAX_PROBLEMS_PER_CODE

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Security defaults") :]
    mib = 1 << 20
    stated = {
        f"| ova.xml | {ovaxml.MAX_OVA_XML_SIZE // mib} MiB, {ovaxml.MAX_OVA_XML_ELEMENTS:,} XML elements, "
        f"nesting {ovaxml.MAX_OVA_XML_DEPTH} deep |",
        f"| a data (chunk) member | {reader.MAX_CHUNK_MEMBER_SIZE // mib} MiB",
        f"| a member to skip unread (unknown, stray, orphan) | {reader.MAX_CHUNK_MEMBER_SIZE // mib} MiB |",
        f"| a checksum member | {reader.MAX_CHECKSUM_MEMBER_SIZE // 1024} KiB |",
        f"| {reader.TRAILING_DATA_BUDGET // mib} MiB of the uncompressed stream |",
        f"| {tarstream.MAX_EXTENSION_SIZE // mib} MiB each, {tarstream.MAX_EXTENSION_HEADERS} in front of",
        f"| a zstd window | {compression.MAX_ZSTD_WINDOW // mib} MiB |",
        f"| problems listed per code | {MAX_PROBLEMS_PER_CODE} |",
    }
    missing = [line for line in stated if line not in section]
    assert missing == []
