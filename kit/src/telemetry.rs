//! Logging (tracing, `RUST_LOG` filter with INFO default, JSON when `LOG_FORMAT=json`) and the
//! process-wide Prometheus recorder.

use std::{io::IsTerminal, sync::OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the tracing subscriber, writing to standard error so a command's standard output
/// carries only its result (e.g. `auth-svc service-key issue`, captured by scripts). Call once,
/// first thing in `main`.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    // A second call (tests start several servers in one process) keeps the first subscriber.
    let _already_set = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .with_target(false)
                    // Colour codes only for a person at a terminal: a pipe or a log file (`just
                    // up`'s prefixed output, a collector) gets plain text.
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ],
                )
                .map(PrometheusBuilder::build_recorder);
            match recorder {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    // Fails only when another recorder is installed; metrics then go there.
                    let _ = metrics::set_global_recorder(recorder);
                    handle
                }
                Err(err) => {
                    tracing::warn!(%err, "invalid histogram buckets; metrics use summaries");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}
