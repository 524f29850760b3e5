"""The shared API token of managers and the status API: from a file or the environment, never logged."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from fastapi import Header, HTTPException

TOKEN_ENV = "FEDMEMES_TOKEN"
TOKEN_HEADER = "X-Fedmemes-Token"


def read_token(token_file: str | Path | None = None) -> str:
    """Return the token from `token_file`, else from $FEDMEMES_TOKEN; fail with the fix when neither has one."""
    token = Path(token_file).read_text().strip() if token_file else os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        where = f"file {token_file} is empty" if token_file else f"${TOKEN_ENV} is not set"
        raise ValueError(f"no API token: {where}; e.g. `export {TOKEN_ENV}=$(python -c 'import secrets; print(secrets.token_urlsafe())')`")
    return token


def require_token(token: str):
    """Return a FastAPI dependency that refuses requests whose token header differs (constant-time compare)."""

    def check(x_fedmemes_token: str | None = Header(default=None)) -> None:
        if x_fedmemes_token is None or not hmac.compare_digest(x_fedmemes_token.encode(), token.encode()):
            raise HTTPException(status_code=401, detail=f"missing or wrong {TOKEN_HEADER} header")

    return check
