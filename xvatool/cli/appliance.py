"""CLI commands about VM appliances (vApps): appliance list.

Moving appliances is done by the workflow commands (`backup --appliance`, `migrate
--appliance`, `export --appliance`); this group shows what there is to move.
"""

from __future__ import annotations

import click

from xvatool.cli._common import command_errors, echo_json, json_option
from xvatool.cli._connection import Connection, connection_options
from xvatool.cli._output import note, output_options, plural, result, table

__all__ = ["COMMANDS", "appliance_group", "appliance_list_command"]


@click.group("appliance")
def appliance_group() -> None:
    """VM appliances (vApps): groups of VMs that start and stop in a set order.

    \b
    Example:
        xvatool appliance list --host https://xen1.example --password-file pw
    """


@appliance_group.command("list")
@json_option("appliances")
@connection_options
@output_options
@command_errors
def appliance_list_command(*, connect: Connection, as_json: bool) -> None:
    """List appliances with their VMs in start order (order, start and shutdown delays) and networks.

    Networks marked "private" have no physical interface: they exist only on this pool and are
    recreated where the appliance is migrated or restored.

    \b
    Example:
        XVATOOL_PASSWORD=... xvatool appliance list --host https://xen1.example --json
    """
    from xvatool.cli._documents import appliance_doc
    from xvatool.ops.appliance import list_appliances

    with connect() as session:
        apps = list_appliances(session)
        host = session.host
    if as_json:
        echo_json([appliance_doc(app) for app in apps])
        return
    if not apps:
        note(f"no appliances on {host}")
        return
    for app in apps:
        description = f"; {app.name_description}" if app.name_description else ""
        result(f"{app.name_label} ({app.uuid}): {plural(len(app.members), 'VM')}{description}")
        rows = [("ORDER", "VM", "POWER", "START DELAY", "SHUTDOWN DELAY")]
        rows += [
            (str(m.order), m.name_label, m.power_state, f"{m.start_delay} s", f"{m.shutdown_delay} s")
            for m in app.members
        ]
        for line in table(rows, right=(0, 3, 4)):
            result(f"  {line}")
        if app.networks:
            nets = ", ".join(n.name_label + (" (private)" if n.private else "") for n in app.networks)
            result(f"  networks: {nets}")


COMMANDS: list[click.Command] = [appliance_group]
