"""The example FastAPI app under uvicorn against the real mesh: what its users and its operators
see (HTTP answers, quota headers, and quota-svc's own count)."""

from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from commerce_mesh._stubs import auth_pb2

from .conftest import FREE_TIER, MeshUnderTest, User, sign_up, verify_email

DOCUMENT = {"text": "Quotas are counted. Refunds are given."}


def bearer(user: User) -> dict[str, str]:
    return {"authorization": f"Bearer {user.token}"}


def analyse(app: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    return app.post("/v1/analyses", json=DOCUMENT, headers=headers)


def test_a_signed_in_user_is_identified_by_the_token_alone(app: httpx.Client, user: User) -> None:
    response = app.get("/v1/me", headers=bearer(user))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "userId": user.user_id,
        "roles": [],
        "scopes": ["billing:read", "billing:write", "quota:consume", "quota:read"],
        "credential": "token",
    }


def test_the_metered_endpoint_answers_429_with_the_quota_headers_once_the_limit_is_used(
    app: httpx.Client, mesh: MeshUnderTest, user: User
) -> None:
    limit = 3
    assert FREE_TIER["analysis"] == limit
    state = mesh.quota_state(user.user_id, "analysis")
    reset = str(state.period_end.seconds)
    for remaining in range(limit - 1, -1, -1):
        response = analyse(app, bearer(user))
        assert response.status_code == 200, response.text
        assert response.json() == {"words": 6, "sentences": 2}
        assert response.headers["x-quota-limit"] == str(limit)
        assert response.headers["x-quota-remaining"] == str(remaining)
        assert response.headers["x-quota-reset"] == reset
        assert "retry-after" not in response.headers

    denied = analyse(app, bearer(user))
    assert denied.status_code == 429, denied.text
    assert denied.json() == {"detail": "quota exceeded for analysis"}
    assert denied.headers["x-quota-limit"] == str(limit)
    assert denied.headers["x-quota-remaining"] == "0"
    assert denied.headers["x-quota-reset"] == reset
    retry_after = int(denied.headers["retry-after"])
    assert 1 <= retry_after <= int(reset) - int(time.time()) + 1

    state = mesh.quota_state(user.user_id, "analysis")
    assert (state.used, state.limit, state.remaining) == (limit, limit, 0)


@pytest.mark.parametrize("failure", ["raise", "502"])
def test_work_that_fails_is_refunded(
    app: httpx.Client, mesh: MeshUnderTest, user: User, failure: str
) -> None:
    assert analyse(app, bearer(user)).status_code == 200
    failed = analyse(app, {**bearer(user), "x-simulate-failure": failure})
    assert failed.status_code == (500 if failure == "raise" else 502), failed.text
    if failure == "502":
        # The headers of a refunded failure show the quota after the refund.
        assert failed.headers["x-quota-remaining"] == "2"
    assert mesh.quota_state(user.user_id, "analysis").used == 1


def test_the_dependency_form_charges_and_refunds_when_the_handler_raises(
    app: httpx.Client, mesh: MeshUnderTest, user: User
) -> None:
    first = app.post("/v1/reports", json=DOCUMENT, headers=bearer(user))
    assert first.status_code == 200, first.text
    assert FREE_TIER["report"] == 2
    assert first.json()["reportsLeft"] == 1
    assert first.headers["x-quota-remaining"] == "1"

    failed = app.post(
        "/v1/reports", json=DOCUMENT, headers={**bearer(user), "x-simulate-failure": "raise"}
    )
    assert failed.status_code == 500
    assert mesh.quota_state(user.user_id, "report").used == 1


def test_the_same_request_id_is_charged_once(
    app: httpx.Client, mesh: MeshUnderTest, user: User
) -> None:
    headers = {**bearer(user), "x-request-id": f"req-{uuid.uuid4()}"}
    first = analyse(app, headers)
    assert first.status_code == 200, first.text
    again = analyse(app, headers)
    # Charged once, and the work is not done again for free.
    assert again.status_code == 409, again.text
    assert mesh.quota_state(user.user_id, "analysis").used == 1
    # A new request id is a new request.
    assert analyse(app, {**bearer(user), "x-request-id": f"req-{uuid.uuid4()}"}).status_code == 200
    assert mesh.quota_state(user.user_id, "analysis").used == 2


def jwks(mesh: MeshUnderTest) -> list[auth_pb2.Jwk]:
    return list(mesh.auth_stub().GetJwks(auth_pb2.GetJwksRequest(), timeout=10).keys)


def claims_of(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


def test_forged_expired_and_tampered_tokens_are_refused(
    app: httpx.Client, mesh: MeshUnderTest, user: User
) -> None:
    kid = jwt.get_unverified_header(user.token)["kid"]
    assert kid in {key.kid for key in jwks(mesh)}
    claims = claims_of(user.token)
    forger = Ed25519PrivateKey.generate()
    now = int(time.time())
    public_x = next(key.x for key in jwks(mesh) if key.kid == kid)
    head, body, signature = user.token.split(".")
    admin_claims = {**claims, "roles": ["admin"]}
    tampered_body = base64.urlsafe_b64encode(json.dumps(admin_claims).encode()).rstrip(b"=")

    forged = {
        # A key of our own, claiming the mesh's kid.
        "another key": jwt.encode(claims, forger, algorithm="EdDSA", headers={"kid": kid}),
        # Signed by a key the JWKS does not list: refetched, still unknown.
        "unknown kid": jwt.encode(claims, forger, algorithm="EdDSA", headers={"kid": "nope"}),
        # Expired. Only auth-svc can sign for its kid and it signs fresh tokens, so this one fails
        # on its signature too; test_tokens.py checks expiry with a key of its own.
        "expired": jwt.encode(
            {**claims, "iat": now - 1000, "exp": now - 100},
            forger,
            algorithm="EdDSA",
            headers={"kid": kid},
        ),
        "alg none": jwt.encode(claims, "", algorithm="none", headers={"kid": kid}),
        # HS256 keyed with the public key, the classic algorithm confusion.
        "hs256": jwt.encode(
            claims, base64.urlsafe_b64decode(public_x + "=="), algorithm="HS256",
            headers={"kid": kid},
        ),
        # The real signature over other claims.
        "tampered": f"{head}.{tampered_body.decode()}.{signature}",
        "garbage": "not-a-jwt",
    }  # fmt: skip
    for name, token in forged.items():
        for path in ("/v1/me", "/v1/analyses"):
            response = app.request(
                "GET" if path == "/v1/me" else "POST",
                path,
                json=None if path == "/v1/me" else DOCUMENT,
                headers={"authorization": f"Bearer {token}"},
            )
            assert response.status_code == 401, (name, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    assert app.get("/v1/me").status_code == 401
    # The genuine token still works, and nothing was charged for the refused calls.
    assert app.get("/v1/me", headers=bearer(user)).status_code == 200
    assert mesh.quota_state(user.user_id, "analysis").used == 0


@pytest.mark.late
def test_a_token_is_refused_once_it_has_expired(app: httpx.Client, mesh: MeshUnderTest) -> None:
    token = mesh.expiring_token
    claims = claims_of(token)
    assert isinstance(claims["exp"], int) and isinstance(claims["iat"], int)
    assert claims["exp"] - claims["iat"] == 60
    # The mesh allows 5 s of clock skew; past that the token is refused.
    time.sleep(max(claims["exp"] + 6 - time.time(), 0))
    expired = app.get("/v1/me", headers={"authorization": f"Bearer {token}"})
    assert expired.status_code == 401
    assert expired.json() == {"detail": "the access token has expired"}


def create_api_key(mesh: MeshUnderTest, user: User, scopes: list[str]) -> str:
    created = mesh.auth_stub().CreateApiKey(
        auth_pb2.CreateApiKeyRequest(name=f"key-{uuid.uuid4().hex[:6]}", scopes=scopes),
        metadata=[("authorization", f"Bearer {user.token}")],
        timeout=10,
    )
    return str(created.secret)


def test_a_users_own_api_key_identifies_the_user_through_the_mesh(
    app: httpx.Client, mesh: MeshUnderTest, user: User
) -> None:
    verify_email(mesh, user)
    key = create_api_key(mesh, user, ["quota:read", "quota:consume"])
    for headers in ({"x-api-key": key}, {"authorization": f"ApiKey {key}"}):
        response = app.get("/v1/me", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "userId": user.user_id,
            "roles": [],
            "scopes": ["quota:read"],
            "credential": "api_key",
        }
    # The metered endpoint charges the key's owner.
    assert analyse(app, {"x-api-key": key}).status_code == 200
    assert mesh.quota_state(user.user_id, "analysis").used == 1

    # A key that cannot read quotas cannot be identified; a made-up one is refused.
    billing_only = create_api_key(mesh, user, ["billing:read"])
    assert app.get("/v1/me", headers={"x-api-key": billing_only}).status_code == 403
    assert app.get("/v1/me", headers={"x-api-key": "cmk_" + "x" * 40}).status_code == 401
    assert app.get("/v1/me", headers={"x-api-key": "not-a-key"}).status_code == 401


def test_a_token_of_a_rotated_signing_key_verifies_after_a_refetch(
    app: httpx.Client, mesh: MeshUnderTest, user: User
) -> None:
    # The app knows the current key (and keeps its JWKS for 600 s).
    assert app.get("/v1/me", headers=bearer(user)).status_code == 200
    old_kid = jwt.get_unverified_header(user.token)["kid"]
    new_kid = mesh.auth_cli("keys", "rotate")
    assert new_kid and new_kid != old_kid

    # auth-svc signs with a new key 10 s after publishing it and reloads its keys every 30 s.
    auth = mesh.auth_stub()
    deadline = time.monotonic() + 60
    token = user.token
    while jwt.get_unverified_header(token)["kid"] != new_kid:
        assert time.monotonic() < deadline, "auth-svc did not sign with the rotated key in 60 s"
        time.sleep(1)
        token = auth.Login(
            auth_pb2.LoginRequest(username_or_email=user.username, password=user.password),
            timeout=30,
        ).access_token

    response = app.get("/v1/me", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.json()["userId"] == user.user_id
    # Tokens of the old key keep verifying until they expire.
    assert app.get("/v1/me", headers=bearer(user)).status_code == 200


def test_a_second_user_has_a_quota_of_their_own(app: httpx.Client, mesh: MeshUnderTest) -> None:
    first, second = sign_up(mesh), sign_up(mesh)
    for _ in range(3):
        assert analyse(app, bearer(first)).status_code == 200
    assert analyse(app, bearer(first)).status_code == 429
    assert analyse(app, bearer(second)).status_code == 200
