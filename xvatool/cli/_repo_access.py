"""How CLI commands reach a repository: its location, passphrase and S3 endpoint options.

Shared by the `repo` group and by `backup --repo` / `restore --repo`. The passphrase of an
encrypted repository comes from ``--repo-password-file`` or ``XVATOOL_REPO_PASSWORD``, else from
a prompt on a terminal; never from the command line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from xvatool.cli._connection import read_password_file
from xvatool.errors import RepositoryPasswordError

if TYPE_CHECKING:
    from xvatool.repo.repository import Repository

__all__ = [
    "REPO_ENV",
    "REPO_PASSWORD_ENV",
    "S3_ENDPOINT_ENV",
    "open_repo",
    "read_passphrase",
    "repo_access_options",
    "repo_option",
]

F = TypeVar("F", bound=Callable[..., Any])

REPO_ENV = "XVATOOL_REPO"
REPO_PASSWORD_ENV = "XVATOOL_REPO_PASSWORD"
S3_ENDPOINT_ENV = "XVATOOL_S3_ENDPOINT"


def repo_access_options(func: F) -> F:
    """``--repo-password-file`` and ``--s3-endpoint`` (with their environment variables)."""
    func = click.option(
        "--s3-endpoint",
        envvar=S3_ENDPOINT_ENV,
        metavar="URL",
        help=f"S3-compatible endpoint (MinIO, Ceph…); or {S3_ENDPOINT_ENV}.",
    )(func)
    func = click.option(
        "--repo-password-file",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help=f"File holding the repository passphrase (or {REPO_PASSWORD_ENV}).",
    )(func)
    return func


def repo_option(func: F) -> F:
    """``-r/--repo`` (or the environment), for commands whose first argument may also name it."""
    return click.option(
        "-r",
        "--repo",
        "repo_option",
        envvar=REPO_ENV,
        metavar="REPO",
        help=f"The repository: a folder or s3://BUCKET/PREFIX (or {REPO_ENV}).",
    )(func)


def read_passphrase(password_file: str | None, *, confirm: bool = False) -> str | None:
    """The file's first line, else the environment, else a prompt on a terminal; never argv."""
    if password_file is not None:
        return read_password_file(password_file)
    if REPO_PASSWORD_ENV in os.environ:
        return os.environ[REPO_PASSWORD_ENV]
    if sys.stdin.isatty():
        return str(
            click.prompt("Repository passphrase", hide_input=True, confirmation_prompt=confirm, err=True)
        )
    return None


def open_repo(location: str, password_file: str | None, s3_endpoint: str | None) -> Repository:
    """Open a repository, asking for the passphrase only if it is encrypted."""
    from xvatool.repo.repository import Repository
    from xvatool.repo.storage import open_storage

    storage = open_storage(location, s3_endpoint=s3_endpoint)
    passphrase = None
    if password_file is not None or REPO_PASSWORD_ENV in os.environ:
        passphrase = read_passphrase(password_file)
    try:
        try:
            return Repository.open(storage, passphrase=passphrase)
        except RepositoryPasswordError:
            if passphrase is not None or not sys.stdin.isatty():
                raise
            return Repository.open(storage, passphrase=read_passphrase(None))
    except BaseException:
        storage.close()
        raise
