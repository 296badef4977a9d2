"""commerce-mesh for Python backends.

- `QuotaClient`: Consume / Refund / CheckQuota on quota-svc over one grpc.aio channel.
- `Mesh`, `MeshConfig`: the clients a backend opens once (quota, JWKS, API-key identity).
- `commerce_mesh.fastapi`: `current_user`, `@requires_quota(...)`, `charge_quota(...)`.

The gRPC stubs of every contract are in `commerce_mesh._proto` (generated from proto/ when the
package is built).
"""

from .auth import ApiKeyResolver, AuthError, Principal, TokenVerifier, grpc_jwks, http_jwks
from .mesh import Mesh, MeshConfig
from .quota import QuotaClient, QuotaDecision, QuotaState, RefundResult, quota_headers

__all__ = [
    "ApiKeyResolver",
    "AuthError",
    "Mesh",
    "MeshConfig",
    "Principal",
    "QuotaClient",
    "QuotaDecision",
    "QuotaState",
    "RefundResult",
    "TokenVerifier",
    "grpc_jwks",
    "http_jwks",
    "quota_headers",
]
