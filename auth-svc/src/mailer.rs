//! Outgoing mail (verification and password reset links). With `SMTP_URL` mail goes through SMTP
//! (lettre, rustls); in development (`--log-mail`, which `just up` sets) it is kept in the
//! `outbox` table with the secret link redacted, and the link is logged at INFO so `just up` users
//! can follow it. With neither, auth-svc does not start.

use std::sync::Arc;

use chrono::Utc;
use kit::db::PgPool;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor, message::Mailbox};

use crate::{config::AccountsArgs, error::Error, store};

/// A message carrying one secret link.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    /// The text before the link.
    pub intro: String,
    /// The link; contains a bearer token, so it is never stored or logged outside development.
    pub link: String,
}

impl Mail {
    fn body(&self, link: &str) -> String {
        format!("{}\n\n{link}\n", self.intro)
    }
}

#[async_trait::async_trait]
pub trait Mailer: Send + Sync + std::fmt::Debug + 'static {
    async fn send(&self, mail: Mail) -> Result<(), Error>;
}

/// The mailer `args` configure.
pub fn from_args(args: &AccountsArgs, pool: PgPool) -> anyhow::Result<Arc<dyn Mailer>> {
    Ok(match &args.smtp_url {
        Some(url) => Arc::new(Smtp {
            transport: AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                .map_err(|err| anyhow::anyhow!("SMTP_URL: {err}"))?
                .build(),
            from: args
                .mail_from
                .parse()
                .map_err(|err| anyhow::anyhow!("MAIL_FROM: {err}"))?,
        }),
        None if args.log_mail => Arc::new(Outbox { pool }),
        None => anyhow::bail!(
            "SMTP_URL is not set, so verification and password reset mail cannot be sent: set it, \
             or in development set AUTH_LOG_MAIL=true to write each mail's link to the log"
        ),
    })
}

struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The transport holds the SMTP credentials.
        f.debug_struct("Smtp")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Mailer for Smtp {
    async fn send(&self, mail: Mail) -> Result<(), Error> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|err| Error::Internal(format!("mail recipient: {err}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .body(mail.body(&mail.link))
            .map_err(|err| Error::Internal(format!("building mail: {err}")))?;
        self.transport
            .send(message)
            .await
            .map_err(|err| Error::Internal(format!("sending mail: {err}")))?;
        Ok(())
    }
}

struct Outbox {
    pool: PgPool,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Mailer for Outbox {
    async fn send(&self, mail: Mail) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let body = mail.body("(link not stored: see the auth-svc log)");
        store::outbox::insert(&mut conn, &mail.to, &mail.subject, &body, Utc::now()).await?;
        tracing::info!(
            to = %mail.to,
            subject = %mail.subject,
            link = %mail.link,
            "no SMTP_URL: mail kept in the outbox; its link is only in this log"
        );
        Ok(())
    }
}
