//! quota-svc against real PostgreSQL: in-process servers over a test token issuer, the real
//! binaries (two replicas, grpcurl), a Python client, and the schema checks.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod binaries;
mod consume;
mod harness;
mod metering;
mod read_consistency;
mod reads;
mod refunds;
mod schema;

use kit::testing::TestDb;
