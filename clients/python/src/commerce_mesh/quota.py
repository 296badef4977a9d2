"""`QuotaClient`: quota-svc over one grpc.aio channel with the backend's API key.

The backend's key (a service account's key with `quota:consume,quota:read`, never `service`)
names the user in `subject`. gRPC errors are left to the caller as `grpc.aio.AioRpcError`: what
they mean depends on where the call is made (the FastAPI layer maps them to HTTP statuses).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from google.protobuf import timestamp_pb2

from ._stubs import quota_pb2, quota_pb2_grpc

JsonValue = str | int | float | bool | None


def _time(stamp: timestamp_pb2.Timestamp, present: bool) -> dt.datetime | None:
    return stamp.ToDatetime(tzinfo=dt.timezone.utc) if present else None


@dataclass(frozen=True)
class QuotaState:
    """A subject's quota for one metric in the current period. `limit` and `remaining` are None
    when the metric is unlimited (the proto sends 0 then, to be ignored)."""

    metric: str
    limit: int | None
    used: int
    remaining: int | None
    period_start: dt.datetime | None
    period_end: dt.datetime | None

    @classmethod
    def from_proto(cls, state: quota_pb2.QuotaState) -> QuotaState:
        return cls(
            metric=state.metric,
            limit=None if state.unlimited else state.limit,
            used=state.used,
            remaining=None if state.unlimited else state.remaining,
            period_start=_time(state.period_start, state.HasField("period_start")),
            period_end=_time(state.period_end, state.HasField("period_end")),
        )


@dataclass(frozen=True)
class QuotaDecision:
    """The answer to a Consume. `allowed = False` is an answer (over the limit, or no
    entitlement for the metric), not an error. A `replayed` decision repeats the answer first
    given to the same idempotency key, with the values recorded then, and charged nothing."""

    allowed: bool
    usage_id: str
    limit: int | None
    used: int
    remaining: int | None
    resets_at: dt.datetime | None
    replayed: bool

    @classmethod
    def from_proto(cls, response: quota_pb2.ConsumeResponse) -> QuotaDecision:
        return cls(
            allowed=response.allowed,
            usage_id=response.usage_id,
            limit=None if response.unlimited else response.limit,
            used=response.used,
            remaining=None if response.unlimited else response.remaining,
            resets_at=_time(response.resets_at, response.HasField("resets_at")),
            replayed=response.replayed,
        )


@dataclass(frozen=True)
class RefundResult:
    """What a Refund gave back; `already_refunded` when an earlier refund did (nothing changed)."""

    usage_id: str
    refunded_amount: int
    already_refunded: bool
    quota: QuotaState | None

    @classmethod
    def from_proto(cls, response: quota_pb2.RefundResponse) -> RefundResult:
        return cls(
            usage_id=response.usage_id,
            refunded_amount=response.refunded_amount,
            already_refunded=response.already_refunded,
            quota=QuotaState.from_proto(response.quota) if response.HasField("quota") else None,
        )


def quota_headers(
    limit: int | None,
    remaining: int | None,
    resets_at: dt.datetime | None,
    *,
    denied: bool,
    now: dt.datetime,
) -> dict[str, str]:
    """The quota headers, the same as the edge gateway's: `X-Quota-Limit` and `X-Quota-Remaining`
    (left out for an unlimited metric, where the proto's 0s mean nothing), `X-Quota-Reset` (the
    period end, Unix epoch seconds) and, on a denial, `Retry-After` (seconds until the reset, at
    least 1). A metric without an entitlement has no period, hence no reset and no Retry-After:
    waiting would not help."""
    headers: dict[str, str] = {}
    if limit is not None and remaining is not None:
        headers["X-Quota-Limit"] = str(limit)
        headers["X-Quota-Remaining"] = str(remaining)
    if resets_at is not None:
        headers["X-Quota-Reset"] = str(math.floor(resets_at.timestamp()))
        if denied:
            wait = math.ceil((resets_at - now).total_seconds())
            headers["Retry-After"] = str(max(wait, 1))
    return headers


class QuotaClient:
    """Consume, refund and check quota for the backend's users over one shared channel (HTTP/2
    multiplexes concurrent calls, so one channel serves every request of the process)."""

    def __init__(self, channel: grpc.aio.Channel, api_key: str, *, timeout: float = 2.0) -> None:
        # The generated gRPC stubs carry no annotations.
        self._stub = quota_pb2_grpc.QuotaServiceStub(channel)  # type: ignore[no-untyped-call]
        # Held only as call metadata; never logged or put in a repr.
        self._metadata = (("x-api-key", api_key),)
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"QuotaClient(timeout={self._timeout})"

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, target: str, api_key: str, *, timeout: float = 2.0
    ) -> AsyncIterator[QuotaClient]:
        """A client with its own channel to `target` (host:port), closed on exit. The channel
        belongs to the running event loop, so open it inside the loop that uses it (a FastAPI
        lifespan)."""
        async with grpc.aio.insecure_channel(target) as channel:
            yield cls(channel, api_key, timeout=timeout)

    async def consume(
        self,
        subject: str,
        metric: str,
        *,
        idempotency_key: str,
        amount: int = 1,
        attributes: Mapping[str, JsonValue] | None = None,
    ) -> QuotaDecision:
        """Checks and takes `amount` units of `metric` for `subject` in one step. Repeating the
        call with the same `idempotency_key` replays the first answer and charges nothing."""
        request = quota_pb2.ConsumeRequest(
            metric=metric, subject=subject, amount=amount, idempotency_key=idempotency_key
        )
        if attributes:
            request.attributes.update(dict(attributes))
        response = await self._stub.Consume(request, metadata=self._metadata, timeout=self._timeout)
        return QuotaDecision.from_proto(response)

    async def refund(
        self, subject: str, *, idempotency_key: str | None = None, usage_id: str | None = None
    ) -> RefundResult:
        """Gives back a consumption this backend made, found by its idempotency key or usage
        id (exactly one). Idempotent: a second refund reports `already_refunded`."""
        if (idempotency_key is None) == (usage_id is None):
            raise ValueError("refund needs exactly one of idempotency_key and usage_id")
        request = quota_pb2.RefundRequest(
            subject=subject, idempotency_key=idempotency_key or "", usage_id=usage_id or ""
        )
        response = await self._stub.Refund(request, metadata=self._metadata, timeout=self._timeout)
        return RefundResult.from_proto(response)

    async def check(self, subject: str, metric: str) -> QuotaState:
        """The subject's current state for `metric`, without consuming (NOT_FOUND when the
        metric has no entitlement for the subject)."""
        response = await self._stub.CheckQuota(
            quota_pb2.CheckQuotaRequest(metric=metric, subject=subject),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return QuotaState.from_proto(response.quota)
