//! billing-svc: plans, subscriptions and payments through Alipay and WeChat Pay.
//!
//! The billing issue builds its RPCs; until then the contract is served and every RPC answers
//! `UNIMPLEMENTED` (tonic's generated default methods), so clients and the edge proxy can be wired.

use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use kit::{
    ServiceSpec,
    db::{Migrations, PgPool},
};
use proto::billing::billing_service_server::{BillingService, BillingServiceServer};
use tonic::service::Routes;

/// How billing-svc presents itself to the mesh.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "billing",
    grpc_service: "commerce.billing.v1.BillingService",
    port: 9002,
    admin_port: 9102,
};

/// The `billing` schema's migrations, embedded in the binary.
pub const MIGRATIONS: Migrations = Migrations(&EMBEDDED);
const EMBEDDED: EmbeddedMigrations = embed_migrations!("../migrations/billing");

/// The billing gRPC service.
#[derive(Clone)]
pub struct Billing {
    _pool: PgPool,
}

#[tonic::async_trait]
impl BillingService for Billing {}

/// The tonic routes billing-svc serves.
pub fn routes(pool: PgPool) -> anyhow::Result<Routes> {
    Ok(Routes::new(BillingServiceServer::new(Billing {
        _pool: pool,
    })))
}
