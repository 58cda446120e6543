//! What the local API refuses before any handler runs, so that a web page in a browser on the host cannot
//! use it: a `Host` that is not a loopback name (DNS rebinding), an `Origin` header (a page's cross-site
//! request) unless the operator listed that origin, and a `POST` whose body is not declared JSON (the
//! `text/plain` "simple request" a page can send without a CORS preflight).
//!
//! Local processes are not browsers: they send a loopback `Host`, no `Origin`, and `application/json`.
//!
//! On the Unix socket ([`Peer::Unix`]) the `Host` is not checked — no browser can reach a socket, so DNS
//! rebinding does not apply, and HTTP clients put whatever name their URL holds there — and no token is asked
//! for: the socket file's mode and group decide who connects. `Origin` and the JSON rule hold on both
//! transports. A request without a [`Peer`] (the router driven directly, in tests) is treated as TCP.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gait_runtime::http::Peer;
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;

/// The guard's settings (`local_api.allowed_origins`, the bearer token).
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Exact origins (`scheme://host[:port]`) whose requests are answered; empty refuses every `Origin`.
    pub allowed_origins: Vec<String>,
    /// The token a `POST` (appending a record, asking for a decision) must present as
    /// `Authorization: Bearer <token>`; `None` (tests of the router alone) requires none.
    pub token: Option<Arc<super::token::ApiToken>>,
}

/// Why a request was refused before reaching a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` names something other than a loopback address or `localhost`.
    Host(String),
    /// The request carries an `Origin` that is not configured.
    Origin(String),
    /// A `POST` whose `Content-Type` is not JSON.
    MediaType(String),
    /// A `POST` without the bearer token (`None`: no `Authorization` header; `Some`: the file it is in).
    Token {
        /// Whether a token was presented at all.
        presented: bool,
        /// Where the token is (for the message).
        file: String,
    },
}

impl Guard {
    /// Checks a request's method and headers, as it arrived from `peer`.
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        peer: Option<&Peer>,
    ) -> Result<(), Refusal> {
        let on_socket = matches!(peer, Some(Peer::Unix { .. }));
        if !on_socket && let Some(host) = headers.get(header::HOST) {
            let text = String::from_utf8_lossy(host.as_bytes()).into_owned();
            if !is_loopback_host(&text) {
                return Err(Refusal::Host(text));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let text = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            if !self.allowed_origins.contains(&text) {
                return Err(Refusal::Origin(text));
            }
        }
        if method == Method::POST {
            let declared = headers
                .get(header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            if !is_json(&declared) {
                return Err(Refusal::MediaType(declared));
            }
            if !on_socket && let Some(token) = &self.token {
                let presented = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if !presented.is_some_and(|p| token.check(p.trim())) {
                    return Err(Refusal::Token {
                        presented: presented.is_some(),
                        file: token.path().display().to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Whether a `Host` header value (`name[:port]`, `[v6][:port]`) is `localhost` or a loopback IP.
pub fn is_loopback_host(value: &str) -> bool {
    let value = value.trim();
    let host = if let Some(rest) = value.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, after)) if after.is_empty() || after.starts_with(':') => inside,
            _ => return false,
        }
    } else {
        match value.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return false,
            None => value,
        }
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a `Content-Type` is `application/json` (parameters such as `charset` allowed).
fn is_json(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/json")
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Refusal::Host(host) => (
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                format!(
                    "Host {host:?} is not a loopback name: the local API answers only requests addressed to \
                     localhost, 127.0.0.1 or [::1]"
                ),
            ),
            Refusal::Origin(origin) => (
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!(
                    "requests from web pages are refused (Origin {origin:?}); list the origin under \
                     local_api.allowed_origins to allow it"
                ),
            ),
            Refusal::Token { presented, file } => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                if presented {
                    "the bearer token is not valid".to_owned()
                } else {
                    format!("send `Authorization: Bearer <token>`; the agent's token is in {file}")
                },
            ),
            Refusal::MediaType(declared) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "the body must be JSON sent with `Content-Type: application/json` (got {declared:?})"
                ),
            ),
        };
        (
            status,
            axum::Json(json!({ "error": { "code": code, "message": message } })),
        )
            .into_response()
    }
}

/// The axum middleware: refuses with [`Refusal`]'s answer, else runs the handler.
pub async fn enforce(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<Peer>();
    match guard.check(request.method(), request.headers(), peer) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            tracing::warn!(?refusal, path = %request.uri().path(), "local api request refused");
            refusal.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn loopback_hosts_pass_and_others_do_not() {
        for ok in [
            "localhost",
            "LOCALHOST:7071",
            "127.0.0.1",
            "127.0.0.1:7071",
            "127.8.9.10:1",
            "[::1]",
            "[::1]:7071",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7071",
            "localhost.evil.example",
            "10.0.0.1:7071",
            "[::2]:7071",
            "[::1]x",
            "127.0.0.1:70a",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn browser_shaped_requests_are_refused() {
        let guard = Guard::default();
        let json = (header::CONTENT_TYPE, "application/json; charset=utf-8");
        assert_eq!(
            guard.check(
                &Method::POST,
                &headers(&[(header::HOST, "127.0.0.1:7071"), json.clone()]),
                None
            ),
            Ok(())
        );
        assert!(matches!(
            guard.check(
                &Method::POST,
                &headers(&[(header::HOST, "evil.example"), json.clone()]),
                None
            ),
            Err(Refusal::Host(_))
        ));
        assert!(matches!(
            guard.check(
                &Method::GET,
                &headers(&[
                    (header::HOST, "localhost"),
                    (header::ORIGIN, "http://evil.example")
                ]),
                None
            ),
            Err(Refusal::Origin(_))
        ));
        assert!(matches!(
            guard.check(
                &Method::POST,
                &headers(&[
                    (header::HOST, "localhost"),
                    (header::CONTENT_TYPE, "text/plain")
                ]),
                None
            ),
            Err(Refusal::MediaType(_))
        ));
        assert!(matches!(
            guard.check(
                &Method::POST,
                &headers(&[(header::HOST, "localhost")]),
                None
            ),
            Err(Refusal::MediaType(_))
        ));
        // A GET needs no content type; a listed origin is answered.
        assert_eq!(
            guard.check(&Method::GET, &headers(&[(header::HOST, "localhost")]), None),
            Ok(())
        );
        let listed = Guard {
            allowed_origins: vec!["http://localhost:3000".into()],
            token: None,
        };
        assert_eq!(
            listed.check(
                &Method::GET,
                &headers(&[
                    (header::HOST, "localhost"),
                    (header::ORIGIN, "http://localhost:3000")
                ]),
                None
            ),
            Ok(())
        );
    }

    #[test]
    fn on_the_socket_host_and_token_are_not_asked_for_but_origin_and_json_are() {
        let dir = tempfile::tempdir().unwrap();
        let token = super::super::token::ApiToken::load_or_create(&dir.path().join("t")).unwrap();
        let guard = Guard {
            allowed_origins: Vec::new(),
            token: Some(Arc::new(token)),
        };
        let socket = Peer::Unix {
            uid: Some(1000),
            pid: Some(1),
        };
        let tcp = Peer::Tcp("127.0.0.1:5000".parse().unwrap());
        let post = headers(&[
            (header::HOST, "gait-agent"),
            (header::CONTENT_TYPE, "application/json"),
        ]);
        assert_eq!(guard.check(&Method::POST, &post, Some(&socket)), Ok(()));
        assert!(matches!(
            guard.check(&Method::POST, &post, Some(&tcp)),
            Err(Refusal::Host(_))
        ));
        let loopback = headers(&[
            (header::HOST, "localhost"),
            (header::CONTENT_TYPE, "application/json"),
        ]);
        assert!(matches!(
            guard.check(&Method::POST, &loopback, Some(&tcp)),
            Err(Refusal::Token {
                presented: false,
                ..
            })
        ));
        assert!(matches!(
            guard.check(
                &Method::POST,
                &headers(&[(header::HOST, "x"), (header::CONTENT_TYPE, "text/plain")]),
                Some(&socket)
            ),
            Err(Refusal::MediaType(_))
        ));
        assert!(matches!(
            guard.check(
                &Method::GET,
                &headers(&[(header::ORIGIN, "http://evil.example")]),
                Some(&socket)
            ),
            Err(Refusal::Origin(_))
        ));
    }
}
