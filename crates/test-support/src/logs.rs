//! Capturing a test's `tracing` output.

use std::{
    io::Write,
    sync::{Arc, Mutex, PoisonError},
};

use tracing::{subscriber::DefaultGuard, Level};

/// The `tracing` output of the current thread, written by a `fmt` subscriber installed as
/// the thread's default until the returned guard drops.
///
/// ```
/// use dreamnet_test_support::logs::Capture;
///
/// let (logs, _guard) = Capture::text(tracing::Level::WARN);
/// tracing::warn!(store = "redis", "store unreachable");
/// tracing::info!("not captured at WARN");
/// assert_eq!(logs.lines().len(), 1);
/// assert!(logs.output().contains("store unreachable"));
///
/// let (json, _guard) = Capture::json(tracing::Level::INFO);
/// tracing::info!(target: "deploy_keeper", key = "k1", "NEW");
/// assert_eq!(json.events()[0]["fields"]["key"], "k1");
/// ```
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Plain text lines (no colours) up to `level`.
    pub fn text(level: Level) -> (Self, DefaultGuard) {
        let capture = Self::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (capture, tracing::subscriber::set_default(subscriber))
    }

    /// One JSON object a line (tracing-subscriber's JSON format) up to `level`.
    pub fn json(level: Level) -> (Self, DefaultGuard) {
        let capture = Self::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(level)
            .with_writer(move || writer.clone())
            .finish();
        (capture, tracing::subscriber::set_default(subscriber))
    }

    /// Everything written so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }

    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        self.output().lines().map(str::to_owned).collect()
    }

    /// The events written so far by a [`Capture::json`] capture.
    ///
    /// # Panics
    /// On a line that is not JSON (a [`Capture::text`] capture).
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .map(|line| serde_json::from_str(line).expect("a JSON log line"))
            .collect()
    }
}
