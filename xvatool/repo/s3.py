"""The S3 backend (AWS S3, MinIO, Ceph RGW, …) on boto3.

Why boto3 (and not obstore): it is the reference S3 client, kept by AWS, and it reads the whole
standard credential chain (environment, ``~/.aws/config`` and ``credentials`` with profiles, SSO,
assume-role, container and instance metadata) exactly as the AWS CLI does, which is what admins
expect; its clients are thread-safe, so one client serves the parallel PUTs of a backup. Its
import costs about 0.2 s, so this module is imported only when a repository location starts with
``s3://`` (`storage.open_storage`). botocore's own retries are switched off: every call goes
through `xvatool._retry.RetryPolicy`, the one retry policy of xvatool, with throttling (503
SlowDown, 429), 5xx answers and connection failures treated as transient.

Objects over `MULTIPART_THRESHOLD` are sent as multipart uploads in `PART_SIZE` parts (each part
retried on its own); an upload that fails is aborted, and `remove_leftovers` aborts those a
killed writer left behind.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from xvatool._retry import RetryPolicy
from xvatool.errors import ObjectMissingError, RepositoryError
from xvatool.repo.backend import ObjectInfo

__all__ = ["MAX_CONNECTIONS", "MULTIPART_THRESHOLD", "PART_SIZE", "S3_WRITERS", "S3Storage"]

T = TypeVar("T")
log = logging.getLogger(__name__)

MULTIPART_THRESHOLD = 16 << 20
"""Bytes. Larger objects (big ova.xml blobs) go up as multipart uploads."""
PART_SIZE = 8 << 20
"""Bytes per part of a multipart upload (S3's minimum is 5 MiB)."""
S3_WRITERS = 16
"""Chunks uploaded at once: each PUT waits mostly on the network (bench/repo.py measures it)."""
MAX_CONNECTIONS = 32
"""HTTP connections one client keeps: enough for the parallel PUTs of several backup jobs."""
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)


class S3Storage:
    """A repository under ``s3://BUCKET/PREFIX``.

    Example::

        storage = S3Storage("s3://backups/xen", "backups", "xen/", endpoint="http://127.0.0.1:9000")
    """

    def __init__(
        self,
        location: str,
        bucket: str,
        prefix: str,
        *,
        endpoint: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.location = location
        self.bucket = bucket
        self.prefix = prefix
        self.parallelism = S3_WRITERS
        self.remote = True
        self.retry = retry or RetryPolicy()
        config = Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=MAX_CONNECTIONS,
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            s3={"addressing_style": "path" if endpoint else "auto"},
        )
        try:
            self._client: Any = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
        except (BotoCoreError, ValueError) as exc:
            raise RepositoryError(f"cannot set up the S3 client: {exc}", location=location) from exc

    # -- plumbing ---------------------------------------------------------------------------

    def _error(self, exc: Exception, key: str | None) -> RepositoryError:
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in _MISSING_CODES:
                return ObjectMissingError("no such object", location=self.location, key=key)
            if code == "NoSuchBucket":
                return RepositoryError(f"bucket {self.bucket!r} does not exist", location=self.location)
            retryable = status >= 500 or status == 429 or code in _TRANSIENT_CODES
            message = str(error.get("Message") or code or status)
            return RepositoryError(
                f"S3 {code or status}: {message}", location=self.location, key=key, retryable=retryable
            )
        if isinstance(exc, NoCredentialsError):
            return RepositoryError(
                "no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
                "~/.aws/credentials",
                location=self.location,
            )
        # connection resets, timeouts, DNS: worth another try
        return RepositoryError(f"S3: {exc}", location=self.location, key=key, retryable=True)

    def _call(self, what: str, key: str | None, action: Callable[[], T]) -> T:
        def attempt() -> T:
            try:
                return action()
            except (ClientError, BotoCoreError) as exc:
                raise self._error(exc, key) from exc

        return self.retry.run(attempt, what=f"{self.location}: {what} {key or ''}".rstrip())

    def _key(self, key: str) -> str:
        return self.prefix + key

    # -- Storage ----------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        def read() -> bytes:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            body = response["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return self._call("GET", key, read)

    def get_into(self, key: str, buffer: bytearray) -> int:
        """A GET, copied into `buffer` (botocore hands out bytes; the network dominates anyway)."""
        data = self.get(key)
        if len(data) <= len(buffer):
            buffer[: len(data)] = data
        return len(data)

    def put(self, key: str, data: bytes | bytearray | memoryview, *, durable: bool = True) -> None:
        """An S3 object is durable once its PUT returned; `durable` changes nothing."""
        view = memoryview(data).cast("B")
        if len(view) > MULTIPART_THRESHOLD:
            self._put_multipart(key, view)
            return
        payload = bytes(view)
        self._call(
            "PUT", key, lambda: self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=payload)
        )

    def _put_multipart(self, key: str, view: memoryview) -> None:
        full = self._key(key)
        created = self._call(
            "create multipart upload",
            key,
            lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=full),
        )
        upload_id = created["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            for number, start in enumerate(range(0, len(view), PART_SIZE), start=1):
                body = bytes(view[start : start + PART_SIZE])

                def send(number: int = number, body: bytes = body) -> Any:
                    return self._client.upload_part(
                        Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=body
                    )

                answer = self._call(f"PUT part {number}", key, send)
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            self._call(
                "complete multipart upload",
                key,
                lambda: self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
            )
        except BaseException:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except (ClientError, BotoCoreError) as exc:
                log.warning("%s: cannot abort the multipart upload of %s: %s", self.location, key, exc)
            raise

    def flush(self) -> None:
        return None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._call(
                "HEAD", key, lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            )
        except ObjectMissingError:
            return None
        return ObjectInfo(key, int(head["ContentLength"]), head["LastModified"].timestamp())

    def delete(self, key: str) -> None:
        self._call("DELETE", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def move(self, src: str, dst: str, *, durable: bool = True) -> None:
        """A server-side COPY, then DELETE; durable once it returned, whatever `durable` says."""
        source = {"Bucket": self.bucket, "Key": self._key(src)}
        self._call(
            "COPY",
            src,
            lambda: self._client.copy_object(Bucket=self.bucket, Key=self._key(dst), CopySource=source),
        )
        self.delete(src)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        full = self._key(prefix)
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
            if token:
                args["ContinuationToken"] = token
            page = self._call("LIST", prefix, functools.partial(self._client.list_objects_v2, **args))
            for item in page.get("Contents", ()):
                yield ObjectInfo(
                    item["Key"][len(self.prefix) :], int(item["Size"]), item["LastModified"].timestamp()
                )
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def remove_leftovers(self, before: float) -> int:
        """Abort multipart uploads under the prefix that were started before `before`."""
        removed = 0
        page = self._call(
            "list multipart uploads",
            None,
            lambda: self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix),
        )
        for upload in page.get("Uploads", ()):
            if upload["Initiated"].timestamp() < before:
                self._call(
                    "abort multipart upload",
                    upload["Key"],
                    functools.partial(
                        self._client.abort_multipart_upload,
                        Bucket=self.bucket,
                        Key=upload["Key"],
                        UploadId=upload["UploadId"],
                    ),
                )
                removed += 1
        return removed

    def close(self) -> None:
        self._client.close()
