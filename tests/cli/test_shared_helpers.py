"""The option and output helpers every command shares (`cli/_common.py`)."""

from __future__ import annotations

import click
from click.testing import CliRunner

from xvatool.cli._common import human_size, json_option, network_map_option


def test_human_size_uses_binary_units() -> None:
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1024) == "1.0 KiB"
    assert human_size(5 << 20) == "5.0 MiB"
    assert human_size(3 << 29) == "1.5 GiB"
    assert human_size(1 << 50) == "1024.0 TiB"


@click.command()
@network_map_option("Rename networks.")
@json_option()
def _probe(*, map_network: dict[str, str], as_json: bool) -> None:
    click.echo(f"{sorted(map_network.items())} {as_json}")


def test_network_map_option_gives_a_dict_and_refuses_a_bare_name() -> None:
    runner = CliRunner()
    ok = runner.invoke(_probe, ["--map-network", "a=b", "--map-network", "c=d=e", "--json"])
    assert ok.exit_code == 0 and ok.output == "[('a', 'b'), ('c', 'd=e')] True\n"
    bad = runner.invoke(_probe, ["--map-network", "lan"])
    assert bad.exit_code == 2 and "OLD=NEW" in bad.output


def test_ctrl_c_exits_130_and_speaks_of_kept_state_only_when_something_was_kept() -> None:
    # Regression: "partial state was kept for --resume" was printed whenever the command had a
    # --resume option, also when nothing was kept (Ctrl-C in a stream export).
    from xvatool.cli._common import command_errors
    from xvatool.errors import Interrupted

    @click.command()
    @click.option("--resume", is_flag=True)
    @command_errors
    def nothing_kept(resume: bool) -> None:
        raise KeyboardInterrupt

    @click.command()
    @click.option("--resume", is_flag=True)
    @command_errors
    def kept(resume: bool) -> None:
        raise Interrupted("interrupted; kept out.xva.part.d/ for --resume (or remove it with --discard)")

    runner = CliRunner()
    first = runner.invoke(nothing_kept, [])
    assert first.exit_code == 130 and first.output == "xvatool: interrupted\n"
    second = runner.invoke(kept, [])
    assert second.exit_code == 130 and "kept out.xva.part.d/ for --resume" in second.output


def test_cli_timeout_default_is_the_library_default():
    from xvatool.cli._connection import DEFAULT_TIMEOUT_S as CLI_DEFAULT
    from xvatool.xapi.session import DEFAULT_TIMEOUT_S

    assert CLI_DEFAULT == DEFAULT_TIMEOUT_S
