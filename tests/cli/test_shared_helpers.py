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


def test_ctrl_c_exits_130_and_mentions_resume_only_where_it_exists() -> None:
    # Regression: every command said "partial state was kept for --resume", even verify/extract/demo.
    from xvatool.cli._common import command_errors

    @click.command()
    @command_errors
    def plain() -> None:
        raise KeyboardInterrupt

    @click.command()
    @click.option("--resume", is_flag=True)
    @command_errors
    def resumable(resume: bool) -> None:
        raise KeyboardInterrupt

    runner = CliRunner()
    first = runner.invoke(plain, [])
    assert first.exit_code == 130 and first.output == "xvatool: interrupted\n"
    second = runner.invoke(resumable, [])
    assert second.exit_code == 130 and "--resume" in second.output


def test_cli_timeout_default_is_the_library_default():
    from xvatool.cli._connection import DEFAULT_TIMEOUT_S as CLI_DEFAULT
    from xvatool.xapi.session import DEFAULT_TIMEOUT_S

    assert CLI_DEFAULT == DEFAULT_TIMEOUT_S
