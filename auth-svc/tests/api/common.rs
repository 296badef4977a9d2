//! Shared test helpers: a server on a fresh database with a clock the test moves and a mailer
//! that keeps the mail, and signing up users through the API.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use auth_svc::{
    AuthArgs, MIGRATIONS, SPEC, State,
    error::Error,
    mailer::{Mail, Mailer},
};
use chrono::Utc;
use kit::{
    clock::OffsetClock,
    testing::{InProcess, TestDb, with_bearer},
};
use proto::auth::{
    LoginRequest, LoginResponse, RegisterRequest, VerifyEmailRequest,
    auth_service_client::AuthServiceClient,
};
use tonic::{Request, transport::Channel};

pub const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// Strong enough for the default strength floor.
pub const PASSWORD: &str = "correct horse battery staple 42";

#[derive(clap::Parser)]
struct TestArgs {
    #[command(flatten)]
    auth: AuthArgs,
}

/// auth-svc's settings for tests: cheap argon2 so tests stay quick, plus `extra` flags.
pub fn args(extra: &[&str]) -> AuthArgs {
    let mut argv = vec![
        "test",
        "--master-key",
        MASTER_KEY,
        "--argon2-memory-kib",
        "1024",
        "--argon2-iterations",
        "1",
    ];
    argv.extend_from_slice(extra);
    <TestArgs as clap::Parser>::try_parse_from(argv)
        .unwrap()
        .auth
}

/// auth-svc's production settings (full argon2 cost) with the test master key.
pub fn production_args() -> AuthArgs {
    <TestArgs as clap::Parser>::try_parse_from(["test", "--master-key", MASTER_KEY])
        .unwrap()
        .auth
}

/// Keeps every mail "sent".
#[derive(Debug, Default)]
pub struct RecordingMailer {
    sent: Mutex<Vec<Mail>>,
}

#[tonic::async_trait]
impl Mailer for RecordingMailer {
    async fn send(&self, mail: Mail) -> Result<(), Error> {
        self.sent.lock().unwrap().push(mail);
        Ok(())
    }
}

impl RecordingMailer {
    /// The `n`th (0-based) mail to `to` whose subject contains `subject`, waiting briefly for it
    /// (mail is sent in the background).
    pub async fn mail(&self, to: &str, subject: &str, n: usize) -> Mail {
        for _ in 0..100 {
            let found = self
                .sent
                .lock()
                .unwrap()
                .iter()
                .filter(|mail| mail.to == to && mail.subject.contains(subject))
                .nth(n)
                .cloned();
            if let Some(mail) = found {
                return mail;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no mail {n} to {to} about {subject:?}");
    }

    /// The token in the link of [`RecordingMailer::mail`].
    pub async fn token(&self, to: &str, subject: &str, n: usize) -> String {
        let mail = self.mail(to, subject, n).await;
        let (_, token) = mail.link.split_once("token=").unwrap();
        token.to_owned()
    }

    /// How many mails to `to` with `subject` in their subject were sent so far.
    pub fn count(&self, to: &str, subject: &str) -> usize {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|mail| mail.to == to && mail.subject.contains(subject))
            .count()
    }
}

/// The state of a server on `db`.
pub fn state(
    db: &TestDb,
    args: &AuthArgs,
    clock: Arc<OffsetClock>,
    mailer: Arc<RecordingMailer>,
) -> State {
    state_with_pool(db, args, clock, mailer, 4)
}

fn state_with_pool(
    db: &TestDb,
    args: &AuthArgs,
    clock: Arc<OffsetClock>,
    mailer: Arc<RecordingMailer>,
    pool_size: usize,
) -> State {
    let pool = kit::db::pool(db.url(), SPEC.name, pool_size, Duration::from_secs(1)).unwrap();
    State::new(pool, args, clock, Some(mailer)).unwrap()
}

/// An in-process auth-svc on a fresh database.
pub struct TestServer {
    pub db: TestDb,
    pub server: InProcess,
    pub clock: Arc<OffsetClock>,
    pub mailer: Arc<RecordingMailer>,
    pub state: State,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with_args(args(&[])).await
    }

    pub async fn with_args(args: AuthArgs) -> Self {
        Self::with_pool_size(args, 4).await
    }

    /// A server whose pool holds `pool_size` connections, waited for at most a second.
    pub async fn with_pool_size(args: AuthArgs, pool_size: usize) -> Self {
        let db = TestDb::new(&[(SPEC.name, MIGRATIONS)]).await;
        let clock = Arc::default();
        let mailer = Arc::new(RecordingMailer::default());
        let state = state_with_pool(
            &db,
            &args,
            Arc::clone(&clock),
            Arc::clone(&mailer),
            pool_size,
        );
        let routes_state = state.clone();
        let server = InProcess::start(
            SPEC,
            db.url(),
            MIGRATIONS,
            |_| {},
            move |_| Ok(auth_svc::routes(routes_state)),
        )
        .await;
        Self {
            db,
            server,
            clock,
            mailer,
            state,
        }
    }

    pub fn client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.server.channel.clone())
    }

    /// Registers `name` (email `<name>@example.com`) with [`PASSWORD`]; returns the user id.
    pub async fn register(&self, name: &str) -> String {
        self.client()
            .register(RegisterRequest {
                email: format!("{name}@example.com"),
                username: name.to_owned(),
                password: PASSWORD.to_owned(),
                display_name: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .user_id
    }

    pub async fn login(&self, name: &str, password: &str) -> Result<LoginResponse, tonic::Status> {
        self.client()
            .login(LoginRequest {
                username_or_email: name.to_owned(),
                password: password.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Registers and signs in `name`; returns the user id and the login.
    pub async fn signup(&self, name: &str) -> (String, LoginResponse) {
        let user_id = self.register(name).await;
        (user_id, self.login(name, PASSWORD).await.unwrap())
    }

    /// Confirms `name`'s email (`<name>@example.com`) with the link of its first verification mail.
    pub async fn verify_email(&self, name: &str) {
        let to = format!("{name}@example.com");
        let token = self.mailer.token(&to, "Confirm", 0).await;
        self.client()
            .verify_email(VerifyEmailRequest { token })
            .await
            .unwrap();
    }

    /// Registers `name`, confirms the email and signs in (what creating API keys needs); returns
    /// the user id and the login.
    pub async fn verified_signup(&self, name: &str) -> (String, LoginResponse) {
        let user_id = self.register(name).await;
        self.verify_email(name).await;
        (user_id, self.login(name, PASSWORD).await.unwrap())
    }

    /// A new API key (its secret) with `scopes`, created by the holder of `access_token` (a
    /// verified user signed in within the re-authentication window).
    pub async fn api_key(&self, access_token: &str, name: &str, scopes: &[&str]) -> String {
        self.client()
            .create_api_key(with_bearer(
                access_token,
                proto::auth::CreateApiKeyRequest {
                    name: name.into(),
                    scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
                    expires_at: None,
                    password: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .secret
    }

    /// A key of `user_id` with `scopes` created in the store directly, granted by `grantor`
    /// (what the RPC would refuse, or the operator's CLI does).
    pub async fn key_in_store(
        &self,
        user_id: &str,
        scopes: &[&str],
        grantor: auth_svc::domain::api_key::Grantor,
    ) -> String {
        let scopes: Vec<String> = scopes.iter().map(|scope| (*scope).to_owned()).collect();
        let request = auth_svc::domain::api_key::KeyRequest {
            name: "in store",
            scopes: &scopes,
            expires_at: None,
        };
        let mut conn = self.db.connect(SPEC.name).await;
        let (_, key) = auth_svc::service::api_keys::create(
            &mut conn,
            user_id.parse().unwrap(),
            &request,
            grantor,
            "",
            Utc::now(),
        )
        .await
        .unwrap();
        key
    }

    /// UpdateMe by the holder of `access_token` asking to change the email to `email`, with
    /// [`PASSWORD`] as the current password.
    pub async fn change_email(
        &self,
        access_token: &str,
        email: &str,
    ) -> Result<proto::auth::UpdateMeResponse, tonic::Status> {
        self.client()
            .update_me(with_bearer(
                access_token,
                proto::auth::UpdateMeRequest {
                    display_name: None,
                    email: Some(email.to_owned()),
                    current_password: PASSWORD.to_owned(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// An administrator created as `auth-svc admin create` does, signed in.
    pub async fn admin(&self, name: &str) -> (String, LoginResponse) {
        let mut conn = self.db.connect(SPEC.name).await;
        let user = auth_svc::service::admin::create_admin(
            &mut conn,
            &self.state.config,
            &format!("{name}@example.com"),
            name,
            None,
            PASSWORD,
            Utc::now(),
        )
        .await
        .unwrap();
        (
            user.id.to_string(),
            self.login(name, PASSWORD).await.unwrap(),
        )
    }
}

/// An UpdateUser request by the holder of `token` replacing `user_id`'s roles with `roles`.
pub fn set_roles_request(
    token: &str,
    user_id: &str,
    roles: &[&str],
) -> Request<proto::auth::UpdateUserRequest> {
    with_bearer(
        token,
        proto::auth::UpdateUserRequest {
            user_id: user_id.to_owned(),
            active: None,
            roles: Some(proto::auth::RoleList {
                values: roles.iter().map(|role| (*role).to_owned()).collect(),
            }),
        },
    )
}
