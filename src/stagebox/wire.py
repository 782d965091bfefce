"""Wire formats shared by client and server.

A *bundle* carries many small registered files in one request body::

    u32 big-endian manifest length | manifest JSON | file bytes back to back

The manifest is ``{"files": [{"id", "size", "sha256", "md5"?}, ...]}`` in the
order the bytes follow.
"""

from __future__ import annotations

import json
import struct

BUNDLE_CONTENT_TYPE = "application/x-stagebox-bundle"
BUNDLE_HEADER = struct.Struct(">I")


def encode_bundle_header(manifest: dict[str, object]) -> bytes:
    body = json.dumps(manifest, separators=(",", ":")).encode()
    return BUNDLE_HEADER.pack(len(body)) + body
