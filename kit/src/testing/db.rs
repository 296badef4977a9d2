//! A fresh database per test, cloned from a template that holds every migrated schema the test
//! asks for. The template's name carries a hash of the migration files, so it is built once per
//! version of the migrations and shared by parallel tests and test processes; each test's copy is
//! dropped when the [`TestDb`] is. A copy's name carries its host and process, so the copies of a
//! process that was killed before its drops ran are removed by the next test process on the
//! host.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use diesel::{QueryableByName, sql_query, sql_types::Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::db;

/// The server tests use: `TEST_DATABASE_URL` (any database on it; `postgres` by default).
fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn database_url(name: &str) -> String {
    let server = server_url();
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// A database of its own for one test.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

impl TestDb {
    /// A new database holding each `(schema, migrations)` migrated. Panics with a clear message
    /// when PostgreSQL is not reachable: tests need the real database.
    pub async fn new(schemas: &[(&'static str, db::Migrations)]) -> Self {
        let template = Self::template(schemas).await;
        let mut admin = admin_connection().await;
        let host = host_tag();
        if !SWEPT.swap(true, Ordering::Relaxed) {
            sweep_dead_processes(&mut admin, &host, process_is_alive).await;
        }
        let random = uuid::Uuid::new_v4().simple().to_string();
        let name = format!(
            "{}{}_{}",
            process_prefix(&host),
            std::process::id(),
            &random[..16]
        );
        sql_query(format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|err| panic!("creating test database {name}: {err}"));
        Self {
            url: database_url(&name),
            name,
        }
    }

    /// The database URL (no schema option; services add their own).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The same database reached through `addr` (e.g. a [`super::TcpProxy`]).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        format!("postgres://postgres@{addr}/{}", self.name)
    }

    /// A connection confined to `schema`, for tests that inspect tables directly.
    pub async fn connect(&self, schema: &str) -> AsyncPgConnection {
        let url = db::url_with_schema(&self.url, schema).unwrap_or_else(|err| panic!("{err}"));
        AsyncPgConnection::establish(&url)
            .await
            .unwrap_or_else(|err| panic!("connecting to {}: {err}", self.name))
    }

    async fn template(schemas: &[(&'static str, db::Migrations)]) -> String {
        let mut hasher = DefaultHasher::new();
        for (schema, _) in schemas {
            schema.hash(&mut hasher);
            hash_dir(&migrations_dir(schema), &mut hasher);
        }
        let template = format!("commerce_tmpl_{:016x}", hasher.finish());
        let mut admin = admin_connection().await;
        // One builder at a time across processes; the others wait, then find it built.
        sql_query("SELECT pg_advisory_lock(hashtext('commerce-mesh test template'))")
            .execute(&mut admin)
            .await
            .unwrap_or_else(|err| panic!("locking the template: {err}"));
        let existing: Count =
            sql_query("SELECT count(*) AS count FROM pg_database WHERE datname = $1")
                .bind::<Text, _>(&template)
                .get_result(&mut admin)
                .await
                .unwrap_or_else(|err| panic!("looking up the template: {err}"));
        if existing.count == 0 {
            let building = format!("{template}_building");
            sql_query(format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|err| panic!("dropping a half-built template: {err}"));
            sql_query(format!("CREATE DATABASE {building}"))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|err| panic!("creating the template: {err}"));
            for (schema, migrations) in schemas {
                db::migrate(&database_url(&building), schema, *migrations)
                    .await
                    .unwrap_or_else(|err| panic!("migrating {schema} in the template: {err}"));
            }
            sql_query(format!("ALTER DATABASE {building} RENAME TO {template}"))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|err| panic!("publishing the template: {err}"));
        }
        sql_query("SELECT pg_advisory_unlock(hashtext('commerce-mesh test template'))")
            .execute(&mut admin)
            .await
            .unwrap_or_else(|err| panic!("unlocking the template: {err}"));
        template
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on; a thread with its own
        // runtime removes the database and is joined so nothing outlives the test.
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    let mut admin = admin_connection().await;
                    let dropped = sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                    if let Err(err) = dropped {
                        eprintln!("dropping test database {name}: {err}");
                    }
                });
            }
        });
        let _ = dropper.join();
    }
}

/// Whether this process has swept the copies of dead ones (once is enough).
static SWEPT: AtomicBool = AtomicBool::new(false);

/// The start of every copy's name made on the host tagged `host`: the process id and a random part
/// follow. Another host's copies never match, so a shared server's are left alone.
fn process_prefix(host: &str) -> String {
    format!("commerce_test_{host}_")
}

/// A short tag of this host: its name's hash, the same for every test process built alike.
fn host_tag() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut hasher = DefaultHasher::new();
    name.trim().hash(&mut hasher);
    format!("{:08x}", hasher.finish() & 0xffff_ffff)
}

/// Whether a process with this id runs on this host. Where that cannot be told (no `/proc`), every
/// process counts as alive, so nothing is removed.
fn process_is_alive(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Drops this host's test copies whose process is gone (killed before its [`TestDb`]s dropped).
async fn sweep_dead_processes(
    admin: &mut AsyncPgConnection,
    host: &str,
    is_alive: impl Fn(u32) -> bool,
) {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        datname: String,
    }
    let prefix = process_prefix(host);
    let Ok(names) = sql_query("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
        .bind::<Text, _>(&prefix)
        .load::<Name>(admin)
        .await
    else {
        return;
    };
    for Name { datname } in names {
        let pid = datname
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !is_alive(pid)) {
            // Best effort: a failure leaves the copy for the next sweep.
            let _ = sql_query(format!(
                "DROP DATABASE IF EXISTS \"{datname}\" WITH (FORCE)"
            ))
            .execute(admin)
            .await;
        }
    }
}

async fn admin_connection() -> AsyncPgConnection {
    let url = server_url();
    AsyncPgConnection::establish(&url).await.unwrap_or_else(|err| {
        panic!("tests need PostgreSQL at {url} (set TEST_DATABASE_URL; `just test` starts it): {err}")
    })
}

fn migrations_dir(schema: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("migrations")
        .join(schema)
}

fn hash_dir(dir: &Path, hasher: &mut DefaultHasher) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .collect();
    paths.sort();
    for path in paths {
        path.file_name().hash(hasher);
        if path.is_dir() {
            hash_dir(&path, hasher);
        } else if let Ok(content) = std::fs::read(&path) {
            content.hash(hasher);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exists(admin: &mut AsyncPgConnection, name: &str) -> bool {
        let found: Count =
            sql_query("SELECT count(*) AS count FROM pg_database WHERE datname = $1")
                .bind::<Text, _>(name)
                .get_result(admin)
                .await
                .unwrap_or_else(|err| panic!("looking up a database: {err}"));
        found.count == 1
    }

    #[tokio::test]
    async fn the_sweep_drops_only_copies_of_dead_processes_on_this_host() {
        let mut admin = admin_connection().await;
        // A tag of its own, so concurrent test processes' real copies are never touched.
        let host = format!("{:08x}", random_host_tag());
        let dead = format!("{}{}_0000000000000001", process_prefix(&host), 4_000_001);
        let alive = format!("{}{}_0000000000000002", process_prefix(&host), 4_000_002);
        let elsewhere = format!(
            "{}{}_0000000000000003",
            process_prefix("ffffffff"),
            4_000_001
        );
        for name in [&dead, &alive, &elsewhere] {
            sql_query(format!("CREATE DATABASE \"{name}\""))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|err| panic!("creating a database: {err}"));
        }
        sweep_dead_processes(&mut admin, &host, |pid| pid == 4_000_002).await;
        let left = (
            exists(&mut admin, &dead).await,
            exists(&mut admin, &alive).await,
            exists(&mut admin, &elsewhere).await,
        );
        for name in [&alive, &elsewhere] {
            sql_query(format!("DROP DATABASE IF EXISTS \"{name}\""))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|err| panic!("dropping a database: {err}"));
        }
        assert_eq!(left, (false, true, true), "dead, alive, another host");
    }

    /// A random 32-bit tag (never `ffffffff`, the other host of the test).
    fn random_host_tag() -> u32 {
        let random = uuid::Uuid::new_v4().as_u128();
        u32::try_from(random & 0x7fff_ffff).unwrap_or(0)
    }
}
