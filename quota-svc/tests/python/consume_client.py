"""Calls quota-svc's Consume the way an existing Python backend does (the FastAPI example in
docs/integrating.md): grpc.aio, one channel, a backend API key naming the user in `subject`.

Stubs are generated from the project's protos into a temporary directory at run time
(grpcio-tools), so the script needs no generated code in the repository.

Usage: consume_client.py ADDR API_KEY SUBJECT METRIC
The subject must have a limit of exactly 2 on METRIC and nothing consumed yet.
"""

import asyncio
import importlib
import pathlib
import sys
import tempfile
import uuid

import grpc
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[3] / "proto"


def load_stubs(out_dir):
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    protos = [
        "commerce/quota/v1/quota.proto",
        "google/api/annotations.proto",
        "google/api/http.proto",
    ]
    status = protoc.main(
        [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with {status}")
    sys.path.insert(0, out_dir)
    messages = importlib.import_module("commerce.quota.v1.quota_pb2")
    services = importlib.import_module("commerce.quota.v1.quota_pb2_grpc")
    return messages, services


async def exercise(pb, rpc, addr, api_key, subject, metric):
    # One channel for the whole process, opened inside the event loop that uses it.
    async with grpc.aio.insecure_channel(addr) as channel:
        quota = rpc.QuotaServiceStub(channel)
        metadata = [("x-api-key", api_key)]

        async def consume(key, amount=1):
            request = pb.ConsumeRequest(
                metric=metric, subject=subject, amount=amount, idempotency_key=key
            )
            request.attributes.update({"endpoint": "/v1/analyze", "client": "python"})
            return await quota.Consume(request, metadata=metadata, timeout=10)

        first_key = f"req-{uuid.uuid4()}"
        first = await consume(first_key)
        assert first.allowed and not first.replayed, first
        assert (first.limit, first.used, first.remaining) == (2, 1, 1), first

        # Concurrent retries share the channel and replay the first answer.
        retries = await asyncio.gather(*(consume(first_key) for _ in range(5)))
        for retry in retries:
            assert retry.replayed and retry.usage_id == first.usage_id, retry

        second = await consume(f"req-{uuid.uuid4()}")
        assert second.allowed and second.remaining == 0, second
        denied = await consume(f"req-{uuid.uuid4()}")
        assert not denied.allowed and denied.HasField("resets_at"), denied

        # The backend's work failed: give the units back, once.
        refund = await quota.Refund(
            pb.RefundRequest(idempotency_key=first_key, subject=subject),
            metadata=metadata,
            timeout=10,
        )
        assert refund.refunded_amount == 1 and not refund.already_refunded, refund
        assert refund.quota.used == 1, refund

        try:
            await consume(f"req-{uuid.uuid4()}", amount=-1)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            assert err.details().startswith("amount"), err.details()
        else:
            raise AssertionError("a negative amount was accepted")

        try:
            await quota.Consume(pb.ConsumeRequest(metric=metric, idempotency_key="x"), timeout=10)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
        else:
            raise AssertionError("a call without credentials was accepted")


def main():
    addr, api_key, subject, metric = sys.argv[1:5]
    with tempfile.TemporaryDirectory() as out_dir:
        pb, rpc = load_stubs(out_dir)
        asyncio.run(exercise(pb, rpc, addr, api_key, subject, metric))
    print("python client: ok")


if __name__ == "__main__":
    main()
