//! Proofs about a service's migrations: the committed `schema.rs` is exactly what
//! `diesel print-schema` makes of the migrated database, and every migration reverts and re-applies
//! to the same schema.

use std::process::Command;

use diesel::{QueryableByName, sql_query, sql_types::Text};
use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::MigrationHarness;

use super::TestDb;
use crate::db::{self, Migrations};

/// Fails unless `committed` (the service's `schema.rs`, e.g. via `include_str!`) equals what
/// `diesel print-schema --schema <schema>` prints for the migrated database. Needs the diesel CLI
/// (`just test` installs it).
pub async fn assert_schema_rs_matches(
    schema: &'static str,
    migrations: Migrations,
    committed: &str,
) {
    let db = TestDb::new(&[(schema, migrations)]).await;
    let output = Command::new("diesel")
        .args([
            "print-schema",
            "--database-url",
            db.url(),
            "--schema",
            schema,
        ])
        .output()
        .unwrap_or_else(|err| panic!("the diesel CLI is needed (`just test` installs it): {err}"));
    assert!(
        output.status.success(),
        "diesel print-schema failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = String::from_utf8_lossy(&output.stdout);
    assert!(
        generated.trim_end() == committed.trim_end(),
        "schema.rs is stale; regenerate it with\n  diesel print-schema --database-url <migrated db> --schema {schema}\n\
         generated:\n{generated}"
    );
}

#[derive(QueryableByName, PartialEq, Eq, Debug)]
struct ColumnRow {
    #[diesel(sql_type = Text)]
    line: String,
}

/// Every table, column, type, default and constraint of `schema`, one line each.
async fn dump(conn: &mut AsyncPgConnection, schema: &str) -> Vec<String> {
    let rows: Vec<ColumnRow> = sql_query(
        "SELECT table_name || '.' || column_name || ' ' || data_type || ' null=' || is_nullable \
                || ' default=' || coalesce(column_default, '') AS line \
           FROM information_schema.columns WHERE table_schema = $1 \
          UNION ALL \
         SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) \
           FROM pg_constraint WHERE connamespace = $1::regnamespace \
          UNION ALL \
         SELECT tablename || ' ' || indexdef FROM pg_indexes WHERE schemaname = $1 \
          ORDER BY 1",
    )
    .bind::<Text, _>(schema)
    .load(conn)
    .await
    .unwrap_or_else(|err| panic!("dumping schema {schema}: {err}"));
    rows.into_iter()
        .map(|row| row.line)
        .filter(|line| !line.contains("__diesel_schema_migrations"))
        .collect()
}

/// Fails unless reverting every migration empties `schema` and re-applying them rebuilds exactly
/// the same tables, columns, constraints and indexes (so every `down.sql` is proven).
pub async fn assert_migrations_revert(schema: &'static str, migrations: Migrations) {
    let db = TestDb::new(&[(schema, migrations)]).await;
    let url = db::url_with_schema(db.url(), schema).unwrap_or_else(|err| panic!("{err}"));
    let mut conn = AsyncPgConnection::establish(&url)
        .await
        .unwrap_or_else(|err| panic!("connecting: {err}"));
    let before = dump(&mut conn, schema).await;
    assert!(
        !before.is_empty(),
        "schema {schema} has no tables to revert"
    );

    let conn = tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(conn);
        harness
            .revert_all_migrations(migrations)
            .unwrap_or_else(|err| panic!("reverting the migrations of {schema}: {err}"));
        harness.into_inner()
    })
    .await
    .unwrap_or_else(|err| panic!("revert task: {err}"));
    let mut conn = conn;
    let reverted = dump(&mut conn, schema).await;
    assert!(
        reverted.is_empty(),
        "down.sql left behind:\n{}",
        reverted.join("\n")
    );

    let conn = tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(conn);
        harness
            .run_pending_migrations(migrations)
            .unwrap_or_else(|err| panic!("re-applying the migrations of {schema}: {err}"));
        harness.into_inner()
    })
    .await
    .unwrap_or_else(|err| panic!("migrate task: {err}"));
    let mut conn = conn;
    let after = dump(&mut conn, schema).await;
    assert_eq!(
        before, after,
        "re-applied migrations differ from the first run"
    );
}
