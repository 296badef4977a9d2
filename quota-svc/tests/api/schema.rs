//! `src/store/schema.rs` matches the migrated database, and the migrations revert and re-apply.
//! (kit's `assert_schema_rs_matches` is not used: it would list the monthly partitions.)

use std::process::Command;

use quota_svc::{MIGRATIONS, SPEC};

use super::TestDb;

/// `diesel print-schema` of the quota schema; the monthly partitions are left out because they
/// change with the calendar (queries go through the parent table).
fn print_schema(db: &TestDb) -> String {
    let url = kit::db::url_with_schema(db.url(), SPEC.name).unwrap();
    let output = Command::new("diesel")
        .args([
            "print-schema",
            "--database-url",
            &url,
            "--schema",
            SPEC.name,
        ])
        .args(["--except-tables", "^usage_events_[0-9]{4}_[0-9]{2}$"])
        .output()
        .expect("the diesel CLI is needed");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn schema_rs_matches_the_migrated_database() {
    let db = TestDb::new(&[(SPEC.name, MIGRATIONS)]).await;
    let committed = include_str!("../../src/store/schema.rs");
    assert_eq!(
        print_schema(&db),
        committed,
        "regenerate src/store/schema.rs"
    );
}

#[tokio::test]
async fn migrations_revert_and_reapply() {
    kit::testing::assert_migrations_revert(SPEC.name, MIGRATIONS).await;
}
