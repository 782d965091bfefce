"""A storage box that is an S3 bucket (or a prefix in one), through boto3.

Writes stream as multipart uploads with one part buffer in flight; the part
size starts at ``part_size`` (16 MiB) and is raised so that no object needs
more than 10,000 parts. Keys follow the same rules as every box (relative, no
``..``, NFC); they live under ``prefix``, except the first component
``.stagebox-unfinished``, reserved for the tail records of unfinished writes.

A write closed short of its ``size_hint`` leaves the object unfinished, to be
continued by the next writer at its size (one tus PATCH after another); see
:mod:`stagebox.storage.s3_writes`. An unfinished object cannot be read back
(``can_read_partial`` is False) and is not listed.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

from stagebox.checksums import MultiHasher
from stagebox.errors import InvalidName, KeyEscapesRoot, NotFound, StorageError
from stagebox.names import clean_directory
from stagebox.storage.base import (
    ObjectInfo,
    PromoteResult,
    StagedWriter,
    StorageBackend,
    check_metadata,
)
from stagebox.storage.s3_writes import (
    UNFINISHED,
    S3Writer,
    Unfinished,
    decode_metadata,
    encode_metadata,
    part_entry,
)

MiB = 1 << 20
MIN_PART = 5 * MiB
MAX_PARTS = 10_000
COPY_LIMIT = 5 << 30  # the largest single CopyObject
COPY_PART = 512 * MiB  # part size of a server-side copy in parts (UploadPartCopy)


def part_size_for(size_hint: int | None, part_size: int) -> int:
    """A part size no smaller than asked that fits ``size_hint`` in 10,000 parts."""
    size = max(part_size, MIN_PART)
    if size_hint:
        while size * MAX_PARTS < size_hint:
            size *= 2
    return size


class S3Backend(StorageBackend):
    can_read_partial = False
    #: Objects up to this size are copied by one CopyObject, larger ones in parts.
    copy_limit = COPY_LIMIT
    copy_part_size = COPY_PART

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
        # Parts carry a CRC32 declared when their upload is created, as
        # s3transfer does; stores that refuse the newer checksums get none.
        self.part_checksums = not checksums_when_required
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

    def _clean(self, key: str) -> str:
        try:
            clean = clean_directory(key, "key")
        except InvalidName as exc:
            raise KeyEscapesRoot(f"{self.name}: key {key!r} is not a safe relative path") from exc
        if not clean:
            raise KeyEscapesRoot(f"{self.name}: empty key")
        if clean.split("/", 1)[0] == UNFINISHED:
            raise KeyEscapesRoot(f"{self.name}: {UNFINISHED}/ is reserved for unfinished writes")
        return clean

    def _full(self, clean: str) -> str:
        return f"{self.prefix}/{clean}" if self.prefix else clean

    def object_key(self, key: str) -> str:
        return self._full(self._clean(key))

    def tail_key(self, key: str) -> str:
        """Where the tail record of ``key``'s unfinished write lives."""
        return self._full(f"{UNFINISHED}/{self._clean(key)}")

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"{self.name}: {what}: no such key") from None
            if code == "NoSuchUpload":
                raise NotFound(f"{self.name}: {what}: no such upload") from None
            raise StorageError(f"{self.name}: {what}: {code or exc}") from None
        except BotoCoreError as exc:
            raise StorageError(f"{self.name}: {what}: {exc}") from None

    # -- unfinished writes: the tail record and the open upload it names ------

    def _unfinished(self, key: str, listed: bool = True) -> Unfinished | None:
        """The committed state of ``key``'s unfinished write, or None.

        Only parts S3 still holds count: an upload aborted behind our back (a
        bucket lifecycle rule) leaves the bytes of the parts that remain in order.
        Without ``listed`` the parts are not looked up (the upload id is enough).
        """
        try:
            with self.errors(f"look for an unfinished write of {key}"):
                head = self.client.head_object(Bucket=self.bucket, Key=self.tail_key(key))
        except NotFound:
            return None
        state, counted = Unfinished.from_record(head.get("Metadata", {}), head["ContentLength"])
        if not listed:
            return state
        if state.upload_id is not None and counted:
            state.parts = self._listed_parts(key, state.upload_id, counted, state.part_size)
        if len(state.parts) != counted:
            state.tail_size = 0  # the tail follows parts that are gone
        return state

    def _listed_parts(
        self, key: str, upload_id: str, counted: int, part_size: int
    ) -> list[dict[str, Any]]:
        """Parts 1..``counted`` of the upload, as long as each is there and whole."""
        parts: list[dict[str, Any]] = []
        paginator = self.client.get_paginator("list_parts")
        pages = paginator.paginate(Bucket=self.bucket, Key=self.object_key(key), UploadId=upload_id)
        try:
            with self.errors(f"list the parts of {key}"):
                for page in pages:
                    for part in page.get("Parts", []):
                        number = part["PartNumber"]
                        if number != len(parts) + 1 or part["Size"] != part_size:
                            return parts
                        parts.append(part_entry(part, number))
                        if number == counted:
                            return parts
        except NotFound:
            return []
        return parts

    def put_tail(self, key: str, state: Unfinished, tail: bytes) -> None:
        """Commit ``state`` (with ``tail``, its bytes past the last part)."""
        with self.errors(f"record the tail of {key}"):
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.tail_key(key),
                Body=tail,
                Metadata=state.record_metadata(),
            )

    def read_tail(self, key: str, size: int) -> bytes:
        if not size:
            return b""
        with self.errors(f"read the tail of {key}"):
            answer = self.client.get_object(
                Bucket=self.bucket, Key=self.tail_key(key), Range=f"bytes=0-{size - 1}"
            )
            data: bytes = answer["Body"].read()
        if len(data) != size:
            raise StorageError(f"{self.name}: the tail of {key} is {len(data)} bytes, not {size}")
        return data

    def _drop_unfinished(self, key: str, state: Unfinished | None) -> None:
        if state is None:
            return
        if state.upload_id is not None:
            with contextlib.suppress(NotFound), self.errors(f"abort the upload of {key}"):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.object_key(key), UploadId=state.upload_id
                )
        with self.errors(f"delete the tail of {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.tail_key(key))

    # -- the contract ----------------------------------------------------------

    def open_write(
        self,
        key: str,
        offset: int = 0,
        size_hint: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> StagedWriter:
        """From byte 0 anything unfinished under ``key`` is dropped; a whole object
        is replaced when the writer commits. Past 0, only an unfinished object is
        continued, from its size, a part boundary or inside its tail."""
        self.object_key(key)
        given = None if metadata is None else check_metadata(metadata)
        if not offset:
            self._drop_unfinished(key, self._unfinished(key, listed=False))
            fresh = Unfinished(None, part_size_for(size_hint, self.part_size), [], 0)
            return S3Writer(self, key, fresh, b"", size_hint, given or {}, resumed=False)
        if self._head(key) is not None:
            raise StorageError(
                f"{self.name}: cannot write {key} at {offset}: a whole S3 object is "
                "rewritten from byte 0 only"
            )
        state = self._unfinished(key)
        staged = 0 if state is None else state.size
        if state is None or offset > staged:
            raise StorageError(f"{self.name}: cannot write {key} at {offset}, only {staged} bytes")
        if offset >= state.parts_size:
            tail = self.read_tail(key, offset - state.parts_size)
        elif offset % state.part_size == 0:
            del state.parts[offset // state.part_size :]
            tail = b""
        else:
            raise StorageError(
                f"{self.name}: cannot write {key} at {offset}: an unfinished S3 object is "
                f"continued from its size ({state.size}), a part boundary (every "
                f"{state.part_size} bytes) or inside its last {state.tail_size} bytes"
            )
        if offset < state.size:  # bytes past the offset are dropped now, as a truncate would
            state.tail_size = len(tail)
            self.put_tail(key, state, tail)
        writer_metadata = given if given is not None else dict(state.metadata)
        return S3Writer(self, key, state, tail, size_hint, writer_metadata, resumed=True)

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
        """A whole object's size; else the bytes an unfinished write committed."""
        head = self._head(key)
        if head is not None:
            return int(head["ContentLength"])
        state = self._unfinished(key)
        return None if state is None else state.size

    def metadata(self, key: str) -> dict[str, str]:
        head = self._head(key)
        if head is None:
            raise NotFound(f"{self.name}: no such key {key}")
        return decode_metadata(head.get("Metadata", {}))

    def replace_metadata(self, key: str, size: int, metadata: Mapping[str, str]) -> None:
        """Give a whole object new metadata by copying it onto itself on the server."""
        if size <= self.copy_limit:
            with self.errors(f"set the metadata of {key}"):
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=self.object_key(key),
                    CopySource={"Bucket": self.bucket, "Key": self.object_key(key)},
                    Metadata=encode_metadata(metadata),
                    MetadataDirective="REPLACE",
                )
        else:
            self._copy_in_parts(key, self, key, size, metadata)

    def _copy_in_parts(
        self, src_key: str, dest: S3Backend, dest_key: str, size: int, metadata: Mapping[str, str]
    ) -> None:
        """A server-side copy of an object too large for one CopyObject (UploadPartCopy)."""
        part = part_size_for(size, dest.copy_part_size)
        target = {"Bucket": dest.bucket, "Key": dest.object_key(dest_key)}
        source = {"Bucket": self.bucket, "Key": self.object_key(src_key)}
        extra = {"ChecksumAlgorithm": "CRC32"} if dest.part_checksums else {}
        with dest.errors(f"copy {src_key} in parts"):
            upload_id = dest.client.create_multipart_upload(
                **target, Metadata=encode_metadata(metadata), **extra
            )["UploadId"]
            try:
                parts = []
                for number, start in enumerate(range(0, size, part), 1):
                    answer = dest.client.upload_part_copy(
                        **target,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource=source,
                        CopySourceRange=f"bytes={start}-{min(start + part, size) - 1}",
                    )
                    parts.append(part_entry(answer["CopyPartResult"], number))
                dest.client.complete_multipart_upload(
                    **target, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    dest.client.abort_multipart_upload(**target, UploadId=upload_id)
                raise

    def identity(self, key: str, strict: bool = False) -> str | None:
        head = self._head(key)
        return None if head is None else f"{head['ETag']}:{head['ContentLength']}"

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        extra = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with self.errors(f"read {key}"):
                answer = self.client.get_object(
                    Bucket=self.bucket, Key=self.object_key(key), **extra
                )
        except NotFound:
            if self._unfinished(key, listed=False) is not None:
                raise StorageError(
                    f"{self.name}: {key} is unfinished: S3 cannot read it back until its "
                    "write is complete"
                ) from None
            raise
        except StorageError as exc:
            if "InvalidRange" in str(exc):  # reading from the end: nothing left
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
        """Server-side copy within one endpoint (metadata and all), else stream
        while hashing. The source stays until the caller has recorded the promotion.
        """
        head = self._head(src_key)
        if head is None:
            raise NotFound(f"{self.name}: no such key {src_key}")
        size = int(head["ContentLength"])
        if isinstance(dest, S3Backend) and dest.endpoint_url == self.endpoint_url:
            if size <= dest.copy_limit:
                with self.errors(f"copy {src_key} to {dest.name}"):
                    dest.client.copy_object(
                        Bucket=dest.bucket,
                        Key=dest.object_key(dest_key),
                        CopySource={"Bucket": self.bucket, "Key": self.object_key(src_key)},
                    )
            else:
                metadata = decode_metadata(head.get("Metadata", {}))
                self._copy_in_parts(src_key, dest, dest_key, size, metadata)
            # The store holds what staging held, byte for byte; hash it once more
            # there so the caller compares what is now stored.
            hasher = MultiHasher(algorithms)
            with dest.open_read(dest_key) as f:
                hasher.update_from(f)
            return PromoteResult(renamed=False, digests=hasher.hexdigests())
        return self.stream_copy(src_key, dest, dest_key, algorithms, sync, size)

    def delete(self, key: str) -> None:
        """The object, its unfinished write, and any upload left open under its key."""
        obj = self.object_key(key)
        with self.errors(f"delete {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=obj)
        self._drop_unfinished(key, self._unfinished(key, listed=False))
        paginator = self.client.get_paginator("list_multipart_uploads")
        with self.errors(f"list the uploads of {key}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=obj):
                for upload in page.get("Uploads", []):
                    if upload["Key"] == obj:
                        with contextlib.suppress(NotFound):
                            self.client.abort_multipart_upload(
                                Bucket=self.bucket, Key=obj, UploadId=upload["UploadId"]
                            )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Whole objects only: no tail record, no unfinished write."""
        base = (
            self.object_key(prefix) + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        )
        strip = len(self.prefix) + 1 if self.prefix else 0
        hidden = UNFINISHED + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        with self.errors(f"list {prefix or '/'}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                for item in page.get("Contents", []):
                    key = item["Key"][strip:]
                    if not key.startswith(hidden):
                        yield ObjectInfo(key, int(item["Size"]))
