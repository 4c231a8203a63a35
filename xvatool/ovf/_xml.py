"""Parsing untrusted XML (OVF descriptors) safely with lxml, within budgets.

No DTD, no entities, no network, a size budget before parsing and an element budget after.
Descriptors are decoded here rather than by lxml, because XenCenter writes UTF-8 files whose XML
declaration says ``utf-16`` (it serialises to a .NET string, then saves it as UTF-8): the
declaration is dropped and the bytes decoded by their byte-order mark, else as UTF-8.
"""

from __future__ import annotations

import re

from lxml import etree

from xvatool.errors import FormatError

__all__ = ["MAX_ELEMENTS", "MAX_XML_SIZE", "parse_xml"]

MAX_XML_SIZE = 16 << 20
"""Bytes. Real descriptors are tens of KiB; an appliance of hundreds of VMs stays far below this."""
MAX_ELEMENTS = 200_000
"""Elements in one descriptor."""
_DECLARATION = re.compile(r"\A\s*<\?xml[^>]*\?>")


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8")
    if len(data) > 1 and (data[0] == 0 or data[1] == 0):  # UTF-16 without a mark
        return data.decode("utf-16-be" if data[0] == 0 else "utf-16-le")
    return data.decode("utf-8")


def parse_xml(data: bytes, *, file: str | None = None, member: str | None = None) -> etree._Element:
    """The root element of `data`; any problem is one `FormatError` naming `file`/`member`."""

    def error(message: str, code: str = "ovf-xml") -> FormatError:
        return FormatError(message, code=code, file=file, member=member)

    if len(data) > MAX_XML_SIZE:
        raise error(f"descriptor of {len(data)} bytes is over the {MAX_XML_SIZE}-byte limit", "ovf-too-large")
    try:
        text = _decode(data)
    except UnicodeDecodeError as exc:
        raise error(f"descriptor is not UTF-8 or UTF-16 text: {exc}") from exc
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise error("the descriptor declares a DTD or entities; refused", "ovf-entities")
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True
    )
    try:
        root = etree.fromstring(_DECLARATION.sub("", text, count=1), parser)
    except etree.XMLSyntaxError as exc:
        raise error(f"descriptor is not well-formed XML: {exc}") from exc
    count = 0
    for _ in root.iter():
        count += 1
        if count > MAX_ELEMENTS:
            raise error(f"descriptor has more than {MAX_ELEMENTS} elements", "ovf-too-large")
    return root
