//! The `dreamnet-server` binary itself: the generated admin token, JSON logs carrying trace
//! ids and the DeployKeeper lines, and a clean exit on SIGTERM.

mod common;

use std::time::Duration;

use common::Process;
use dreamnet_test_support::holds_within;
use serde_json::Value;

#[tokio::test]
async fn generated_token_json_logs_and_sigterm() {
    let server = Process::spawn(&["--log-format", "json"], &[]).await;
    let http = &server.http;

    // The generated token is printed once, as an `export` line, and works.
    let token = server
        .banner
        .iter()
        .find_map(|line| line.trim().strip_prefix("export DREAMNET_ADMIN_TOKEN="))
        .expect("generated token printed at start")
        .to_owned();
    assert_eq!(token.len(), 64);
    let auth = format!("Bearer {token}");
    let control = http
        .get_with_headers("/api/control", &[("authorization", &auth)])
        .await;
    assert_eq!(control.status, 200);
    http.get("/api/control").await.assert_problem(401);

    // An idempotent request: its log lines carry its trace id, including DeployKeeper's.
    let echo = http
        .post_json(
            "/api/wolf-pack/echo",
            &[
                ("idempotency-key", "log-key-1"),
                ("x-trace-id", "log-trace-1"),
            ],
            "{}",
        )
        .await;
    assert_eq!(echo.status, 200);
    let replay = http
        .post_json(
            "/api/wolf-pack/echo",
            &[
                ("idempotency-key", "log-key-1"),
                ("x-trace-id", "log-trace-2"),
            ],
            "{}",
        )
        .await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));

    // A mint (the billable layer owns idempotency there) logs the same lines.
    for trace in ["mint-trace-1", "mint-trace-2"] {
        let mint = http
            .post_json(
                "/api/mint-dream",
                &[("x-idempotency-key", "mint-log-1"), ("x-trace-id", trace)],
                r#"{"dreamId": "d", "wallet": "w"}"#,
            )
            .await;
        assert_eq!(mint.status, 201);
    }

    let saw_both = holds_within(Duration::from_secs(5), || {
        let lines = server.log_lines();
        async move {
            let text = lines.join("\n");
            text.contains("[DeployKeeper] Idempotency-Key: log-key-1, Trace-ID: log-trace-1")
                && text.contains("Duplicate detected - Key: log-key-1, Trace: log-trace-2")
                && text
                    .contains("[DeployKeeper] Idempotency-Key: mint-log-1, Trace-ID: mint-trace-1")
                && text.contains("Duplicate detected - Key: mint-log-1, Trace: mint-trace-2")
                && text.contains("Original: mint-trace-1")
        }
    })
    .await;
    let lines = server.log_lines();
    assert!(
        saw_both,
        "DeployKeeper lines missing:\n{}",
        lines.join("\n")
    );
    // Each DeployKeeper line once: on the mint routes the billable crate writes them (its
    // ledger owns idempotency there) and the server must not repeat them.
    for needle in [
        "[DeployKeeper] Idempotency-Key: log-key-1,",
        "Duplicate detected - Key: log-key-1,",
        "[DeployKeeper] Idempotency-Key: mint-log-1,",
        "Duplicate detected - Key: mint-log-1,",
    ] {
        let count = lines.iter().filter(|l| l.contains(needle)).count();
        assert_eq!(
            count,
            1,
            "{needle:?} logged {count} times:\n{}",
            lines.join("\n")
        );
    }
    let mut request_lines = 0;
    for line in &lines {
        let json: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let text = line.as_str();
        if text.contains("mint-log-1") || text.contains("/api/mint-dream") {
            assert!(
                text.contains("\"trace_id\":\"mint-trace-1\"")
                    || text.contains("\"trace_id\":\"mint-trace-2\""),
                "mint log line without its trace id: {json}"
            );
        }
        if text.contains("log-key-1") || text.contains("/api/wolf-pack/echo") {
            request_lines += 1;
            assert!(
                text.contains("\"trace_id\":\"log-trace-1\"")
                    || text.contains("\"trace_id\":\"log-trace-2\""),
                "request log line without its trace id: {json}"
            );
        }
    }
    assert!(request_lines >= 4, "{}", lines.join("\n"));
    assert!(
        !lines.iter().any(|l| l.contains(&token)),
        "the admin token must never be logged"
    );

    let status = server.terminate().await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

#[tokio::test]
async fn help_explains_every_flag() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dreamnet-server"))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--addr",
        "--redis-url",
        "--database-url",
        "--config",
        "--log-format",
        "DREAMNET_REDIS_URL",
        "DREAMNET_DATABASE_URL",
        "DREAMNET_CONFIG",
        "DREAMNET_ADMIN_TOKEN",
        "--header-read-timeout",
        "--idle-timeout",
        "--request-timeout",
        "--body-read-timeout",
        "--max-connections",
        "--max-body-bytes",
        "--redis-timeout-ms",
        "--database-timeout-ms",
        "DREAMNET_MAX_CONNECTIONS",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[tokio::test]
async fn bad_config_fails_at_start_with_a_message() {
    let dir = std::env::temp_dir().join(dreamnet_test_support::unique_schema("dreamnet_cfg"));
    std::fs::write(&dir, "[billing]\ncurency = \"USD\"\n").unwrap();
    let stderr = Process::refused_start(&["--config", dir.to_str().unwrap()], &[]).await;
    let _ = std::fs::remove_file(&dir);
    assert!(stderr.contains("curency"), "{stderr}");
}
