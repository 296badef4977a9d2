"""Who is calling a backend: the mesh's access tokens, verified locally against auth-svc's JWKS,
and users' own API keys, identified through the mesh.

Tokens follow what every service of the mesh does (kit/src/caller.rs): EdDSA only (so `alg:
none` and HS256-signed-with-the-public-key tokens are refused), a `kid` the JWKS lists, `iss`,
`aud`, `exp`, `iat` and `sub` required, 5 s of clock leeway, and a token living longer than the
access-token lifetime or issued in the future refused. The JWKS is kept for `refresh_interval`
and fetched again when a token names a `kid` it does not list (a rotation), at most once per
`min_fetch_interval` however many made-up `kid`s arrive.

API keys: the internal `VerifyApiKey` is for the mesh's own services (the `service` scope), which
a backend must not hold. The one public RPC that answers an API key with its owner is quota-svc's
`ListQuotas` (its `subject` is the caller when none is named), so a key is identified by calling
it with the key itself. That needs the key to hold `quota:read`, and tells the owner only: no
public RPC returns a key's scopes or its owner's roles, so an API-key principal has no roles and
only the scope the call proved (`quota:read`). Answers are cached by the key's SHA-256 for
`ttl` (30 s, like the mesh's own key cache: the longest a revoked key keeps working here).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import httpx
import jwt

from ._stubs import auth_pb2, auth_pb2_grpc, quota_pb2, quota_pb2_grpc

USER_SCOPES = frozenset({"quota:consume", "quota:read", "billing:read", "billing:write"})
API_KEY_PREFIX = "cmk_"
LEEWAY_SECS = 5

Jwk = Mapping[str, str]
# What a failed JWKS fetch raises: gRPC or HTTP errors, or a document without `keys`.
FETCH_ERRORS = (grpc.aio.AioRpcError, httpx.HTTPError, ValueError, KeyError)
JwksSource = Callable[[], Awaitable[Sequence[Jwk]]]


class AuthError(Exception):
    """Authentication failed: `status` is the HTTP status to answer (401 no or bad credentials,
    403 a valid key that cannot be identified, 503 the mesh did not answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. For a token, `roles` are the token's and `scopes` those the
    roles grant (as in the mesh). For an API key, see the module documentation: no roles, and
    only the scope the identification proved."""

    user_id: str
    roles: frozenset[str]
    scopes: frozenset[str]
    credential: Literal["token", "api_key"]
    session_id: str | None = None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def scopes_of_roles(roles: Sequence[str]) -> frozenset[str]:
    """The mesh's rule: every user scope, and `admin` with the admin role. `service` is the scope
    of a service account's key, never of a session."""
    return USER_SCOPES | ({"admin"} if "admin" in roles else set())


def grpc_jwks(channel: grpc.aio.Channel, *, timeout: float = 2.0) -> JwksSource:
    """The JWKS from auth-svc's `GetJwks` (public, no credentials)."""
    stub = auth_pb2_grpc.AuthServiceStub(channel)  # type: ignore[no-untyped-call]

    async def fetch() -> Sequence[Jwk]:
        response = await stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=timeout)
        return [
            {"kty": k.kty, "crv": k.crv, "x": k.x, "kid": k.kid, "alg": k.alg}
            for k in response.keys
        ]

    return fetch


def http_jwks(url: str, *, timeout: float = 2.0) -> JwksSource:
    """The JWKS document at `url`, e.g. the edge's `http://host:9000/.well-known/jwks.json`, for
    backends that reach the mesh only through the edge."""

    async def fetch() -> Sequence[Jwk]:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(url)
            response.raise_for_status()
            keys: Sequence[Jwk] = response.json()["keys"]
            return keys

    return fetch


class TokenVerifier:
    """Verifies access tokens locally; see the module documentation."""

    def __init__(
        self,
        source: JwksSource,
        *,
        issuer: str = "commerce-mesh",
        audience: str = "commerce-mesh",
        access_token_ttl: float = 900,
        refresh_interval: float = 60,
        min_fetch_interval: float = 1,
    ) -> None:
        self._source = source
        self._issuer = issuer
        self._audience = audience
        self._access_token_ttl = access_token_ttl
        self._refresh_interval = max(refresh_interval, min_fetch_interval)
        self._min_fetch_interval = min_fetch_interval
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        # One fetch at a time; the others wait for it and use what it found.
        self._fetching = asyncio.Lock()
        self.fetches = 0

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _invalid_token() from None
        kid = header.get("kid")
        if header.get("alg") != "EdDSA" or not isinstance(kid, str):
            raise _invalid_token()
        key = await self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                issuer=self._issuer,
                audience=self._audience,
                leeway=LEEWAY_SECS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "the access token has expired") from None
        except jwt.InvalidTokenError:
            raise _invalid_token() from None
        self._check_times(claims)
        roles = claims.get("roles", [])
        sub = claims["sub"]
        if not isinstance(sub, str) or not isinstance(roles, list):
            raise _invalid_token()
        roles = [role for role in roles if isinstance(role, str)]
        sid = claims.get("sid")
        return Principal(
            user_id=sub,
            roles=frozenset(roles),
            scopes=scopes_of_roles(roles),
            credential="token",
            session_id=sid if isinstance(sid, str) else None,
        )

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        # What a leaked signing key could mint is bounded like a stolen token (as in the mesh).
        iat, exp = claims["iat"], claims["exp"]
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            raise _invalid_token()
        if iat > time.time() + LEEWAY_SECS:
            raise AuthError(401, "the access token is issued in the future")
        if exp - iat > self._access_token_ttl:
            raise AuthError(401, "the access token lives longer than the access-token lifetime")

    async def _key(self, kid: str) -> Any:
        key = self._keys.get(kid)
        fresh = self._fetched_at is not None and (
            time.monotonic() - self._fetched_at < self._refresh_interval
        )
        if key is not None and fresh:
            return key
        if key is not None:
            # Stale: one request refreshes, the others go on with the keys they have; a failed
            # refresh keeps them too.
            if not self._fetching.locked():
                async with self._fetching:
                    with contextlib.suppress(*FETCH_ERRORS):
                        await self._fetch()
        else:
            # Unknown: a key published since the last fetch (a rotation), or a made-up kid.
            async with self._fetching:
                try:
                    await self._fetch()
                except FETCH_ERRORS:
                    raise AuthError(503, "access tokens cannot be verified now") from None
        key = self._keys.get(kid)
        if key is None:
            raise _invalid_token()
        return key

    async def _fetch(self) -> None:
        now = time.monotonic()
        if self._last_attempt is not None and now - self._last_attempt < self._min_fetch_interval:
            return
        self._last_attempt = now
        self.fetches += 1
        keys: dict[str, Any] = {}
        for jwk in await self._source():
            if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
                continue
            try:
                keys[jwk["kid"]] = jwt.PyJWK(dict(jwk), algorithm="EdDSA").key
            except (jwt.PyJWKError, KeyError):
                continue
        # Replaced as a whole: a key auth-svc stopped publishing stops verifying here too.
        self._keys = keys
        self._fetched_at = time.monotonic()


class ApiKeyResolver:
    """Identifies a user's own API key through the mesh; see the module documentation."""

    def __init__(
        self,
        quota_channel: grpc.aio.Channel,
        *,
        ttl: float = 30,
        max_entries: int = 10_000,
        timeout: float = 2.0,
    ) -> None:
        # The generated gRPC stubs carry no annotations.
        self._stub = quota_pb2_grpc.QuotaServiceStub(quota_channel)  # type: ignore[no-untyped-call]
        self._ttl = ttl
        self._max_entries = max_entries
        self._timeout = timeout
        # SHA-256 of the key -> (monotonic expiry, principal); the key itself is never kept.
        self._cache: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self.lookups = 0

    async def resolve(self, key: str) -> Principal:
        if not key.startswith(API_KEY_PREFIX) or len(key) > 128:
            raise AuthError(401, "invalid API key")
        digest = hashlib.sha256(key.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        self.lookups += 1
        try:
            response = await self._stub.ListQuotas(
                quota_pb2.ListQuotasRequest(page_size=1),
                metadata=(("x-api-key", key),),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise AuthError(401, "invalid API key") from None
            if err.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise AuthError(
                    403, "this API key needs the `quota:read` scope to be used with this service"
                ) from None
            raise AuthError(503, "API keys cannot be verified now") from None
        principal = Principal(
            user_id=response.subject,
            roles=frozenset(),
            scopes=frozenset({"quota:read"}),
            credential="api_key",
        )
        self._cache[digest] = (time.monotonic() + self._ttl, principal)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return principal


def _invalid_token() -> AuthError:
    return AuthError(401, "invalid access token")
