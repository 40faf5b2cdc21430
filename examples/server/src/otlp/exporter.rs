//! The background task that batches spans and posts them to the collector.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

/// Spans waiting for the exporter; past this, new spans are dropped (the collector is slow
/// or gone, and a request must never wait for it).
const QUEUE: usize = 8192;
/// At most this many spans per export request.
const MAX_BATCH: usize = 512;
/// A batch is sent at the latest this long after its first span.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// One export request may take this long.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The handle requests use to hand their span over (cheap to clone).
#[derive(Clone)]
pub(crate) struct Exporter {
    queue: mpsc::Sender<Span>,
    dropped: Arc<AtomicU64>,
}

impl Exporter {
    /// Starts the export task posting to `<endpoint>/v1/traces` (`endpoint` is the base URL,
    /// as `OTEL_EXPORTER_OTLP_ENDPOINT` gives it). Sending on the returned [`Flush`] makes
    /// the task send what is queued and end.
    pub(crate) fn spawn(endpoint: &str) -> Result<(Self, Flush), String> {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("--otlp-endpoint {endpoint:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "--otlp-endpoint {endpoint:?}: only http:// is supported (run a collector beside the server for TLS)"
            ));
        }
        let (queue, receiver) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(uri, receiver, stopped));
        tracing::info!(%url, "OTLP trace export on");
        Ok((Self { queue, dropped }, Flush { stop, task }))
    }

    /// Queues one finished span; drops it when the queue is full.
    pub(crate) fn export(&self, span: Span) {
        if self.queue.try_send(span).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "OTLP export queue full: spans dropped");
            }
        }
    }
}

/// Ends the export task after it sent every queued span.
pub(crate) struct Flush {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Flush {
    /// Sends what is queued (waiting at most `grace`) and stops the task.
    pub(crate) async fn flush(self, grace: Duration) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

async fn run(
    uri: http::Uri,
    mut receiver: mpsc::Receiver<Span>,
    mut stopped: oneshot::Receiver<()>,
) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let resource = Resource {
        attributes: vec![
            string("service.name", "dreamnet-server"),
            string("service.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Resource::default()
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut stopping = false;
    loop {
        let first = if stopping {
            receiver.try_recv().ok()
        } else {
            tokio::select! {
                next = receiver.recv() => next,
                _ = &mut stopped => {
                    stopping = true;
                    receiver.try_recv().ok()
                }
            }
        };
        let Some(first) = first else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(deadline);
        while batch.len() < MAX_BATCH && !stopping {
            tokio::select! {
                _ = &mut stopped => stopping = true,
                () = &mut deadline => break,
                next = receiver.recv() => match next {
                    Some(span) => batch.push(span),
                    None => break,
                },
            }
        }
        if stopping {
            // Stopping: what is queued goes out now, in full batches.
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
        }
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "dreamnet-server".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..InstrumentationScope::default()
                    }),
                    spans: std::mem::take(&mut batch),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        post(&client, &uri, request.encode_to_vec()).await;
    }
}

async fn post(client: &Client<HttpConnector, Full<Bytes>>, uri: &http::Uri, body: Vec<u8>) {
    let request = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)));
    let Ok(request) = request else {
        return;
    };
    match tokio::time::timeout(EXPORT_TIMEOUT, client.request(request)).await {
        Ok(Ok(response)) if response.status().is_success() => {}
        Ok(Ok(response)) => {
            tracing::warn!(status = response.status().as_u16(), "OTLP export refused");
        }
        Ok(Err(err)) => tracing::warn!(%err, "OTLP export failed"),
        Err(_) => tracing::warn!("OTLP export timed out"),
    }
}

/// A string attribute.
pub(crate) fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// An integer attribute.
pub(crate) fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}
