from __future__ import annotations

from fastapi import APIRouter

from stagebox import __version__

router = APIRouter(prefix="/api/v1", tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    """200 once the catalog is migrated and the task runner is up."""
    return {"status": "ok", "version": __version__}
