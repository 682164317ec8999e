"""API keys (admin): list them (never their secrets) and revoke one. Keys are created with
``wulian apikey create`` (the key is shown once). Both writes land in the audit log."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from wulian.api.auth import KEY_COLS, CurrentUser, key_public, revoke_key
from wulian.api.deps import PoolDep
from wulian.api.errors import NotFound
from wulian.api.paging import Page, paging
from wulian.api.schemas import ApiKeyPublic, ApiKeysPublic

router = APIRouter(prefix="/v1/keys", tags=["keys"])
KeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="the 12 hex characters after 'wl_'")]



@router.get("", response_model=ApiKeysPublic)
async def list_keys(pool: PoolDep, user: CurrentUser, active: bool | None = None,
                    page: Annotated[Page, Depends(paging(keyset=1))] = Page(100)):
    """Keys by creation, newest first (admin only)."""
    user.require("admin")
    async with pool.acquire() as con:
        rows = await con.fetch(
            f"SELECT id, {KEY_COLS} FROM api_keys WHERE ($1::int IS NULL OR id < $1)"
            " AND ($2::bool IS NULL OR (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())) = $2)"
            " ORDER BY id DESC LIMIT $3", page.after and page.after[0], active, page.fetch)
    rows, nxt = page.done(rows, key=lambda r: (r["id"],))
    return ApiKeysPublic(data=[ApiKeyPublic(**key_public(r)) for r in rows], count=len(rows), next_cursor=nxt)


@router.delete("/{key_id}", status_code=204, responses={404: {"description": "no such key, or already revoked"}})
async def delete_key(key_id: KeyId, pool: PoolDep, user: CurrentUser):
    """Revoke a key: it stops working at once; the row stays (listed as revoked)."""
    user.require("admin")
    async with pool.acquire() as con:
        ok = await revoke_key(con, key_id, actor=user.name, source="api", actor_key_id=user.key_id)
    if not ok:
        raise NotFound(f"no active key {key_id!r}")
    return Response(status_code=204)
