"""Writes into an S3 box: multipart uploads that stay open across writers.

An object written by several writers in turn (one per tus PATCH) is an open
multipart upload plus a **tail record**: a small object under the reserved
prefix ``.stagebox-unfinished/`` holding the bytes past the last full part
(S3 takes no part but the last under 5 MiB) and, as its own metadata, the
upload id, the number of parts it counts, the part size and the metadata the
finished object will hold. A writer's ``close`` uploads every full part and
then rewrites the tail record; the record is the commit point, so a part sent
after it (a writer that died) is ignored and replaced later. The writer that
reaches the declared size completes the upload (tail as the last part) and
deletes the record.

Metadata goes out as S3 user metadata (``x-amz-meta-<name>``); a value that
is not plain printable ASCII travels as one RFC 2047 encoded word
(``=?utf-8?b?<base64>?=``), as the AWS SDKs write it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stagebox.errors import NotFound, StorageError
from stagebox.storage.base import StagedWriter, check_metadata

if TYPE_CHECKING:
    from stagebox.storage.s3 import S3Backend

UNFINISHED = ".stagebox-unfinished"  # reserved first key component: tail records
_UPLOAD_ID = "stagebox-upload-id"
_PARTS = "stagebox-parts"
_PART_SIZE = "stagebox-part-size"
_CREATED_WITH = "stagebox-created-with"
_USER = "u-"  # the finished object's metadata, inside a tail record's
_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256")
_ENCODED_WORD = re.compile(r"^=\?utf-8\?b\?([A-Za-z0-9+/]*={0,2})\?=$", re.IGNORECASE)


def encode_value(value: str) -> str:
    """A metadata value S3 takes and returns unchanged."""
    plain = value.isascii() and value.isprintable() and value == value.strip()
    if value and plain and not value.startswith("=?"):
        return value
    return "=?utf-8?b?" + base64.b64encode(value.encode()).decode() + "?="


def decode_value(value: str) -> str:
    match = _ENCODED_WORD.match(value)
    if match is None:
        return value
    try:
        return base64.b64decode(match.group(1), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return value


def encode_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    return {name: encode_value(value) for name, value in metadata.items()}


def decode_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    return {name: decode_value(value) for name, value in metadata.items()}


def fingerprint(metadata: Mapping[str, str]) -> str:
    """Tells whether two metadata mappings differ, in a few bytes."""
    return hashlib.sha256(json.dumps(sorted(metadata.items())).encode()).hexdigest()[:32]


def part_entry(answer: Mapping[str, Any], number: int) -> dict[str, Any]:
    """A part as CompleteMultipartUpload wants it, with its checksum when it has one."""
    entry: dict[str, Any] = {"PartNumber": number, "ETag": answer["ETag"]}
    entry.update({k: answer[k] for k in _CHECKSUMS if answer.get(k)})
    return entry


@dataclass
class Unfinished:
    """The committed state of an object whose write is not finished."""

    upload_id: str | None  # None until the first full part
    part_size: int
    parts: list[dict[str, Any]]  # parts 1..n, each exactly part_size bytes
    tail_size: int
    metadata: dict[str, str] = field(default_factory=dict)
    created_with: str = ""  # fingerprint of the metadata the upload was created with

    @property
    def parts_size(self) -> int:
        return len(self.parts) * self.part_size

    @property
    def size(self) -> int:
        return self.parts_size + self.tail_size

    def record_metadata(self) -> dict[str, str]:
        """The tail record's own S3 metadata."""
        meta = {
            _UPLOAD_ID: self.upload_id or "",
            _PARTS: str(len(self.parts)),
            _PART_SIZE: str(self.part_size),
            _CREATED_WITH: self.created_with,
        }
        meta.update({_USER + k: encode_value(v) for k, v in self.metadata.items()})
        return meta

    @classmethod
    def from_record(cls, meta: Mapping[str, str], tail_size: int) -> tuple[Unfinished, int]:
        """The state a tail record describes, and how many parts it counts
        (``parts`` is left empty: only a listing of the upload can fill it)."""
        try:
            counted, part_size = int(meta[_PARTS]), int(meta[_PART_SIZE])
        except (KeyError, ValueError):
            raise StorageError(f"malformed tail record: {dict(meta)}") from None
        user = {k[len(_USER) :]: decode_value(v) for k, v in meta.items() if k.startswith(_USER)}
        state = cls(
            upload_id=meta.get(_UPLOAD_ID) or None,
            part_size=part_size,
            parts=[],
            tail_size=tail_size,
            metadata=user,
            created_with=meta.get(_CREATED_WITH, ""),
        )
        return state, counted


class S3Writer(StagedWriter):
    """Writes one key from an offset, with one part buffer; see the module docstring.

    ``close`` completes the object when it reaches ``size_hint`` (or there is
    none); short of it, the object stays unfinished for the next writer.
    """

    def __init__(
        self,
        backend: S3Backend,
        key: str,
        state: Unfinished,
        tail: bytes,
        size_hint: int | None,
        metadata: dict[str, str],
        resumed: bool,
    ) -> None:
        self._b = backend
        self._key = key
        self._state = state
        self._part_size = state.part_size
        self._upload_id = state.upload_id
        self._parts = list(state.parts)
        self._buf = bytearray(tail)
        self._start = self._pos = state.parts_size + len(tail)
        self._start_parts = len(state.parts)
        self._size_hint = size_hint
        self._created_with: str | None = state.created_with if state.upload_id else None
        self._resumed = resumed  # a tail record exists for this key
        self._closed = False
        self.metadata = metadata

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            with self._b.errors(what):
                yield
        except NotFound:
            raise StorageError(
                f"{self._b.name}: {what}: the multipart upload is gone (aborted behind our "
                f"back?); {self._key} must be written again from byte 0"
            ) from None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        self._pos += len(data)
        while len(self._buf) >= self._part_size:
            self._send(bytes(self._buf[: self._part_size]))
            del self._buf[: self._part_size]

    def _send(self, chunk: bytes) -> None:
        b = self._b
        extra = {"ChecksumAlgorithm": "CRC32"} if b.part_checksums else {}
        with self._errors(f"upload part of {self._key}"):
            if self._upload_id is None:
                answer = b.client.create_multipart_upload(
                    Bucket=b.bucket,
                    Key=b.object_key(self._key),
                    Metadata=encode_metadata(check_metadata(self.metadata)),
                    **extra,
                )
                self._upload_id = answer["UploadId"]
                self._created_with = fingerprint(self.metadata)
            number = len(self._parts) + 1
            answer = b.client.upload_part(
                Bucket=b.bucket,
                Key=b.object_key(self._key),
                UploadId=self._upload_id,
                PartNumber=number,
                Body=chunk,
                **extra,
            )
        self._parts.append(part_entry(answer, number))

    def tell(self) -> int:
        return self._pos

    def discard_to(self, offset: int) -> None:
        """Within the part buffer, or back to where this writer started, or to a
        boundary of a part this writer sent; other offsets are refused."""
        if not self._start <= offset <= self._pos:
            raise StorageError(
                f"{self._b.name}: cannot discard to {offset}: "
                f"writer spans {self._start}..{self._pos}"
            )
        sent = len(self._parts) * self._part_size
        if offset >= sent:
            del self._buf[offset - sent :]
        elif offset % self._part_size == 0:
            del self._parts[offset // self._part_size :]
            self._buf = bytearray()
        elif offset == self._start:
            del self._parts[self._start_parts :]
            self._buf = bytearray(self._b.read_tail(self._key, self._state.tail_size))
        else:
            raise StorageError(
                f"{self._b.name}: cannot discard {self._key} to {offset}: the bytes before it "
                "are in a part already sent"
            )
        self._pos = offset

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with self._errors(f"write {self._key}"):
                if self._size_hint is None or self._pos >= self._size_hint:
                    self._complete()
                else:
                    self._commit()
        finally:
            self._buf = bytearray()

    def _complete(self) -> None:
        b, key = self._b, self._b.object_key(self._key)
        metadata = check_metadata(self.metadata)
        if self._upload_id is not None and not self._parts:
            b.client.abort_multipart_upload(Bucket=b.bucket, Key=key, UploadId=self._upload_id)
            self._upload_id = None
        if self._upload_id is None:
            b.client.put_object(
                Bucket=b.bucket, Key=key, Body=bytes(self._buf), Metadata=encode_metadata(metadata)
            )
        else:
            if self._buf:
                self._send(bytes(self._buf))
            b.client.complete_multipart_upload(
                Bucket=b.bucket,
                Key=key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
            if fingerprint(metadata) != self._created_with:
                b.replace_metadata(self._key, self._pos, metadata)
        if self._resumed:
            b.client.delete_object(Bucket=b.bucket, Key=b.tail_key(self._key))

    def _commit(self) -> None:
        b = self._b
        if not self._resumed:
            # A write from byte 0 replaces the object; left unfinished, the
            # earlier whole object must not be taken for it.
            b.client.delete_object(Bucket=b.bucket, Key=b.object_key(self._key))
        self._state = Unfinished(
            upload_id=self._upload_id,
            part_size=self._part_size,
            parts=self._parts,
            tail_size=len(self._buf),
            metadata=check_metadata(self.metadata),
            created_with=self._created_with or "",
        )
        b.put_tail(self._key, self._state, bytes(self._buf))
        self._resumed = True

    def abort(self) -> None:
        """A writer that failed: a fresh upload is dropped; a resumed object keeps
        the state its last writer committed (parts sent since are ignored)."""
        self._closed = True
        self._buf = bytearray()
        if self._resumed or self._upload_id is None:
            return
        b = self._b
        with contextlib.suppress(NotFound), b.errors(f"abort {self._key}"):
            b.client.abort_multipart_upload(
                Bucket=b.bucket, Key=b.object_key(self._key), UploadId=self._upload_id
            )

    def __exit__(self, *exc: object) -> None:
        if exc and exc[0] is not None:
            with contextlib.suppress(StorageError):  # the original error is the one to report
                self.abort()
        else:
            self.close()
