//! The README's curl walk-through, run as written: every `curl` command of the README's
//! `bash` blocks, in order, against a real server (its base URL substituted for
//! `http://localhost:5000`, `$DREAMNET_ADMIN_TOKEN` expanded as the shell would).

mod common;

use bytes::Bytes;
use common::{Http, TOKEN};
use dreamnet_server::Config;
use http::Method;

const README: &str = include_str!("../README.md");

/// One parsed `curl` invocation.
#[derive(Debug)]
struct Curl {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

/// Splits a shell command line into words: single quotes literal, double quotes expanding
/// `$DREAMNET_ADMIN_TOKEN`, backslash-newline already joined.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                let mut quoted = String::new();
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    quoted.push(c);
                }
                word.push_str(&quoted.replace("$DREAMNET_ADMIN_TOKEN", TOKEN));
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

fn parse_curl(words: &[String]) -> Curl {
    assert_eq!(words[0], "curl");
    let mut method = None;
    let mut url = None;
    let mut headers = Vec::new();
    let mut body = None;
    let mut i = 1;
    while i < words.len() {
        match words[i].as_str() {
            "-X" | "--request" => {
                method = Some(Method::from_bytes(words[i + 1].as_bytes()).unwrap());
                i += 1;
            }
            "-H" | "--header" => {
                let (name, value) = words[i + 1].split_once(':').expect("header");
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
                i += 1;
            }
            "-d" | "--data" | "--data-raw" => {
                body = Some(words[i + 1].clone());
                i += 1;
            }
            "-o" | "-w" => i += 1,
            "-s" | "-i" | "-sS" => {}
            other if other.starts_with("http") => url = Some(other.to_owned()),
            other => panic!("the walk-through parser does not know curl option {other:?}"),
        }
        i += 1;
    }
    let method = method.unwrap_or(if body.is_some() {
        Method::POST
    } else {
        Method::GET
    });
    Curl {
        method,
        url: url.expect("curl without URL"),
        headers,
        body,
    }
}

/// Whether `text` ends inside a single- or double-quoted string.
fn open_quote(text: &str) -> bool {
    let mut quote = None;
    for c in text.chars() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    quote.is_some()
}

/// The `curl` commands of the README's `bash` blocks, continuation lines joined.
fn readme_commands() -> Vec<Curl> {
    let mut commands = Vec::new();
    let mut in_bash = false;
    let mut pending = String::new();
    for line in README.lines() {
        if line.starts_with("```") {
            in_bash = line.trim() == "```bash";
            continue;
        }
        if !in_bash {
            continue;
        }
        if let Some(stripped) = line.strip_suffix('\\') {
            pending.push_str(stripped);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        if open_quote(&pending) {
            // A quoted argument spanning lines (the seed's multi-line JSON bodies).
            pending.push('\n');
            continue;
        }
        let command = std::mem::take(&mut pending);
        if command.trim_start().starts_with("curl ") {
            commands.push(parse_curl(&shell_words(&command)));
        }
    }
    commands
}

#[test]
fn the_readme_has_the_seed_examples() {
    let commands = readme_commands();
    let paths: Vec<&str> = commands.iter().map(|c| c.url.as_str()).collect();
    for seed in [
        "http://localhost:5000/api/control/kill-switch/enable",
        "http://localhost:5000/api/control/cluster/wolf-pack/disable",
        "http://localhost:5000/api/control/cluster/orca-pack/rate-limit",
        "http://localhost:5000/api/mint-dream",
    ] {
        assert!(paths.contains(&seed), "README lacks {seed}");
    }
    for command in &commands {
        if command.url.contains("/api/control") || command.url.contains("/api/billable") {
            assert!(
                command
                    .headers
                    .iter()
                    .any(|(n, v)| n.eq_ignore_ascii_case("authorization")
                        && v == &format!("Bearer {TOKEN}")),
                "admin example without the token: {command:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_readme_config_file_parses_and_builds() {
    let start = README
        .find("```toml\n")
        .expect("a TOML block in the README")
        + "```toml\n".len();
    let end = start + README[start..].find("```").expect("closed TOML block");
    let file = dreamnet_server::FileConfig::from_toml(&README[start..end])
        .unwrap_or_else(|e| panic!("the README's config does not parse: {e}"));
    assert_eq!(file.billing.price("mint-dream"), 100);
    assert_eq!(file.billing.accounts["acme"].credit, 10_000);
    let app = dreamnet_server::App::build(Config {
        file,
        ..Config::default()
    })
    .await
    .expect("the README's config builds an app");
    app.shutdown().await;
}

async fn every_readme_command_succeeds_in_order(http: &Http) {
    let mut action_id = None;
    for command in readme_commands() {
        let path = command
            .url
            .strip_prefix("http://localhost:5000")
            .expect("README URLs point at localhost:5000")
            .to_owned();
        let headers: Vec<(&str, &str)> = command
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let body = command.body.clone().map(Bytes::from).unwrap_or_default();
        let reply = http
            .send(command.method.clone(), &path, &headers, body)
            .await;
        assert!(
            reply.status.is_success(),
            "{} {path} -> {}: {}",
            command.method,
            reply.status,
            reply.text()
        );
        if path == "/api/mint-dream" {
            let json = reply.json();
            assert_eq!(json["traceId"], "trace-456");
            assert_eq!(reply.header("x-trace-id"), Some("trace-456"));
            action_id = json["actionId"].as_str().map(str::to_owned);
        }
    }
    assert!(action_id.is_some(), "the walk-through mints");
}

async fn walkthrough_semantics(http: &Http) {
    // Kill switch on: guarded routes 503, operator routes still answer.
    http.kill_switch_on("Emergency maintenance").await;
    http.get("/api/wolf-pack/echo").await.assert_problem(503);
    assert_eq!(http.get("/healthz").await.status, 200);
    http.admin_post("/api/control/kill-switch/disable", "")
        .await;
    assert_eq!(http.get("/api/wolf-pack/echo").await.status, 200);

    // The mint, then its retry: one charge.
    let headers = [
        ("content-type", "application/json"),
        ("x-idempotency-key", "unique-key-123"),
        ("x-trace-id", "trace-456"),
    ];
    let body = Bytes::from_static(br#"{"dreamId": "dream-123", "wallet": "0x..."}"#);
    let first = http
        .send(Method::POST, "/api/mint-dream", &headers, body.clone())
        .await;
    assert_eq!(first.status, 201);
    let again = http
        .send(Method::POST, "/api/mint-dream", &headers, body)
        .await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json(), first.json());
    let stats = http.admin_get("/api/billable/stats").await.json();
    assert_eq!(stats["charged"], 1);
    let action = http
        .admin_get(&format!(
            "/api/billable/{}",
            first.json()["actionId"].as_str().unwrap()
        ))
        .await
        .json();
    assert_eq!(action["state"], "charged");

    let _ = http.send(Method::GET, "/metrics", &[], Bytes::new()).await;
}

on_every_backend!(
    every_readme_command_succeeds_in_order,
    walkthrough_semantics
);
