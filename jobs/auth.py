"""API keys: generated with 256 bits of randomness, stored only as their sha256.

A key looks like `mk_<prefix>_<secret>`. The prefix is stored in clear so that operators can tell
keys apart; the whole key is hashed. A fast unsalted hash is enough because the keys are random
(nothing to guess from a dictionary), and it lets a request find its key by an indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs.models import ApiKey, Tenant

KEY_SCHEME = "mk"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> tuple[str, str]:
    """A new key and its display prefix."""
    prefix = secrets.token_hex(4)
    return f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}", prefix


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    """The tenant called `name`, created with a fresh webhook secret when it does not exist."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is not None:
        return tenant
    try:
        with session.begin_nested():
            tenant = Tenant(name=name, webhook_secret=secrets.token_hex(32))
            session.add(tenant)
    except IntegrityError:  # created meanwhile by a concurrent call
        return session.scalars(select(Tenant).where(Tenant.name == name)).one()
    return tenant


def create_key(session: Session, tenant_name: str) -> str:
    """Create an API key for `tenant_name` (and the tenant if needed); returns the key, which is
    not stored and cannot be shown again."""
    tenant = get_or_create_tenant(session, tenant_name)
    key, prefix = generate_key()
    session.add(ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=hash_key(key)))
    session.flush()
    return key


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    """The tenant owning an unrevoked `key`, or None."""
    return session.scalar(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
