"""The XML-RPC value codec of ova.xml (docs/xva-format.md §4.1), on lxml and nothing else.

Private to `xvatool.xva.ovaxml`, which re-exports the public names. Reading never expands
entities, never touches the network and never loads a DTD, and the size is capped, because the
document comes from an untrusted archive. Writing is compact, the way xapi writes it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from collections.abc import Iterable
from typing import Any, TypeAlias, cast

from lxml import etree

from xvatool.errors import MetadataError

__all__ = [
    "I4",
    "MAX_OVA_XML_DEPTH",
    "MAX_OVA_XML_ELEMENTS",
    "MAX_OVA_XML_SIZE",
    "XAPI_TIME_FORMAT",
    "DateTime",
    "Value",
    "dump_value",
    "int_or_none",
    "metadata_error",
    "parse_pieces",
    "parse_value",
]

MAX_OVA_XML_SIZE = 64 << 20
"""Bytes. Real ova.xml members are tens of KiB (a VM export) to a few MiB (a pool's metadata)."""
MAX_OVA_XML_ELEMENTS = 1_000_000
"""Elements in one document. Real files hold one per ~22 bytes (xs70-ova.xml: 1,245 in 28 KB;
a VM export holds 1,000-3,000), so this admits real documents of 20 MB and more, and stops a dense
one (``<value/>`` × 8 million) after an eighth of it, in about a second."""
MAX_OVA_XML_DEPTH = 64
"""Nesting levels. xapi's documents are 16 deep; a map inside a record inside an object is 20."""

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
# XML 1.0 cannot carry these; xapi drops control characters below 0x20 except TAB, LF, CR
# (xva-format.md §4.1).
_UNWRITABLE_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;"})


XAPI_TIME_FORMAT = "%Y%m%dT%H:%M:%SZ"
"""How xapi writes a time: ``20261129T02:30:00Z``, always UTC (xva-format.md §4.3)."""


class DateTime(str):
    """A ``<dateTime.iso8601>`` value, kept as its text so it is written back unchanged.

    `EPOCH` is xapi's "unset" time (a snapshot flag cleared, a task not finished).
    """

    __slots__ = ()

    EPOCH: DateTime

    @classmethod
    def of(cls, moment: datetime.datetime) -> DateTime:
        """`moment` in xapi's form (an aware time is converted to UTC first)."""
        return cls(moment.astimezone(datetime.UTC).strftime(XAPI_TIME_FORMAT))

    def moment(self) -> datetime.datetime:
        """The UTC time this names; `ValueError` when it is not in xapi's form."""
        return datetime.datetime.strptime(self, XAPI_TIME_FORMAT).replace(tzinfo=datetime.UTC)


DateTime.EPOCH = DateTime("19700101T00:00:00Z")


class I4(int):
    """An int written as ``<i4>`` rather than untyped (host-protocol.md §2.3).

    xapi types one field so: event.from's `valid_ref_counts`. ova.xml never needs it, but the
    simulated host writes its RPC responses with this codec; `parse_value` reads it as a plain int.
    """

    __slots__ = ()


Value: TypeAlias = str | int | float | bool | bytes | DateTime | list["Value"] | dict[str, "Value"] | None


def metadata_error(message: str, code: str = "metadata") -> MetadataError:
    return MetadataError(message, code=code, member="ova.xml")


# --------------------------------------------------------------------------- reading

_LEAVES = frozenset({"string", "int", "i4", "i8", "boolean", "double", "dateTime.iso8601", "base64", "nil"})
_TYPES = _LEAVES | {"array", "struct"}
_CHILDREN: dict[str, frozenset[str]] = {
    "value": _TYPES, "array": frozenset({"data"}), "data": frozenset({"value"}),
    "struct": frozenset({"member"}), "member": frozenset({"name", "value"}),
    **dict.fromkeys(_LEAVES | {"name"}, frozenset()),
}  # fmt: skip
"""Which elements may appear inside which (xva-format.md §4.1); an unknown element is refused
where it starts."""
_MEMBER_PARTS = ("name", "value")
_COUNTED = frozenset({"value", "array", "member"})
"""Parents whose children are counted or ordered: one item, one <data>, <name> then <value>."""
_ENTITY_DECLARATION = b"<!ENTITY"


class _Builder:
    """An lxml parser target that builds values as elements end, never a tree.

    lxml calls `start`, `data` and `end` while it parses the pieces it is fed. Each open element
    has an entry on three parallel stacks (tag, text pieces, finished children's values); an
    element's value is made at its end, and only the value is kept. The element count, the depth
    and which element may hold which are checked at every start, so a document over its budget
    stops at once. Duplicate member names are notes, not errors: the host keeps the last member,
    and `verify` wants the whole picture. Empty member names are kept as ``""`` keys for
    `Metadata.check` to report.
    """

    def __init__(self) -> None:
        self.notes: list[tuple[str, str]] = []
        self.elements = 0
        self._stack: list[list[Any]] = []
        """One ``[tag, text pieces or None, children's values or None]`` per open element."""
        self._result: Value = None
        self._done = False

    # -- the target interface (lxml calls these; the hot path of a big document)

    def start(self, tag: str, attrib: object) -> None:
        self.elements += 1
        if self.elements > MAX_OVA_XML_ELEMENTS:
            raise metadata_error(f"more than {MAX_OVA_XML_ELEMENTS} elements; refused", "ova-xml-budget")
        stack = self._stack
        if stack:
            parent = stack[-1]
            if parent[0] in _COUNTED or tag not in _CHILDREN[parent[0]]:
                self._check_child(parent, tag)
            if len(stack) >= MAX_OVA_XML_DEPTH:
                raise metadata_error(
                    f"elements nested more than {MAX_OVA_XML_DEPTH} deep; refused", "ova-xml-budget"
                )
        elif tag != "value":
            raise metadata_error(f"expected <value>, found <{tag}>")
        stack.append([tag, None, None])

    def data(self, text: str) -> None:
        if self._stack:  # text interrupted by a comment or a PI continues after it
            frame = self._stack[-1]
            if frame[1] is None:
                frame[1] = [text]
            else:
                frame[1].append(text)

    def end(self, tag: str) -> None:
        stack = self._stack
        _, pieces, kids = stack.pop()
        if tag == "value" and kids is None:
            # untyped: a string (xva-format.md §4.1)
            value: Any = "".join(pieces) if pieces is not None else ""
        else:
            value = self._finish(tag, pieces, kids)
        if stack:
            parent = stack[-1]
            if parent[2] is None:
                parent[2] = [value]
            else:
                parent[2].append(value)
        else:
            self._result, self._done = value, True

    def close(self) -> bool:
        return self._done

    @property
    def result(self) -> Value:
        return self._result

    # -- values

    def _check_child(self, parent: list[Any], tag: str) -> None:
        """The slow path of `start`: children that are counted or ordered, and every refusal."""
        parent_tag, _, kids = parent
        if tag in _CHILDREN[parent_tag]:
            if parent_tag == "member":
                position = len(kids) if kids is not None else 0
                if position > 1 or tag != _MEMBER_PARTS[position]:
                    raise metadata_error("<member> must hold <name> then <value>")
            elif kids:
                raise metadata_error(f"<{parent_tag}> holds more than one item")
            return
        if parent_tag == "value":
            raise metadata_error(f"unknown XML-RPC type <{tag}> in <value>")
        if not _CHILDREN[parent_tag]:
            raise metadata_error(f"<{parent_tag}> must hold text only, found <{tag}>")
        raise metadata_error(f"<{parent_tag}> holds a malformed <{tag}>")

    @staticmethod
    def _text(pieces: list[str] | None) -> str:
        return "".join(pieces) if pieces is not None else ""

    def _finish(self, tag: str, pieces: list[str] | None, kids: list[Any] | None) -> Any:
        if kids is not None and pieces is not None and "".join(pieces).strip():
            # the host's parser ignores only whitespace beside elements (xva-format.md §4.1)
            raise metadata_error(f"<{tag}> mixes text and elements")
        if tag == "value":
            # untyped: a string (xva-format.md §4.1)
            return kids[0] if kids is not None else self._text(pieces)
        if tag == "data":
            return kids if kids is not None else []
        if tag == "struct":
            return self._struct(kids or [])
        if tag == "array":
            if kids is None:
                raise metadata_error("<array> must hold exactly one <data>")
            return kids[0]
        if tag == "member":
            if kids is None or len(kids) != 2:
                raise metadata_error("<member> must hold <name> then <value>")
            return (kids[0], kids[1])
        return self._leaf(tag, self._text(pieces))

    @staticmethod
    def _leaf(tag: str, text: str) -> Value:
        if tag in ("string", "name"):
            return text
        if tag in ("int", "i4", "i8"):
            text = text.strip()
            if not _INT_RE.match(text) or not _INT64_MIN <= int(text) <= _INT64_MAX:
                raise metadata_error(f"<{tag}> is not a 64-bit integer: {text[:40]!r}")
            return int(text)
        if tag == "boolean":
            return text == "1"  # xva-format.md §4.1: only "1" is true, even "true" is false
        if tag == "double":
            try:
                return float(text)
            except ValueError:
                raise metadata_error(f"<double> is not a number: {text[:40]!r}") from None
        if tag == "dateTime.iso8601":
            return DateTime(text)
        if tag == "base64":
            try:
                return base64.b64decode("".join(text.split()), validate=True)
            except binascii.Error as exc:
                raise metadata_error(f"<base64> is not base64: {exc}") from None
        return None  # nil

    def _struct(self, members: list[tuple[str, Value]]) -> dict[str, Value]:
        out: dict[str, Value] = {}
        for name, value in members:
            if name in out:
                self.notes.append(("duplicate-key", f"struct member {name!r} given twice"))
                del out[name]  # the host keeps the last one; so does its position here
            out[name] = value
        return out


def parse_pieces(pieces: Iterable[bytes]) -> tuple[Value, list[tuple[str, str]]]:
    """Decode one bare XML-RPC ``<value>`` document fed in pieces, within the ova.xml budgets.

    Returns the value and the parser's notes as ``(code, message)`` pairs for `Metadata.check`.
    Nothing but the values is kept: `MAX_OVA_XML_SIZE` bytes, `MAX_OVA_XML_ELEMENTS` elements and
    `MAX_OVA_XML_DEPTH` levels are checked as the pieces arrive, so a hostile document costs at
    most its budget. Entity declarations are refused before lxml sees them (billion laughs), and
    lxml never loads a DTD or touches the network.
    """
    builder = _Builder()
    parser = etree.XMLParser(
        target=cast("etree.ParserTarget", builder),  # lxml hands a target str tags and text
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
    )
    size = 0
    tail = b""
    try:
        for piece in pieces:
            size += len(piece)
            if size > MAX_OVA_XML_SIZE:
                raise metadata_error(
                    f"ova.xml is over the {MAX_OVA_XML_SIZE}-byte limit", "ova-xml-too-large"
                )
            if (
                _ENTITY_DECLARATION in tail + piece[: len(_ENTITY_DECLARATION)]
                or _ENTITY_DECLARATION in piece
            ):
                # Refused before lxml sees it: nothing legitimate declares entities.
                raise metadata_error("the DOCTYPE declares entities; refused", "metadata-entities")
            tail = piece[-len(_ENTITY_DECLARATION) :]
            parser.feed(piece)
        done = parser.close()
    except etree.LxmlError as exc:
        if isinstance(exc.__context__, MetadataError):  # raised inside a target method
            raise exc.__context__ from None
        detail = " ".join(str(exc).split())  # libxml2 messages may hold newlines: keep one line
        raise metadata_error(f"not well-formed XML: {detail}", "metadata-xml") from exc
    if not done:
        raise metadata_error("the document holds no element", "metadata-xml")
    return builder.result, builder.notes


def parse_value(data: bytes) -> Value:
    """Decode one bare XML-RPC ``<value>`` document (xva-format.md §4.1).

    `MetadataError` on anything wrong.
    """
    return parse_pieces([data])[0]


# --------------------------------------------------------------------------- writing


def _text(value: str) -> str:
    return _UNWRITABLE_RE.sub("", value).translate(_ESCAPES)


def _format_double(value: float) -> str:
    text = f"{value:.16g}"  # xapi's %.16g (xva-format.md §4.1); widened only where it would lose bits
    return text if float(text) == value or value != value else f"{value:.17g}"


def _dump(value: Value, out: list[str]) -> None:
    # bool before int: bool is an int subclass. DateTime before str: it is a str subclass.
    if isinstance(value, bool):
        out.append("<value><boolean>1</boolean></value>" if value else "<value><boolean>0</boolean></value>")
    elif isinstance(value, DateTime):
        out.append(f"<value><dateTime.iso8601>{_text(value)}</dateTime.iso8601></value>")
    elif isinstance(value, str):
        out.append(f"<value>{_text(value)}</value>")
    elif isinstance(value, I4):
        out.append(f"<value><i4>{int(value)}</i4></value>")
    elif isinstance(value, int):
        out.append(f"<value>{value}</value>")
    elif isinstance(value, float):
        out.append(f"<value><double>{_format_double(value)}</double></value>")
    elif isinstance(value, bytes):
        out.append(f"<value><base64>{base64.b64encode(value).decode('ascii')}</base64></value>")
    elif value is None:
        out.append("<value><nil/></value>")
    elif isinstance(value, list):
        out.append("<value><array><data>")
        for item in value:
            _dump(item, out)
        out.append("</data></array></value>")
    elif isinstance(value, dict):
        out.append("<value><struct>")
        for key, item in value.items():
            out.append(f"<member><name>{_text(str(key))}</name>")
            _dump(item, out)
            out.append("</member>")
        out.append("</struct></value>")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as XML-RPC")


def dump_value(value: Value) -> bytes:
    """Encode compactly as xapi does (xva-format.md §4.1): untyped strings and ints, no whitespace.

    Differences from xapi, all in the direction of a document that parses back the same: member
    names are escaped, CR is written as ``&#13;``, and a double that ``%.16g`` would round is
    written with 17 digits. Characters XML cannot carry are dropped, as xapi drops them.
    """
    out: list[str] = []
    _dump(value, out)
    return "".join(out).encode("utf-8")


def int_or_none(value: Value) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        parsed = value
    elif isinstance(value, str) and _INT_RE.match(value):
        parsed = int(value)
    else:
        return None
    return parsed if _INT64_MIN <= parsed <= _INT64_MAX else None
