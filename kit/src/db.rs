//! The diesel-async connection pool and the embedded migrations runner.
//!
//! Every service works only in its own PostgreSQL schema: its connections carry
//! `search_path=<schema>` in the connection options, so unqualified table names (and diesel's
//! `__diesel_schema_migrations` bookkeeping table) live in that schema and never collide.
//!
//! They also carry `plan_cache_mode=force_custom_plan`: a statement stays prepared on its
//! connection (no parse and no extra round trip per call) but is planned with each call's values.
//! A generic plan, which PostgreSQL otherwise considers from the sixth call on, cannot see how
//! many rows a bound array holds (quota's batches bind one per request) and would plan a batch of
//! 500 like one of 1. The other services' statements are few and cheap to plan, and planning
//! each call keeps every service's plans predictable.

use std::time::Duration;

use diesel::sql_query;
use diesel::{
    migration::{Migration, MigrationSource},
    pg::Pg,
};
use diesel_async::{
    AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
        deadpool::{Object, Pool, PoolError},
    },
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

/// The connection pool type every service uses.
pub type PgPool = Pool<AsyncPgConnection>;
/// A connection checked out of [`PgPool`].
pub type PooledConn = Object<AsyncPgConnection>;

/// Errors of pool construction, migrations and probes.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    #[error("database connection failed: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database pool: {0}")]
    Pool(#[from] PoolError),
    #[error("building the database pool: {0}")]
    Build(String),
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error("the migrations task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// `url` with the session's `search_path` set to `schema`, so the service only sees its own
/// tables, and prepared statements planned per call (see the module documentation).
pub fn url_with_schema(url: &str, schema: &str) -> Result<String, DbError> {
    if schema.is_empty() || !schema.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(DbError::InvalidUrl(format!(
            "invalid schema name {schema:?}"
        )));
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(DbError::InvalidUrl(
            "expected a postgres:// or postgresql:// URL".to_owned(),
        ));
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(format!(
        "{url}{separator}options=-c%20search_path%3D{schema}%20-c%20plan_cache_mode%3Dforce_custom_plan"
    ))
}

/// A service's embedded migrations (`&MIGRATIONS`), shareable because the embedded set is static.
#[derive(Clone, Copy)]
pub struct Migrations(pub &'static EmbeddedMigrations);

impl MigrationSource<Pg> for Migrations {
    fn migrations(&self) -> diesel::migration::Result<Vec<Box<dyn Migration<Pg>>>> {
        MigrationSource::<Pg>::migrations(self.0)
    }
}

impl std::fmt::Debug for Migrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Migrations")
    }
}

/// Builds the service's pool on `url`, confined to `schema`. Connections open lazily.
pub fn pool(
    url: &str,
    schema: &str,
    max_size: usize,
    acquire_timeout: Duration,
) -> Result<PgPool, DbError> {
    // Fast: a check-out only drops connections whose socket closed or whose transaction broke.
    // The default sends `SELECT 1` on every check-out, a round trip of its own before each
    // query (two of a lone consume's); a connection that died unnoticed fails its first query
    // instead, which the caller answers UNAVAILABLE and the pool then discards.
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        url_with_schema(url, schema)?,
        config,
    );
    Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(acquire_timeout))
        .create_timeout(Some(acquire_timeout))
        .recycle_timeout(Some(acquire_timeout))
        // Timeouts need a runtime to measure them.
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|err| DbError::Build(err.to_string()))
}

/// Creates `schema` if missing and applies `migrations` that have not run yet. A PostgreSQL
/// advisory lock serialises replicas that start together.
pub async fn migrate(
    url: &str,
    schema: &str,
    migrations: Migrations,
) -> Result<Vec<String>, DbError> {
    let mut conn = AsyncPgConnection::establish(&url_with_schema(url, schema)?).await?;
    let lock_key = format!("commerce-mesh migrations {schema}");
    sql_query("SELECT pg_advisory_lock(hashtext($1))")
        .bind::<diesel::sql_types::Text, _>(&lock_key)
        .execute(&mut conn)
        .await?;
    sql_query(format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut conn)
        .await?;
    // The harness drives diesel's sync migration machinery, so it runs on a blocking thread.
    let (applied, conn) = tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(conn);
        let applied = harness
            .run_pending_migrations(migrations)
            .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|err| DbError::Migration(err.to_string()));
        (applied, harness.into_inner())
    })
    .await?;
    let mut conn = conn;
    sql_query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind::<diesel::sql_types::Text, _>(&lock_key)
        .execute(&mut conn)
        .await?;
    applied
}

/// Checks that the database answers: a pooled connection runs `SELECT 1`.
pub async fn ping(pool: &PgPool) -> Result<(), DbError> {
    let mut conn = pool.get().await?;
    sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_goes_into_the_connection_options() {
        assert_eq!(
            url_with_schema("postgres://u@h:5432/db", "auth")
                .ok()
                .as_deref(),
            Some(
                "postgres://u@h:5432/db?options=-c%20search_path%3Dauth\
                 %20-c%20plan_cache_mode%3Dforce_custom_plan"
            )
        );
        assert_eq!(
            url_with_schema("postgresql://u@h/db?sslmode=disable", "quota")
                .ok()
                .as_deref(),
            Some(
                "postgresql://u@h/db?sslmode=disable&options=-c%20search_path%3Dquota\
                 %20-c%20plan_cache_mode%3Dforce_custom_plan"
            )
        );
    }

    #[test]
    fn bad_schemas_and_urls_are_refused() {
        assert!(url_with_schema("postgres://h/db", "auth; DROP").is_err());
        assert!(url_with_schema("postgres://h/db", "").is_err());
        assert!(url_with_schema("mysql://h/db", "auth").is_err());
    }
}
