//! The access log (tower-http's `TraceLayer`): one `request finished` line per request in the
//! request span, so it carries the trace id, method, path, status and latency.

mod common;

use std::time::Duration;

use common::Process;

#[tokio::test]
async fn every_request_logs_one_line_with_its_trace_id_and_status() {
    let server = Process::spawn(&["--log-format", "json"], &[]).await;
    let ok = server
        .http
        .get_with_headers("/healthz", &[("x-trace-id", "access-ok-1")])
        .await;
    assert_eq!(ok.status, 200);
    let missing = server
        .http
        .get_with_headers("/no/such/route", &[("x-trace-id", "access-404-1")])
        .await;
    assert_eq!(missing.status, 404);

    let line_of = |trace: &str| {
        let trace = trace.to_owned();
        let logs = server.logs.clone();
        async move {
            dreamnet_test_support::eventually(
                "the access-log line",
                Duration::from_secs(10),
                || {
                    let found = logs
                        .lock()
                        .iter()
                        .filter(|l| l.contains("request finished") && l.contains(&trace))
                        .cloned()
                        .collect::<Vec<_>>();
                    async move { (!found.is_empty()).then_some(found) }
                },
            )
            .await
        }
    };
    for (trace, path, status) in [
        ("access-ok-1", "/healthz", 200),
        ("access-404-1", "/no/such/route", 404),
    ] {
        let lines = line_of(trace).await;
        assert_eq!(lines.len(), 1, "one line per request: {lines:?}");
        let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["status"], status, "{line}");
        assert!(
            line["elapsed_ms"].as_str().unwrap().parse::<f64>().is_ok(),
            "{line}"
        );
        assert_eq!(line["span"]["trace_id"], trace, "{line}");
        assert_eq!(line["span"]["path"], path, "{line}");
        assert_eq!(line["span"]["method"], "GET", "{line}");
        assert!(line["span"]["span_id"].is_string(), "{line}");
    }
    let status = server.terminate().await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}
