"""What the OpenAPI description says of every route's tokens and refusals.

Routers declare their token with ``dependencies=[UPLOADER_TOKEN]`` (or
``ADMIN_TOKEN``): that only describes the scheme, ``deps.current_uploader`` and
``deps.current_admin`` check the token. Routes list what else they may answer
with ``responses=answers(404, 409)``; each refusal has the body the error
handler in ``app.py`` writes (:class:`ErrorBody`, or :class:`InvalidInputBody`
for a 400).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Security
from fastapi.security import HTTPBearer

from stagebox.server.schemas import MAX_INT, ErrorBody, InvalidInputBody

UPLOADER_TOKEN = Security(
    HTTPBearer(
        scheme_name="uploaderToken",
        description="an uploader's token (sbx_...), from `stagebox admin uploader add`",
        auto_error=False,
    )
)
ADMIN_TOKEN = Security(
    HTTPBearer(
        scheme_name="adminToken",
        description="an admin token, from `stagebox admin token add`",
        auto_error=False,
    )
)

# A catalog id in a path: out of the catalog's 64-bit range is a 422, not a 500.
CatalogId = Annotated[int, Path(ge=1, le=MAX_INT, description="a catalog id")]

Answers = dict[int | str, dict[str, Any]]


def _refusal(description: str, body: type[ErrorBody] = ErrorBody, **more: Any) -> dict[str, Any]:
    # The body's schema is given inline, not as ``model``: FastAPI would file a
    # model under the route's media type, and a text route's refusals are JSON.
    content = {"application/json": {"schema": body.model_json_schema()}}
    return {"description": description, "content": content, **more}


ANSWERS: Answers = {
    400: _refusal(
        "A value broke a rule (or the body is not JSON): the field and the rule.", InvalidInputBody
    ),
    401: _refusal(
        "No token, or an unknown or revoked one.",
        headers={"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    ),
    403: _refusal("The token may not do this."),
    404: _refusal("No such thing, or not this token's to see."),
    409: _refusal("The request contradicts what is stored."),
    413: _refusal("The body is larger than allowed or declared."),
    423: _refusal("Another request is writing this upload."),
    460: _refusal("The bytes do not hash to the declared checksum."),
}


def answers(*statuses: int) -> Answers:
    """The shared answers for ``statuses``, for a route's or a router's ``responses=``."""
    return {status: ANSWERS[status] for status in statuses}
