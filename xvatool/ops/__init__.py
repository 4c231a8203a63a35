"""Workflows: backup, restore, migrate and the demo, each one function the CLI calls.

They compose the format layer (`xvatool.xva`) and the host client (`xvatool.xapi`) and add what
users come for: manifests that make backups checkable, retention, batches that survive one
failing VM, and a migration that needs no temporary file.
"""

from __future__ import annotations

# Nothing is re-exported here: `backup`, `restore` and `migrate` are both module and function
# names, and re-exporting the functions would shadow the modules. Public names are exported
# from `xvatool` itself.
__all__: list[str] = []
