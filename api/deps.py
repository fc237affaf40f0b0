"""FastAPI dependencies: settings, a database session per request, the caller's tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.problems import Problem
from jobs.auth import tenant_for_key
from jobs.db import get_sessionmaker
from jobs.models import Tenant
from jobs.settings import Settings
from jobs.storage import Storage


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


def get_session(settings: Annotated[Settings, Depends(get_app_settings)]) -> Iterator[Session]:
    """A session for the request; routes commit what they change, the rest is rolled back."""
    session = get_sessionmaker(settings.database_url)()
    try:
        yield session
    finally:
        session.close()


def get_tenant(request: Request, session: Annotated[Session, Depends(get_session)]) -> Tenant:
    """The tenant of the `Authorization: Bearer <key>` header; 401 without a valid key."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    tenant = tenant_for_key(session, key.strip()) if scheme.lower() == "bearer" and key.strip() else None
    if tenant is None:
        raise Problem(
            401,
            "Send a valid API key as `Authorization: Bearer <key>`.",
            "unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
SessionDep = Annotated[Session, Depends(get_session)]
TenantDep = Annotated[Tenant, Depends(get_tenant)]
