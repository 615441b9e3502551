"""Who is asking: FastAPI dependencies for the token's device and the read policy."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from bench.server.tokens import device_for

bearer = HTTPBearer(auto_error=False, description="A device token from "
                    "`bench serve token create --device NAME`.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, reason,
                         headers={"WWW-Authenticate": "Bearer"})


def token_device(request: Request, credentials: Credentials) -> str:
    """The device of the request's bearer token; 401 if it is missing, wrong or revoked."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("a bearer token is required")
    with Session(request.app.state.store.engine) as session:
        device = device_for(session, credentials.credentials)
    if device is None:
        raise _unauthorized("the token is wrong or revoked")
    return device


def read_access(request: Request, credentials: Credentials) -> None:
    """Reads are public unless the server runs with private reads."""
    if request.app.state.settings.private_reads:
        token_device(request, credentials)


Writer = Annotated[str, Depends(token_device)]
Reader = Depends(read_access)
