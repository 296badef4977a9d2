"""FastAPI support: the `current_user` dependency, the `@requires_quota` decorator and the same
charge as a dependency (`charge_quota`).

The app opens a `Mesh` in its lifespan and hands it over with `use_mesh(app, mesh)`; the
dependencies find it on `app.state`.

Charging: before the handler runs, one Consume for the signed-in user with the backend's key,
keyed by the request (`Idempotency-Key`, else `X-Request-Id`, prefixed with the metric; or a
function of the request), so a retried request is charged once. Then:
- denied: 429 with the quota headers (see `quota.quota_headers`) and `Retry-After`;
- a replay (that key was charged before): 409, and the handler does not run again, since running
  it would be free work for anyone repeating a request id; a new attempt takes a new id;
- the handler raises (an `HTTPException` included) or returns a response with a 5xx status: the
  units are refunded (by the same key) before the error goes out;
- otherwise the response carries the quota headers.
The dependency form cannot see a returned 5xx response (FastAPI builds the response after the
dependency has handed over), so it refunds only when the handler raises.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import inspect
import logging
import typing
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from fastapi import Depends, FastAPI, HTTPException, Request, Response

from .auth import AuthError, Principal
from .mesh import Mesh
from .quota import QuotaDecision, QuotaState, quota_headers

log = logging.getLogger("commerce_mesh")

IdempotencyKey = Callable[[Request], str]
Endpoint = TypeVar("Endpoint", bound=Callable[..., Awaitable[Any]])

_STATE = "commerce_mesh"
_MAX_KEY = 128


def use_mesh(app: FastAPI, mesh: Mesh) -> None:
    """Makes `mesh` the one this app's dependencies use."""
    setattr(app.state, _STATE, mesh)


def get_mesh(request: Request) -> Mesh:
    mesh = getattr(request.app.state, _STATE, None)
    if not isinstance(mesh, Mesh):
        raise RuntimeError("commerce_mesh: call use_mesh(app, mesh) in the app's lifespan")
    return mesh


async def current_user(request: Request) -> Principal:
    """The caller: `authorization: Bearer <access token>` verified locally, or a user's own API
    key (`x-api-key`, `authorization: ApiKey <key>` or `Bearer cmk_...`) identified through the
    mesh. 401 without valid credentials."""
    mesh = get_mesh(request)
    authorization = request.headers.get("authorization")
    api_key = request.headers.get("x-api-key")
    try:
        if authorization:
            scheme, _, credential = authorization.partition(" ")
            credential = credential.strip()
            if scheme.lower() == "apikey" or (
                scheme.lower() == "bearer" and credential.startswith("cmk_")
            ):
                return await mesh.api_keys.resolve(credential)
            if scheme.lower() == "bearer" and credential:
                return await mesh.tokens.verify(credential)
            raise AuthError(401, "expected `authorization: Bearer <access token>`")
        if api_key:
            return await mesh.api_keys.resolve(api_key)
        raise AuthError(401, "sign in: send `authorization: Bearer <access token>` or `x-api-key`")
    except AuthError as err:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        raise HTTPException(err.status, err.message, headers=headers) from None


def request_idempotency_key(request: Request, metric: str) -> str:
    """`<metric>:<Idempotency-Key or X-Request-Id>` (the id hashed when the key would pass
    quota-svc's 128 characters), so one request may charge several metrics; without either
    header a random key, and a retry is charged again."""
    request_id = request.headers.get("idempotency-key") or request.headers.get("x-request-id")
    if not request_id:
        return f"{metric}:{uuid.uuid4()}"
    key = f"{metric}:{request_id}"
    if len(key) > _MAX_KEY:
        key = f"{metric}:{hashlib.blake2b(request_id.encode(), digest_size=24).hexdigest()}"
    return key


@dataclass(frozen=True)
class _Charge:
    mesh: Mesh
    subject: str
    metric: str
    key: str
    decision: QuotaDecision

    def headers(self) -> dict[str, str]:
        d = self.decision
        return quota_headers(d.limit, d.remaining, d.resets_at, denied=False, now=_now())

    async def refund(self) -> dict[str, str]:
        """Gives the units back; the quota headers after it, or none if the refund failed
        (logged: it can be retried with the same key)."""
        try:
            # Shielded: a client that hangs up mid-refund must not leave the units taken.
            result = await asyncio.shield(
                self.mesh.quota.refund(self.subject, idempotency_key=self.key)
            )
        except grpc.aio.AioRpcError as err:
            log.error(
                "refunding %s for %s (key %s) failed: %s",
                self.metric,
                self.subject,
                self.key,
                err.code().name,
            )
            return {}
        return _state_headers(result.quota) if result.quota else {}


def _state_headers(state: QuotaState) -> dict[str, str]:
    return quota_headers(state.limit, state.remaining, state.period_end, denied=False, now=_now())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def _charge(
    request: Request,
    user: Principal,
    metric: str,
    amount: int,
    idempotency_key: IdempotencyKey | None,
) -> _Charge:
    mesh = get_mesh(request)
    key = idempotency_key(request) if idempotency_key else request_idempotency_key(request, metric)
    route = request.scope.get("route")
    # The route template, not the URL: bounded in size and free of user data.
    endpoint = getattr(route, "path", None) or request.url.path[:256]
    try:
        decision = await mesh.quota.consume(
            user.user_id,
            metric,
            idempotency_key=key,
            amount=amount,
            attributes={"endpoint": endpoint, "method": request.method},
        )
    except grpc.aio.AioRpcError as err:
        code = err.code()
        if code == grpc.StatusCode.ALREADY_EXISTS:
            raise HTTPException(
                409, "this request id was already used for another request"
            ) from None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise HTTPException(
                503, "quota is unavailable, retry later", {"Retry-After": "1"}
            ) from None
        # The backend's key or the metric is wrong: our fault, not the caller's.
        log.error(
            "charging %s for %s failed: %s %s", metric, user.user_id, code.name, err.details()
        )
        raise HTTPException(500, "quota check failed") from None
    if not decision.allowed:
        headers = quota_headers(
            decision.limit, decision.remaining, decision.resets_at, denied=True, now=_now()
        )
        raise HTTPException(429, f"quota exceeded for {metric}", headers=headers)
    if decision.replayed:
        raise HTTPException(
            409, "this request was already processed; send a new request id to run it again"
        )
    return _Charge(mesh, user.user_id, metric, key, decision)


_REQUEST = "commerce_mesh_request"
_RESPONSE = "commerce_mesh_response"
_USER = "commerce_mesh_user"


def requires_quota(
    metric: str, amount: int = 1, *, idempotency_key: IdempotencyKey | None = None
) -> Callable[[Endpoint], Endpoint]:
    """Charges `amount` of `metric` to the current user around an async FastAPI endpoint; see
    the module documentation. Put it below the route decorator:

        @app.post("/v1/analyses")
        @requires_quota("analysis")
        async def analyse(body: Body) -> Result: ...
    """
    if amount < 1:
        raise ValueError("amount must be at least 1")

    def decorate(endpoint: Endpoint) -> Endpoint:
        if not inspect.iscoroutinefunction(endpoint):
            raise TypeError("requires_quota decorates async endpoints")
        extra = _with_extra_parameters(endpoint)

        @functools.wraps(endpoint)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            request: Request = extra.take(kwargs, extra.request)
            response: Response = extra.take(kwargs, extra.response)
            user: Principal = kwargs.pop(_USER)
            charge = await _charge(request, user, metric, amount, idempotency_key)
            try:
                result = await endpoint(*args, **kwargs)
            except BaseException:
                await charge.refund()
                raise
            if isinstance(result, Response):
                # A returned response goes out as it is: the injected one's headers are not
                # merged into it, so the headers go on the returned one.
                if result.status_code >= 500:
                    result.headers.update(await charge.refund())
                else:
                    result.headers.update(charge.headers())
            else:
                response.headers.update(charge.headers())
            return result

        # FastAPI reads the parameters from the signature: the endpoint's own, plus what the
        # charge needs (the same `current_user` dependency is resolved once per request).
        wrapper.__signature__ = extra.signature  # type: ignore[attr-defined]
        # Its annotations are already resolved in the signature; no stale strings.
        wrapper.__annotations__ = {}
        return typing.cast(Endpoint, wrapper)

    return decorate


@dataclass(frozen=True)
class _Extra:
    """The endpoint's signature with what the charge needs, and where to find it."""

    signature: inspect.Signature
    request: str
    response: str
    added: frozenset[str]

    def take(self, kwargs: dict[str, Any], name: str) -> Any:
        # Ours are removed before the endpoint is called; the endpoint's own are shared.
        return kwargs.pop(name) if name in self.added else kwargs[name]


def _with_extra_parameters(endpoint: Callable[..., Any]) -> _Extra:
    signature = inspect.signature(endpoint)
    # Resolved here, in the endpoint's module: FastAPI would resolve string annotations (from
    # `from __future__ import annotations`) against this module's globals instead.
    hints = typing.get_type_hints(endpoint, include_extras=True)
    parameters = [
        p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
    ]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        raise TypeError("requires_quota cannot decorate an endpoint taking **kwargs")
    added: set[str] = set()

    def find_or_add(kind: type, name: str) -> str:
        # FastAPI hands the request (or response) to one parameter only: share the endpoint's.
        for p in parameters:
            if isinstance(p.annotation, type) and issubclass(p.annotation, kind):
                return p.name
        keyword = inspect.Parameter.KEYWORD_ONLY
        parameters.append(inspect.Parameter(name, keyword, annotation=kind))
        added.add(name)
        return name

    request = find_or_add(Request, _REQUEST)
    response = find_or_add(Response, _RESPONSE)
    # Always ours: an endpoint's own Principal may come from another dependency. FastAPI runs
    # `current_user` once per request however many parameters ask for it.
    parameters.append(
        inspect.Parameter(
            _USER,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Principal,
            default=Depends(current_user),
        )
    )
    added.add(_USER)
    return _Extra(
        signature=signature.replace(
            parameters=parameters,
            return_annotation=hints.get("return", signature.return_annotation),
        ),
        request=request,
        response=response,
        added=frozenset(added),
    )


def charge_quota(
    metric: str, amount: int = 1, *, idempotency_key: IdempotencyKey | None = None
) -> Callable[..., AsyncIterator[QuotaDecision]]:
    """`@requires_quota` as a dependency, giving the handler the decision:

        async def export(quota: QuotaDecision = Depends(charge_quota("export"))): ...

    It refunds when the handler raises; a returned 5xx response is not seen (use the
    decorator for handlers that return errors)."""
    if amount < 1:
        raise ValueError("amount must be at least 1")

    async def dependency(
        request: Request, response: Response, user: Principal = Depends(current_user)
    ) -> AsyncIterator[QuotaDecision]:
        charge = await _charge(request, user, metric, amount, idempotency_key)
        response.headers.update(charge.headers())
        try:
            yield charge.decision
        except BaseException:
            await charge.refund()
            raise

    return dependency
