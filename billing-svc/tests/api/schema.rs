//! `src/store/schema.rs` matches the migrated database, and the migrations revert and re-apply.

use billing_svc::{MIGRATIONS, SPEC};

#[tokio::test]
async fn schema_rs_matches_the_migrated_database() {
    kit::testing::assert_schema_rs_matches(
        SPEC.name,
        MIGRATIONS,
        include_str!("../../src/store/schema.rs"),
    )
    .await;
}

#[tokio::test]
async fn migrations_revert_and_reapply() {
    kit::testing::assert_migrations_revert(SPEC.name, MIGRATIONS).await;
}
