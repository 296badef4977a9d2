"""The generated gRPC stubs (built from the repository's proto/ when the package is built)."""

try:
    from commerce_mesh._proto.commerce.auth.v1 import auth_pb2, auth_pb2_grpc
    from commerce_mesh._proto.commerce.quota.v1 import quota_pb2, quota_pb2_grpc
except ImportError as err:  # pragma: no cover - a broken install, not a code path
    raise ImportError(
        "commerce_mesh's gRPC stubs are missing: they are generated when the package is built "
        "(pip install clients/python, or pip install -e clients/python for development)"
    ) from err

__all__ = ["auth_pb2", "auth_pb2_grpc", "quota_pb2", "quota_pb2_grpc"]
