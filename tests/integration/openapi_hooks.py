"""Schemathesis hooks for test_openapi: the API's two byte-stream media types are
sent as the bytes drawn, like application/octet-stream."""

import schemathesis

schemathesis.serializer.alias(
    ["application/offset+octet-stream", "application/x-stagebox-bundle"],
    "application/octet-stream",
)
