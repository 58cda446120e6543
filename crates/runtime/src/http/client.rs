//! A small HTTP/1.1 client for the operator commands and tests: one request per connection, `http://` or
//! `https://` with the server verified against one CA (see [`super::tls::client_config`]), a deadline over the
//! whole exchange and a bound on the answer's size.
//!
//! Why not reqwest: its rustls features either pull aws-lc-rs or, without a provider, panic in every
//! `Client::build()` of the process unless a process-wide provider was installed first; with Cargo's feature
//! unification that would reach every reqwest client in the workspace (the agent's `status` command among
//! them). This client names the ring provider explicitly and keeps no global state.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::tls::{HandshakeFailure, classify_handshake_error};

/// Why a request failed before an answer was read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host[:port]/...` or `https://host[:port]/...`.
    #[error("`{url}` is not an http:// or https:// URL: {detail}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// An `https://` URL, but the client was built without a CA to verify the server with.
    #[error("`{url}` is https:// but no CA certificate was given to verify the server with")]
    NoCa {
        /// The URL.
        url: String,
    },
    /// The TCP connection could not be made.
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {authority} failed: {source}")]
    Handshake {
        /// `host:port`.
        authority: String,
        /// Why, as far as the operator can act on it.
        failure: HandshakeFailure,
        /// The error from rustls.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (the connection closed, the answer was malformed).
    #[error("HTTP exchange with {authority} failed: {source}")]
    Http {
        /// `host:port`.
        authority: String,
        /// What hyper reported.
        #[source]
        source: hyper::Error,
    },
    /// The answer's body could not be read or is larger than the client accepts.
    #[error("reading the answer of {authority} failed: {detail}")]
    Body {
        /// `host:port`.
        authority: String,
        /// What went wrong.
        detail: String,
    },
    /// No answer within the client's timeout.
    #[error("no answer from {authority} within {timeout:?}")]
    Timeout {
        /// `host:port`.
        authority: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// An HTTP(S) client; cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    max_answer_bytes: usize,
}

impl Client {
    /// A client that answers `https://` URLs with `tls` (none: only `http://` works), gives each exchange at
    /// most `timeout` and reads answers of at most 256 MiB.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>, timeout: Duration) -> Self {
        Client {
            tls,
            timeout,
            max_answer_bytes: 256 << 20,
        }
    }

    /// This client with answers bounded to `max` bytes: a larger body fails the request with
    /// [`ClientError::Body`] as soon as it crosses the bound (for answers from parties not trusted to be
    /// small, such as an OpenID provider's JWKS).
    pub fn with_max_answer_bytes(mut self, max: usize) -> Self {
        self.max_answer_bytes = max;
        self
    }

    /// Sends one request and reads the whole answer.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Bytes>, ClientError> {
        let target = Target::parse(url)?;
        let authority = target.authority.clone();
        tokio::time::timeout(self.timeout, self.exchange(target, method, headers, body))
            .await
            .map_err(|_| ClientError::Timeout {
                authority,
                timeout: self.timeout,
            })?
    }

    async fn exchange(
        &self,
        target: Target,
        method: Method,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Bytes>, ClientError> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|source| ClientError::Connect {
                authority: target.authority.clone(),
                source,
            })?;
        let mut request = Request::builder()
            .method(method)
            .uri(target.path.clone())
            .body(Full::new(body))
            .map_err(|e| ClientError::Url {
                url: target.url.clone(),
                detail: e.to_string(),
            })?;
        *request.headers_mut() = headers;
        let host =
            http::HeaderValue::from_str(&target.authority).map_err(|e| ClientError::Url {
                url: target.url.clone(),
                detail: e.to_string(),
            })?;
        request.headers_mut().insert(http::header::HOST, host);
        if !target.https {
            return self.send(tcp, request, &target.authority).await;
        }
        let Some(tls) = &self.tls else {
            return Err(ClientError::NoCa { url: target.url });
        };
        let name = ServerName::try_from(target.host.clone()).map_err(|e| ClientError::Url {
            url: target.url.clone(),
            detail: format!("`{}` is not a DNS name or IP address: {e}", target.host),
        })?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(name, tcp)
            .await
            .map_err(|source| ClientError::Handshake {
                authority: target.authority.clone(),
                failure: classify_handshake_error(&source),
                source,
            })?;
        self.send(stream, request, &target.authority).await
    }

    async fn send<I>(
        &self,
        io: I,
        request: Request<Full<Bytes>>,
        authority: &str,
    ) -> Result<Response<Bytes>, ClientError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http_error = |source| ClientError::Http {
            authority: authority.to_owned(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http_error)?;
        let limit = self.max_answer_bytes;
        let exchange = async move {
            let response = sender.send_request(request).await.map_err(http_error)?;
            let (parts, body) = response.into_parts();
            let bytes = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| ClientError::Body {
                    authority: authority.to_owned(),
                    detail: e.to_string(),
                })?
                .to_bytes();
            // Dropping the sender lets the connection task below finish.
            drop(sender);
            Ok::<_, ClientError>(Response::from_parts(parts, bytes))
        };
        let (answer, _closed) = tokio::join!(exchange, connection);
        answer
    }
}

/// Where a URL points.
struct Target {
    url: String,
    https: bool,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, ClientError> {
        let bad = |detail: &str| ClientError::Url {
            url: url.to_owned(),
            detail: detail.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information in the URL is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), ToString::to_string);
        Ok(Target {
            url: url.to_owned(),
            https,
            host,
            port,
            authority: authority.as_str().to_owned(),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_host_port_and_path() {
        let t = Target::parse("https://[::1]:7080/v1/x?a=b").expect("valid");
        assert!(t.https);
        assert_eq!((t.host.as_str(), t.port), ("::1", 7080));
        assert_eq!(t.path, "/v1/x?a=b");
        let t = Target::parse("http://aggregator.example").expect("valid");
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        for bad in ["ftp://x/", "/v1/x", "https://user:pw@host/"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
