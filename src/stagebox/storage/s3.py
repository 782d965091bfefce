"""A storage box that is an S3 bucket (or a prefix in one), through boto3.

Writes stream as multipart uploads with one part buffer in flight; the part
size starts at ``part_size`` (16 MiB) and is raised so that no object needs
more than 10,000 parts. Keys follow the same rules as every box (relative, no
``..``, NFC); they live under ``prefix``.

Resumable writes (``open_write`` at an offset past 0) are not taken yet: an
S3 box here stages whole objects written from byte 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from stagebox.checksums import MultiHasher
from stagebox.errors import InvalidName, KeyEscapesRoot, NotFound, StorageError
from stagebox.names import clean_directory
from stagebox.storage.base import ObjectInfo, PromoteResult, StagedWriter, StorageBackend

MiB = 1 << 20
MIN_PART = 5 * MiB
MAX_PARTS = 10_000
COPY_LIMIT = 5 << 30  # the largest single CopyObject


def part_size_for(size_hint: int | None, part_size: int) -> int:
    """A part size no smaller than asked that fits ``size_hint`` in 10,000 parts."""
    size = max(part_size, MIN_PART)
    if size_hint:
        while size * MAX_PARTS < size_hint:
            size *= 2
    return size


class _S3Writer(StagedWriter):
    """One multipart upload; parts go out as the buffer fills, ``close`` completes it."""

    def __init__(self, backend: S3Backend, key: str, part_size: int) -> None:
        self._b = backend
        self._key = key
        self._part_size = part_size
        self._buf = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._pos = 0
        self._sent = 0  # bytes already in uploaded parts
        self._upload_id: str | None = None
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        self._pos += len(data)
        while len(self._buf) >= self._part_size:
            self._send(bytes(self._buf[: self._part_size]))
            del self._buf[: self._part_size]

    def _send(self, chunk: bytes) -> None:
        client = self._b.client
        with self._b.errors(f"upload part of {self._key}"):
            if self._upload_id is None:
                answer = client.create_multipart_upload(
                    Bucket=self._b.bucket, Key=self._b.object_key(self._key)
                )
                self._upload_id = answer["UploadId"]
            number = len(self._parts) + 1
            answer = client.upload_part(
                Bucket=self._b.bucket,
                Key=self._b.object_key(self._key),
                UploadId=self._upload_id,
                PartNumber=number,
                Body=chunk,
            )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self._sent += len(chunk)

    def tell(self) -> int:
        return self._pos

    def discard_to(self, offset: int) -> None:
        if not self._sent <= offset <= self._pos:
            raise StorageError(
                f"{self._b.name}: cannot discard to {offset}: only bytes past {self._sent} "
                "are still in memory"
            )
        del self._buf[offset - self._sent :]
        self._pos = offset

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        client, bucket, key = self._b.client, self._b.bucket, self._b.object_key(self._key)
        with self._b.errors(f"write {self._key}"):
            if self._upload_id is None:
                client.put_object(Bucket=bucket, Key=key, Body=bytes(self._buf))
                return
            if self._buf:
                self._send(bytes(self._buf))
                self._buf = bytearray()
            client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )

    def abort(self) -> None:
        self._closed = True
        if self._upload_id is not None:
            with contextlib.suppress(Exception):
                self._b.client.abort_multipart_upload(
                    Bucket=self._b.bucket,
                    Key=self._b.object_key(self._key),
                    UploadId=self._upload_id,
                )

    def __exit__(self, *exc: object) -> None:
        if exc and exc[0] is not None:
            self.abort()
        else:
            self.close()


class S3Backend(StorageBackend):
    def __init__(
        self,
        name: str,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        part_size: int = 16 * MiB,
        checksums_when_required: bool = False,
        client: Any = None,
    ) -> None:
        self.name = name
        self.bucket = bucket
        self.prefix = clean_directory(prefix, "prefix") if prefix else ""
        self.endpoint_url = endpoint_url
        self.part_size = part_size
        if client is None:
            import boto3
            from botocore.config import Config

            options: dict[str, Any] = {"retries": {"max_attempts": 5, "mode": "standard"}}
            if checksums_when_required:
                options["request_checksum_calculation"] = "when_required"
                options["response_checksum_validation"] = "when_required"
            client = boto3.client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=Config(**options)
            )
        self.client = client

    def __repr__(self) -> str:
        return f"S3Backend({self.name!r}, s3://{self.bucket}/{self.prefix})"

    def object_key(self, key: str) -> str:
        try:
            clean = clean_directory(key, "key")
        except InvalidName as exc:
            raise KeyEscapesRoot(f"{self.name}: key {key!r} is not a safe relative path") from exc
        if not clean:
            raise KeyEscapesRoot(f"{self.name}: empty key")
        return f"{self.prefix}/{clean}" if self.prefix else clean

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"{self.name}: {what}: no such key") from None
            raise StorageError(f"{self.name}: {what}: {code or exc}") from None
        except BotoCoreError as exc:
            raise StorageError(f"{self.name}: {what}: {exc}") from None

    def open_write(self, key: str, offset: int = 0, size_hint: int | None = None) -> StagedWriter:
        self.object_key(key)
        if offset:
            raise StorageError(
                f"{self.name}: S3 boxes take writes from byte 0 only (asked to resume {key} "
                f"at {offset})"
            )
        return _S3Writer(self, key, part_size_for(size_hint, self.part_size))

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            with self.errors(f"head {key}"):
                answer: dict[str, Any] = self.client.head_object(
                    Bucket=self.bucket, Key=self.object_key(key)
                )
                return answer
        except NotFound:
            return None

    def size(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else int(head["ContentLength"])

    def identity(self, key: str) -> str | None:
        head = self._head(key)
        return None if head is None else f"{head['ETag']}:{head['ContentLength']}"

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        extra = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with self.errors(f"read {key}"):
                answer = self.client.get_object(
                    Bucket=self.bucket, Key=self.object_key(key), **extra
                )
        except StorageError as exc:
            if "InvalidRange" in str(exc):  # reading from the end: nothing left
                import io

                return io.BytesIO(b"")
            raise
        body: BinaryIO = answer["Body"]
        return body

    def promote(
        self,
        src_key: str,
        dest: StorageBackend,
        dest_key: str,
        algorithms: tuple[str, ...],
        sync: bool = True,
    ) -> PromoteResult:
        """Server-side copy within one endpoint, else stream while hashing.

        The source stays until the caller has recorded the promotion.
        """
        size = self.size(src_key)
        if size is None:
            raise NotFound(f"{self.name}: no such key {src_key}")
        if (
            isinstance(dest, S3Backend)
            and dest.endpoint_url == self.endpoint_url
            and size <= COPY_LIMIT
        ):
            with self.errors(f"copy {src_key} to {dest.name}"):
                dest.client.copy_object(
                    Bucket=dest.bucket,
                    Key=dest.object_key(dest_key),
                    CopySource={"Bucket": self.bucket, "Key": self.object_key(src_key)},
                )
            # The store holds what staging held, byte for byte; hash it once more
            # there so the caller compares what is now stored.
            hasher = MultiHasher(algorithms)
            with dest.open_read(dest_key) as f:
                hasher.update_from(f)
            return PromoteResult(renamed=False, digests=hasher.hexdigests())
        return self.stream_copy(src_key, dest, dest_key, algorithms, sync, size)

    def delete(self, key: str) -> None:
        with self.errors(f"delete {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = (
            self.object_key(prefix) + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        )
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        with self.errors(f"list {prefix or '/'}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"][strip:], int(item["Size"]))
