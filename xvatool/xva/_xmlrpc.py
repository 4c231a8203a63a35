"""The XML-RPC value codec of ova.xml (xva-format.md §2.1), on lxml and nothing else.

Private to `xvatool.xva.ovaxml`, which re-exports the public names. Reading never expands
entities, never touches the network and never loads a DTD, and the size is capped, because the
document comes from an untrusted archive. Writing is compact, the way xapi writes it.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TypeAlias

from lxml import etree

from xvatool.errors import MetadataError

__all__ = [
    "I4",
    "MAX_OVA_XML_SIZE",
    "DateTime",
    "Value",
    "dump_value",
    "int_or_none",
    "metadata_error",
    "parse_value",
    "parse_with_notes",
]

MAX_OVA_XML_SIZE = 64 << 20
"""Bytes. Real ova.xml members are tens of KiB; refuse anything over 64 MiB."""

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
# XML 1.0 cannot carry these; xapi drops control characters below 0x20 except TAB, LF, CR (§2.1).
_UNWRITABLE_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;"})


class DateTime(str):
    """A ``<dateTime.iso8601>`` value, kept as its text so it is written back unchanged."""

    __slots__ = ()


class I4(int):
    """An int written as ``<i4>`` rather than untyped (xapi-protocol.md §1.4).

    xapi types one field so: event.from's `valid_ref_counts`. ova.xml never needs it, but the
    simulated host writes its RPC responses with this codec; `parse_value` reads it as a plain int.
    """

    __slots__ = ()


Value: TypeAlias = str | int | float | bool | bytes | DateTime | list["Value"] | dict[str, "Value"] | None


def metadata_error(message: str, code: str = "metadata") -> MetadataError:
    return MetadataError(message, code=code, member="ova.xml")


# --------------------------------------------------------------------------- reading


class _Decoder:
    """Turns an lxml ``<value>`` tree into Python values, noting duplicate member names.

    Duplicates are notes, not errors: the host keeps the last member, and `verify` wants the
    whole picture. Empty member names are kept as ``""`` keys for `Metadata.check` to report.
    """

    def __init__(self) -> None:
        self.notes: list[tuple[str, str]] = []

    def value(self, el: etree._Element) -> Value:
        if el.tag != "value":
            raise metadata_error(f"expected <value>, found <{el.tag}> (line {el.sourceline})")
        children = self._children(el)
        if not children:
            return self._leaf_text(el)  # untyped: a string (§2.1)
        if len(children) > 1:
            raise metadata_error(f"<value> at line {el.sourceline} holds more than one item")
        return self._typed(children[0])

    @staticmethod
    def _children(el: etree._Element) -> list[etree._Element]:
        """Element children; comments and PIs are skipped and entity references refused.

        Text beside child elements must be whitespace: the host's parser ignores only that (§2.1).
        """
        out = []
        stray = bool(el.text and el.text.strip())
        for child in el:
            if isinstance(child, etree._Entity):
                raise metadata_error("entity references are not allowed", "metadata-entities")
            if isinstance(child.tag, str):
                out.append(child)
            stray = stray or bool(child.tail and child.tail.strip())
        if out and stray:
            raise metadata_error(f"<{el.tag}> at line {el.sourceline} mixes text and elements")
        return out

    def _leaf_text(self, el: etree._Element) -> str:
        if self._children(el):
            raise metadata_error(f"<{el.tag}> at line {el.sourceline} must hold text only")
        # Text interrupted by a comment continues in the comment's tail.
        return (el.text or "") + "".join(child.tail or "" for child in el)

    def _typed(self, el: etree._Element) -> Value:
        tag = el.tag
        line = el.sourceline
        if tag == "string":
            return self._leaf_text(el)
        if tag in ("int", "i4", "i8"):
            text = self._leaf_text(el).strip()
            if not _INT_RE.match(text) or not _INT64_MIN <= int(text) <= _INT64_MAX:
                raise metadata_error(f"<{tag}> at line {line} is not a 64-bit integer: {text[:40]!r}")
            return int(text)
        if tag == "boolean":
            return self._leaf_text(el) == "1"  # §2.1: only "1" is true, even "true" is false
        if tag == "double":
            text = self._leaf_text(el)
            try:
                return float(text)
            except ValueError:
                raise metadata_error(f"<double> at line {line} is not a number: {text[:40]!r}") from None
        if tag == "dateTime.iso8601":
            return DateTime(self._leaf_text(el))
        if tag == "base64":
            try:
                return base64.b64decode("".join(self._leaf_text(el).split()), validate=True)
            except binascii.Error as exc:
                raise metadata_error(f"<base64> at line {line} is not base64: {exc}") from None
        if tag == "nil":
            return None
        if tag == "array":
            parts = self._children(el)
            if len(parts) != 1 or parts[0].tag != "data":
                raise metadata_error(f"<array> at line {line} must hold exactly one <data>")
            return [self.value(item) for item in self._children(parts[0])]
        if tag == "struct":
            return self._struct(el)
        raise metadata_error(f"unknown XML-RPC type <{tag}> at line {line}")

    def _struct(self, el: etree._Element) -> dict[str, Value]:
        out: dict[str, Value] = {}
        for member in self._children(el):
            parts = self._children(member)
            if member.tag != "member" or [p.tag for p in parts] != ["name", "value"]:
                raise metadata_error(f"<struct> at line {el.sourceline} holds a malformed <{member.tag}>")
            name = self._leaf_text(parts[0])
            if name in out:
                self.notes.append(
                    ("duplicate-key", f"member {name!r} given twice (line {member.sourceline})")
                )
                del out[name]  # the host keeps the last one; so does its position here
            out[name] = self.value(parts[1])
        return out


def parse_with_notes(data: bytes) -> tuple[Value, list[tuple[str, str]]]:
    """`parse_value`, plus the parser's notes as ``(code, message)`` pairs for `check`."""
    if len(data) > MAX_OVA_XML_SIZE:
        raise metadata_error(
            f"ova.xml is {len(data)} bytes, over the {MAX_OVA_XML_SIZE} byte limit",
            "metadata-too-large",
        )
    if b"<!DOCTYPE" in data and b"<!ENTITY" in data:
        # Refused before lxml sees it: nothing legitimate declares entities (billion laughs).
        raise metadata_error("the DOCTYPE declares entities; refused", "metadata-entities")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.LxmlError as exc:
        detail = " ".join(str(exc).split())  # libxml2 messages may hold newlines: keep one line
        raise metadata_error(f"not well-formed XML: {detail}", "metadata-xml") from exc
    dtd = root.getroottree().docinfo.internalDTD
    entities = list(dtd.iterentities()) if dtd is not None else []  # type: ignore[union-attr]
    if entities:
        raise metadata_error("the DOCTYPE declares entities; refused", "metadata-entities")
    decoder = _Decoder()
    return decoder.value(root), decoder.notes


def parse_value(data: bytes) -> Value:
    """Decode one bare XML-RPC ``<value>`` document (§2.1); `MetadataError` on anything wrong."""
    return parse_with_notes(data)[0]


# --------------------------------------------------------------------------- writing


def _text(value: str) -> str:
    return _UNWRITABLE_RE.sub("", value).translate(_ESCAPES)


def _format_double(value: float) -> str:
    text = f"{value:.16g}"  # xapi's %.16g (§2.1); widened only where it would lose bits
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
    """Encode compactly as xapi does (§2.1): untyped strings and ints, no whitespace.

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
