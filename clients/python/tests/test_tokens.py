"""TokenVerifier with keys of its own (no mesh): the claim checks a mesh-signed token cannot
exercise (expiry, audience, lifetime), and the JWKS cache."""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Mapping, Sequence

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from commerce_mesh import AuthError, TokenVerifier, quota_headers
from commerce_mesh.auth import Jwk

USER = "0194c8f0-0000-7000-8000-000000000001"


class Issuer:
    """Signs tokens like auth-svc and serves its JWKS, counting the fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, Ed25519PrivateKey] = {}
        self.fetches = 0
        self.add("k1")

    def add(self, kid: str) -> None:
        self.keys[kid] = Ed25519PrivateKey.generate()

    async def jwks(self) -> Sequence[Jwk]:
        self.fetches += 1
        return [
            {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid, "x": _x(key)}
            for kid, key in self.keys.items()
        ]

    def token(self, kid: str = "k1", overrides: Mapping[str, object] | None = None) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "sub": USER,
            "sid": "0194c8f0-0000-7000-8000-000000000002",
            "roles": [],
            "iss": "commerce-mesh",
            "aud": "commerce-mesh",
            "iat": now,
            "exp": now + 900,
            "jti": "t",
        }
        claims.update(overrides or {})
        claims = {name: value for name, value in claims.items() if value is not None}
        return jwt.encode(claims, self.keys[kid], algorithm="EdDSA", headers={"kid": kid})


def _x(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def verifier(issuer: Issuer) -> TokenVerifier:
    return TokenVerifier(issuer.jwks, min_fetch_interval=0.2)


async def test_a_valid_token_gives_the_user_and_the_scopes_of_the_roles(
    issuer: Issuer, verifier: TokenVerifier
) -> None:
    user = await verifier.verify(issuer.token())
    assert (user.user_id, user.credential, user.roles) == (USER, "token", frozenset())
    assert user.scopes == {"quota:consume", "quota:read", "billing:read", "billing:write"}
    admin = await verifier.verify(issuer.token(overrides={"roles": ["admin", "service"]}))
    # A session never holds `service`, whatever its roles (as in the mesh).
    assert "admin" in admin.scopes and "service" not in admin.scopes


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": int(time.time()) - 60}, "the access token has expired"),
        ({"aud": "another-mesh"}, "invalid access token"),
        ({"iss": "someone-else"}, "invalid access token"),
        ({"sub": None}, "invalid access token"),
        ({"iat": None}, "invalid access token"),
        ({"iat": int(time.time()) + 60, "exp": int(time.time()) + 900}, None),
        ({"exp": int(time.time()) + 3600}, "lives longer than the access-token lifetime"),
    ],
)
async def test_tokens_the_mesh_would_refuse_are_refused(
    issuer: Issuer, verifier: TokenVerifier, claims: dict[str, object], message: str | None
) -> None:
    with pytest.raises(AuthError) as refused:
        await verifier.verify(issuer.token(overrides=claims))
    assert refused.value.status == 401
    assert message is None or message in refused.value.message


async def test_a_new_kid_is_fetched_once_and_made_up_kids_cannot_flood_auth(
    issuer: Issuer, verifier: TokenVerifier
) -> None:
    await verifier.verify(issuer.token())
    assert issuer.fetches == 1
    await verifier.verify(issuer.token())
    assert issuer.fetches == 1  # cached

    time.sleep(0.25)
    issuer.add("k2")  # a rotation
    assert (await verifier.verify(issuer.token("k2"))).user_id == USER
    assert issuer.fetches == 2

    forger = Ed25519PrivateKey.generate()
    for kid in ("x1", "x2", "x3"):
        made_up = jwt.encode({"sub": USER}, forger, algorithm="EdDSA", headers={"kid": kid})
        with pytest.raises(AuthError):
            await verifier.verify(made_up)
    # At most one fetch per min_fetch_interval (the k2 fetch was just now).
    assert issuer.fetches == 2


async def test_a_key_the_jwks_stops_listing_stops_verifying(issuer: Issuer) -> None:
    verifier = TokenVerifier(issuer.jwks, refresh_interval=0.2, min_fetch_interval=0.2)
    token = issuer.token()
    await verifier.verify(token)
    del issuer.keys["k1"]
    issuer.add("k2")
    time.sleep(0.25)
    # The stale JWKS is refreshed on this call, and k1 is gone from it.
    with pytest.raises(AuthError):
        await verifier.verify(token)
    assert issuer.fetches == 2
    assert (await verifier.verify(issuer.token("k2"))).user_id == USER


async def test_an_unreachable_jwks_is_503_for_unknown_kids(issuer: Issuer) -> None:
    async def failing() -> Sequence[Jwk]:
        raise KeyError("keys")

    with pytest.raises(AuthError) as refused:
        await TokenVerifier(failing).verify(issuer.token())
    assert refused.value.status == 503


def test_quota_headers_follow_the_gateways_format() -> None:
    now = dt.datetime(2026, 12, 3, 12, 0, 0, 500_000, tzinfo=dt.timezone.utc)
    reset = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    assert quota_headers(10, 4, reset, denied=False, now=now) == {
        "X-Quota-Limit": "10",
        "X-Quota-Remaining": "4",
        "X-Quota-Reset": str(int(reset.timestamp())),
    }
    denied = quota_headers(10, 0, reset, denied=True, now=now)
    assert denied["Retry-After"] == str(int((reset - now).total_seconds()) + 1)
    # Unlimited: no limit or remaining to show.
    assert quota_headers(None, None, reset, denied=False, now=now) == {
        "X-Quota-Reset": str(int(reset.timestamp()))
    }
    # Past the reset already (a clock a little ahead): still wait at least a second.
    assert quota_headers(1, 0, now, denied=True, now=now)["Retry-After"] == "1"
