//! The one-shot commands of the binary besides serving: `admin create`, `keys rotate` (and the
//! signing-key check before serving) and `service-key issue`. Each parses its arguments, calls
//! one `service` function and prints the result.

pub mod admin;
pub mod keys;
pub mod service_key;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use kit::ServerArgs;

use crate::{MIGRATIONS, SPEC};

/// Applies pending migrations, then connects to the `auth` schema (for one-shot commands).
pub async fn connect(server: &ServerArgs) -> anyhow::Result<AsyncPgConnection> {
    kit::db::migrate(server.database_url(), SPEC.name, MIGRATIONS).await?;
    let url = kit::db::url_with_schema(server.database_url(), SPEC.name)?;
    Ok(AsyncPgConnection::establish(&url).await?)
}
