"""The XVA format layer: bytes in, events or bytes out; it knows nothing about HTTP (docs/architecture.md).

Modules: `tarstream` (tar members), `ovaxml` (the metadata document; `_xmlrpc` its value codec),
`template` (metadata for new archives), `checksum`, `compression`, `disk` (block sources and sparse
sinks), `reader` (with `plan`, `problems`, `digests` and `opening`), `validate`, `extract`, `writer`,
`convert` (create and repack), `assemble` (an XVA from per-disk streams) and `extents` (non-zero
extents of an archive, for uploads). Public names are exported from `xvatool` itself.
"""

from __future__ import annotations

__all__: list[str] = []
