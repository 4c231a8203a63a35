"""CLI commands about VM appliances (vApps): appliance list.

Moving appliances is done by the workflow commands (`backup --appliance`, `migrate
--appliance`, `export --appliance`); this group shows what there is to move.
"""

from __future__ import annotations

import click

from xvatool.cli._common import command_errors, debug_option, echo_json, json_option, quiet_option
from xvatool.cli._connection import Connection, connection_options

__all__ = ["COMMANDS", "appliance_group", "appliance_list_command"]


@click.group("appliance")
def appliance_group() -> None:
    """VM appliances (vApps): groups of VMs that start and stop in a set order.

    \b
    Example:
        xvatool appliance list --host https://xen1.example --password-file pw
    """


@appliance_group.command("list")
@connection_options
@json_option()
@quiet_option
@debug_option
@command_errors
def appliance_list_command(*, connect: Connection, as_json: bool) -> None:
    """List appliances with their VMs in start order (order, start and shutdown delays) and networks.

    Networks marked "private" have no physical interface: they exist only on this pool and are
    recreated where the appliance is migrated or restored.

    \b
    Example:
        XVATOOL_PASSWORD=... xvatool appliance list --host https://xen1.example --json
    """
    from xvatool.ops.appliance import list_appliances

    with connect() as session:
        apps = list_appliances(session)
    if as_json:
        echo_json([app.to_json() for app in apps])
        return
    for app in apps:
        count = f"{len(app.members)} VM{'s' if len(app.members) != 1 else ''}"
        click.echo(
            f"{app.name_label}  {app.uuid}  {count}"
            + (f"  {app.name_description}" if app.name_description else "")
        )
        for m in app.members:
            click.echo(
                f"  order {m.order:<3} {m.name_label[:28]:<28} {m.power_state:<9} "
                f"start delay {m.start_delay}s, shutdown delay {m.shutdown_delay}s"
            )
        if app.networks:
            nets = ", ".join(n.name_label + (" (private)" if n.private else "") for n in app.networks)
            click.echo(f"  networks: {nets}")


COMMANDS: list[click.Command] = [appliance_group]
