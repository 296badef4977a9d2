"""An existing FastAPI backend selling text analyses, metered by commerce-mesh.

    export QUOTA_API_KEY="$(cat .dev/backend-api-key)"
    uvicorn analysis_app:app --app-dir clients/python/examples

- `GET /v1/me`: who is calling (an access token, or the user's own API key).
- `POST /v1/analyses`: one unit of `analysis` per call, with `@requires_quota`.
- `POST /v1/reports`: one unit of `report` per call, with the `charge_quota` dependency.

Settings: see `commerce_mesh.MeshConfig`. With `EXAMPLE_FAILURES=1` (the tests set it) a request
may ask the handler to fail with `X-Simulate-Failure: raise` or `X-Simulate-Failure: 502`, to show
that failed work is refunded; without it the header is ignored.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from commerce_mesh import Mesh, MeshConfig, Principal, QuotaDecision
from commerce_mesh.fastapi import charge_quota, current_user, requires_quota, use_mesh

FAILURES = os.environ.get("EXAMPLE_FAILURES") == "1"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with Mesh.connect(MeshConfig.from_env()) as mesh:
        use_mesh(app, mesh)
        yield


app = FastAPI(title="analysis backend", lifespan=lifespan)


class Document(BaseModel):
    text: str = Field(max_length=100_000)


class Analysis(BaseModel):
    words: int
    sentences: int


def analyse(document: Document) -> Analysis:
    text = document.text
    sentences = sum(text.count(mark) for mark in ".!?") or (1 if text.strip() else 0)
    return Analysis(words=len(text.split()), sentences=sentences)


def simulated_failure(request: Request) -> Response | None:
    """The failure a test asked for (only with EXAMPLE_FAILURES=1)."""
    if not FAILURES:
        return None
    failure = request.headers.get("x-simulate-failure")
    if failure == "raise":
        raise RuntimeError("the analysis engine crashed (simulated)")
    if failure == "502":
        return JSONResponse({"detail": "the analysis engine is unavailable"}, status_code=502)
    return None


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/me")
async def me(user: Principal = Depends(current_user)) -> dict[str, object]:
    return {
        "userId": user.user_id,
        "roles": sorted(user.roles),
        "scopes": sorted(user.scopes),
        "credential": user.credential,
    }


@app.post("/v1/analyses", response_model=None)
@requires_quota("analysis")
async def create_analysis(document: Document, request: Request) -> Analysis | Response:
    failed = simulated_failure(request)
    return failed if failed is not None else analyse(document)


@app.post("/v1/reports")
async def create_report(
    document: Document,
    request: Request,
    quota: QuotaDecision = Depends(charge_quota("report")),
) -> dict[str, object]:
    simulated_failure(request)
    return {"analysis": analyse(document).model_dump(), "reportsLeft": quota.remaining}
