//! `GET /console`: the operator console, three static files embedded in the binary.
//!
//! The page holds no data of its own: its script asks the admin API for everything, with the
//! token the operator pastes. So these routes need no token and are never guarded (like
//! `/healthz`): an operator must always be able to load the page that turns the kill switch
//! off.

use axum::{response::IntoResponse, routing::get, Router};
use http::{header, HeaderName, HeaderValue};

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");
const ICON: &str = include_str!("../console/icon.svg");

/// Only our own files; no inline script or style, no framing, no form posts elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes (merged into the server's router outside every guard).
pub(crate) fn routes() -> Router {
    Router::new()
        .route("/console", get(|| asset(INDEX, "text/html; charset=utf-8")))
        .route(
            "/console/console.js",
            get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            "/console/console.css",
            get(|| asset(STYLE, "text/css; charset=utf-8")),
        )
        .route("/console/icon.svg", get(|| asset(ICON, "image/svg+xml")))
}

async fn asset(body: &'static str, content_type: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // The files change with the binary and are tiny: revalidate rather than risk an
            // old script against a new server after an upgrade.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                HeaderValue::from_static("same-origin"),
            ),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get(path: &str) -> http::Response<Body> {
        let request = Request::get(path).body(Body::empty()).unwrap();
        routes().oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn every_asset_has_its_type_and_the_security_headers() {
        for (path, kind) in [
            ("/console", "text/html"),
            ("/console/console.js", "text/javascript"),
            ("/console/console.css", "text/css"),
            ("/console/icon.svg", "image/svg+xml"),
        ] {
            let response = get(path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let headers = response.headers();
            let content_type = headers[header::CONTENT_TYPE].to_str().unwrap();
            assert!(content_type.starts_with(kind), "{path}: {content_type}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{path}");
            let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
            assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        }
    }

    #[test]
    fn the_page_loads_only_its_own_files_and_has_no_inline_script() {
        // The CSP would block an inline script; catch it here rather than in a browser.
        assert_eq!(INDEX.matches("<script").count(), 1);
        assert!(INDEX.contains(r#"<script src="console/console.js" defer></script>"#));
        assert!(INDEX.contains(r#"href="console/console.css""#));
        assert!(!INDEX.contains(" style="), "no inline style");
        let handler = INDEX.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "no inline event handler");
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"));
        assert!(
            !SCRIPT.contains("innerHTML"),
            "build the DOM with textContent"
        );
    }
}
