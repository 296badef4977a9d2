"""QuotaClient against the real quota-svc, with the backend's key; and the example app
in-process (httpx's ASGI transport) when quota-svc cannot be reached."""

from __future__ import annotations

import sys
import uuid

import grpc
import httpx
import pytest

from commerce_mesh import Mesh, MeshConfig, Principal, QuotaClient, quota_headers
from commerce_mesh.fastapi import current_user, use_mesh

from .conftest import EXAMPLES, MeshUnderTest, User, free_port


async def test_consume_refund_and_check(mesh: MeshUnderTest, user: User) -> None:
    async with QuotaClient.connect(mesh.quota_addr, mesh.backend_key) as quota:
        key = f"job-{uuid.uuid4()}"
        first = await quota.consume(
            user.user_id, "analysis", idempotency_key=key, attributes={"file": "a.pdf"}
        )
        assert first.allowed and not first.replayed and first.usage_id
        assert (first.limit, first.used, first.remaining) == (3, 1, 2)
        assert first.resets_at is not None

        again = await quota.consume(user.user_id, "analysis", idempotency_key=key)
        assert again.replayed and again.usage_id == first.usage_id
        assert (await quota.check(user.user_id, "analysis")).used == 1

        refund = await quota.refund(user.user_id, idempotency_key=key)
        assert (refund.refunded_amount, refund.already_refunded) == (1, False)
        assert refund.quota is not None and refund.quota.used == 0
        twice = await quota.refund(user.user_id, usage_id=first.usage_id)
        assert twice.already_refunded

        denied = await quota.consume(user.user_id, "analysis", idempotency_key="big", amount=4)
        assert not denied.allowed and denied.usage_id == ""
        assert (denied.limit, denied.remaining) == (3, 3)
        assert denied.resets_at == first.resets_at

        # No entitlement: denied, with no period to wait for (hence no Retry-After).
        unknown = await quota.consume(user.user_id, "no-such-metric", idempotency_key="u")
        assert not unknown.allowed and unknown.resets_at is None
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await quota.check(user.user_id, "no-such-metric")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ValueError):
            await quota.refund(user.user_id)


async def test_an_unlimited_metric_has_no_limit_to_show(mesh: MeshUnderTest, user: User) -> None:
    async with QuotaClient.connect(mesh.quota_addr, mesh.backend_key) as quota:
        decision = await quota.consume(user.user_id, "export", idempotency_key="e1", amount=1000)
        assert decision.allowed
        assert (decision.limit, decision.remaining, decision.used) == (None, None, 1000)
        state = await quota.check(user.user_id, "export")
        assert (state.limit, state.remaining, state.used) == (None, None, 1000)
        assert state.period_end == decision.resets_at
        now = state.period_start
        assert now is not None
        headers = quota_headers(None, None, decision.resets_at, denied=False, now=now)
        assert set(headers) == {"X-Quota-Reset"}


async def test_a_key_other_than_the_backends_cannot_name_the_user(
    mesh: MeshUnderTest, user: User
) -> None:
    async with QuotaClient.connect(mesh.quota_addr, "cmk_" + "0" * 43) as quota:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await quota.consume(user.user_id, "analysis", idempotency_key="k")
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_unreachable_quota_service_is_503_and_the_handler_does_not_run(
    mesh: MeshUnderTest, user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("EXAMPLE_FAILURES", "1")
    monkeypatch.delitem(sys.modules, "analysis_app", raising=False)
    import analysis_app

    config = MeshConfig(
        api_key=mesh.backend_key,
        quota_addr=f"127.0.0.1:{free_port()}",  # nothing listens there
        auth_addr=mesh.auth_addr,
        timeout=1,
    )
    async with Mesh.connect(config) as down:
        use_mesh(analysis_app.app, down)
        transport = httpx.ASGITransport(app=analysis_app.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.post(
                "/v1/analyses",
                json={"text": "x"},
                # A handler that ran would raise: a 500 instead of the 503.
                headers={"authorization": f"Bearer {user.token}", "x-simulate-failure": "raise"},
            )
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert mesh.quota_state(user.user_id, "analysis").used == 0


async def test_an_apps_own_sign_in_replaces_current_user_for_the_charge(
    mesh: MeshUnderTest, user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "analysis_app", raising=False)
    import analysis_app

    async def own_sign_in() -> Principal:
        return Principal(user.user_id, frozenset(), frozenset(), credential="token")

    app = analysis_app.app
    monkeypatch.setitem(app.dependency_overrides, current_user, own_sign_in)
    config = MeshConfig(
        api_key=mesh.backend_key, quota_addr=mesh.quota_addr, auth_addr=mesh.auth_addr
    )
    async with Mesh.connect(config) as connected:
        use_mesh(app, connected)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            # No credentials at all: the override decides who pays.
            response = await client.post("/v1/analyses", json={"text": "a b c"})
    assert response.status_code == 200, response.text
    assert response.headers["x-quota-remaining"] == "2"
    assert mesh.quota_state(user.user_id, "analysis").used == 1
