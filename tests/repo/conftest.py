"""Repository fixtures: a real S3 endpoint (moto's server on loopback) and both backends.

`repo_location` is parametrised over a local folder and an S3 prefix on the moto server; when
``XVATOOL_TEST_S3_URL`` (``s3://bucket/prefix``) is set, a third run goes to that endpoint
(``XVATOOL_TEST_S3_ENDPOINT``, credentials from the usual AWS variables).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "xvatool-tests"
EXTERNAL_URL_ENV = "XVATOOL_TEST_S3_URL"
EXTERNAL_ENDPOINT_ENV = "XVATOOL_TEST_S3_ENDPOINT"
FAST_KDF_KIB = 8 * 1024
EXTERNAL_URL = os.environ.get(EXTERNAL_URL_ENV)  # read now: the autouse clean_environ drops XVATOOL_*
EXTERNAL_ENDPOINT = os.environ.get(EXTERNAL_ENDPOINT_ENV)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port), with one bucket; stopped at the end."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    client.create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


@dataclass
class RepoPlace:
    """Where a test's repository lives, and how to reach behind the library's back."""

    kind: str
    location: str
    endpoint: str | None
    root: Path | None = None

    def storage(self):
        from xvatool.repo.storage import open_storage

        return open_storage(self.location, s3_endpoint=self.endpoint)

    def cli_args(self) -> list[str]:
        return ["--s3-endpoint", self.endpoint] if self.endpoint else []

    def corrupt(self, key: str, at: int = -20) -> None:
        storage = self.storage()
        data = bytearray(storage.get(key))
        data[at] ^= 0x01
        storage.put(key, bytes(data))

    def keys(self, prefix: str) -> list[str]:
        return sorted(info.key for info in self.storage().list(prefix))

    def stored_bytes(self, prefix: str = "") -> int:
        return sum(info.size for info in self.storage().list(prefix))


def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(autouse=True)
def repo_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Scratch databases go under the test's folder, not the developer's ~/.cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("XVATOOL_CACHE_DIR", str(folder))
    return folder


REMOTE_KINDS = ["s3", *(["external"] if EXTERNAL_URL else [])]


def _place(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> RepoPlace:
    if kind == "local":
        return RepoPlace("local", str(tmp_path / "repo"), None, tmp_path / "repo")
    if kind == "s3":
        _aws_env(monkeypatch)
        endpoint = request.getfixturevalue("moto_endpoint")
        return RepoPlace("s3", f"s3://{BUCKET}/{uuid.uuid4().hex}", endpoint)
    assert EXTERNAL_URL  # the kind exists only when the variable is set
    return RepoPlace("external", f"{EXTERNAL_URL.rstrip('/')}/{uuid.uuid4().hex}", EXTERNAL_ENDPOINT)


@pytest.fixture(params=["local", *REMOTE_KINDS])
def repo_place(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RepoPlace:
    """A fresh, empty repository location on each backend."""
    return _place(request.param, request, tmp_path, monkeypatch)


@pytest.fixture(params=REMOTE_KINDS)
def remote_place(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> RepoPlace:
    """A fresh, empty repository location on object storage only (for what a local folder skips)."""
    return _place(request.param, request, tmp_path, monkeypatch)


@pytest.fixture
def fast_kdf():
    from xvatool.repo.keys import KdfParams

    return KdfParams(memory_kib=FAST_KDF_KIB, iterations=1, lanes=1)


@pytest.fixture
def host(tmp_path: Path):
    """A simulated host without the demo VM (`tests.ops.helpers.Host`)."""
    from tests.ops.helpers import Host
    from xvatool.sim.testing import running_host

    with running_host(tmp_path / "host", demo=False) as running:
        yield Host(running, tmp_path / "host-work")
