"""The mesh as a backend sees it: settings, and the clients opened once per process."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc

from .auth import ApiKeyResolver, TokenVerifier, grpc_jwks, http_jwks
from .quota import QuotaClient


@dataclass(frozen=True)
class MeshConfig:
    """Where the mesh is and how the backend calls it.

    Environment (`from_env`): `QUOTA_ADDR` (127.0.0.1:9003), `AUTH_ADDR` (127.0.0.1:9001, for the
    JWKS), `QUOTA_API_KEY` (required: the backend's key, `auth-svc service-key issue --service
    NAME --scopes quota:consume,quota:read`), `JWKS_URL` (optional: fetch the JWKS over HTTP,
    e.g. from the edge, instead of auth-svc's gRPC), `AUTH_ISSUER` and `AUTH_AUDIENCE`
    (commerce-mesh), `ACCESS_TOKEN_TTL_SECS` (900, as auth-svc's), `JWKS_REFRESH_SECS` (60),
    `API_KEY_CACHE_TTL_SECS` (30), `MESH_TIMEOUT_SECS` (2).
    """

    api_key: str = field(repr=False)
    quota_addr: str = "127.0.0.1:9003"
    auth_addr: str = "127.0.0.1:9001"
    jwks_url: str | None = None
    issuer: str = "commerce-mesh"
    audience: str = "commerce-mesh"
    access_token_ttl: float = 900
    jwks_refresh: float = 60
    api_key_cache_ttl: float = 30
    timeout: float = 2.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> MeshConfig:
        api_key = environ.get("QUOTA_API_KEY")
        if not api_key:
            raise RuntimeError("QUOTA_API_KEY is not set: the backend's key for quota-svc")
        return cls(
            api_key=api_key,
            quota_addr=environ.get("QUOTA_ADDR", cls.quota_addr),
            auth_addr=environ.get("AUTH_ADDR", cls.auth_addr),
            jwks_url=environ.get("JWKS_URL") or None,
            issuer=environ.get("AUTH_ISSUER", cls.issuer),
            audience=environ.get("AUTH_AUDIENCE", cls.audience),
            access_token_ttl=float(environ.get("ACCESS_TOKEN_TTL_SECS", cls.access_token_ttl)),
            jwks_refresh=float(environ.get("JWKS_REFRESH_SECS", cls.jwks_refresh)),
            api_key_cache_ttl=float(environ.get("API_KEY_CACHE_TTL_SECS", cls.api_key_cache_ttl)),
            timeout=float(environ.get("MESH_TIMEOUT_SECS", cls.timeout)),
        )


@dataclass(frozen=True)
class Mesh:
    """The clients a backend shares between all its requests."""

    quota: QuotaClient
    tokens: TokenVerifier
    api_keys: ApiKeyResolver

    @classmethod
    @asynccontextmanager
    async def connect(cls, config: MeshConfig) -> AsyncIterator[Mesh]:
        """Opens one channel to quota-svc and one to auth-svc (unless the JWKS comes over HTTP),
        closed on exit. Call it inside the event loop that serves requests (a FastAPI lifespan):
        grpc.aio channels belong to the loop they were made in."""
        async with grpc.aio.insecure_channel(config.quota_addr) as quota_channel:
            if config.jwks_url:
                yield cls._build(config, quota_channel, None)
            else:
                async with grpc.aio.insecure_channel(config.auth_addr) as auth_channel:
                    yield cls._build(config, quota_channel, auth_channel)

    @classmethod
    def _build(
        cls,
        config: MeshConfig,
        quota_channel: grpc.aio.Channel,
        auth_channel: grpc.aio.Channel | None,
    ) -> Mesh:
        source = (
            grpc_jwks(auth_channel, timeout=config.timeout)
            if auth_channel is not None
            else http_jwks(config.jwks_url or "", timeout=config.timeout)
        )
        return cls(
            quota=QuotaClient(quota_channel, config.api_key, timeout=config.timeout),
            tokens=TokenVerifier(
                source,
                issuer=config.issuer,
                audience=config.audience,
                access_token_ttl=config.access_token_ttl,
                refresh_interval=config.jwks_refresh,
            ),
            api_keys=ApiKeyResolver(
                quota_channel, ttl=config.api_key_cache_ttl, timeout=config.timeout
            ),
        )
