"""Tenants, their hashed API keys, and their users."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.errors import Conflict, NotFound
from storage.models import ApiKey, Tenant, User, new_id, utcnow

KEY_PREFIX = "msk_"


def hash_api_key(key: str) -> str:
    """SHA-256 hex of an API key (keys are random 256-bit strings, so no salt is needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class TenantInfo:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKeyInfo:
    id: str
    tenant_id: str
    prefix: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


class TenantManager:
    """Create, find and delete tenants; issue, resolve and revoke their API keys."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, tenant_id: str | None = None) -> TenantInfo:
        """A new tenant; :class:`Conflict` when ``tenant_id`` or ``name`` is taken.

        Names are what operators tell tenants apart by, so a second tenant of the same
        name is refused rather than created silently.
        """
        try:
            with self.db.write() as s:
                taken = s.scalar(select(Tenant.id).where(Tenant.name == name).limit(1))
                if taken is not None:
                    raise Conflict(
                        f"a tenant named {name!r} already exists (id {taken}); choose another name"
                    )
                t = Tenant(id=tenant_id or new_id(), name=name, created_at=utcnow())
                s.add(t)
        except IntegrityError as exc:
            raise Conflict(f"tenant {tenant_id} exists") from exc
        return TenantInfo(t.id, t.name, t.created_at)

    def get(self, tenant_id: str) -> TenantInfo:
        """The tenant or :class:`NotFound`."""
        with self.db.read() as s:
            t = s.get(Tenant, tenant_id)
            if t is None:
                raise NotFound(f"tenant {tenant_id} not found")
            return TenantInfo(t.id, t.name, t.created_at)

    def list(self) -> list[TenantInfo]:
        """Every tenant, oldest first."""
        with self.db.read() as s:
            rows = s.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id)).all()
            return [TenantInfo(t.id, t.name, t.created_at) for t in rows]

    def delete(self, tenant_id: str) -> bool:
        """Delete a tenant and everything it owns (cascade). False if it did not exist."""
        with self.db.write() as s:
            return s.execute(delete(Tenant).where(Tenant.id == tenant_id)).rowcount == 1

    # ---- API keys ------------------------------------------------------------------
    def create_api_key(self, tenant_id: str, name: str = "") -> tuple[str, ApiKeyInfo]:
        """Issue a key: returns the plaintext (shown once) and its stored record."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.db.write() as s:
            if s.get(Tenant, tenant_id) is None:
                raise NotFound(f"tenant {tenant_id} not found")
            row = ApiKey(
                id=new_id(),
                tenant_id=tenant_id,
                key_hash=hash_api_key(key),
                prefix=key[:12],
                name=name,
                created_at=utcnow(),
            )
            s.add(row)
        return key, _key_info(row)

    def resolve_api_key(self, key: str) -> str | None:
        """The tenant id of a valid, unrevoked key, else None."""
        with self.db.read() as s:
            return s.scalar(
                select(ApiKey.tenant_id).where(
                    ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None)
                )
            )

    def list_api_keys(self, tenant_id: str) -> list[ApiKeyInfo]:
        """The tenant's keys (hashes never leave storage)."""
        with self.db.read() as s:
            rows = s.scalars(
                select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
            ).all()
            return [_key_info(r) for r in rows]

    def revoke_api_key(self, tenant_id: str, key_id: str) -> bool:
        """Revoke one of the tenant's keys; False if it is not the tenant's."""
        with self.db.write() as s:
            res = s.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id)
                .where(ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            return res.rowcount == 1

    # ---- users ---------------------------------------------------------------------
    def ensure_user(self, tenant_id: str, external_id: str) -> str:
        """The id of the tenant's user ``external_id``, created on first use."""
        for _ in range(3):
            with self.db.read() as s:
                uid = s.scalar(
                    select(User.id).where(
                        User.tenant_id == tenant_id, User.external_id == external_id
                    )
                )
            if uid is not None:
                return uid
            try:
                with self.db.write() as s:
                    u = User(id=new_id(), tenant_id=tenant_id, external_id=external_id)
                    s.add(u)
                return u.id
            except IntegrityError:
                continue  # raced with another creator, or no such tenant
        raise NotFound(f"tenant {tenant_id} not found")


def _key_info(r: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(r.id, r.tenant_id, r.prefix, r.name, r.created_at, r.revoked_at)
