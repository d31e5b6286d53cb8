//! Why a request could not be proxied, who caused it, and the answer the client gets.

use http::{header, HeaderValue, Response, StatusCode};

use super::response_body::ResponseBody;
use crate::request_body::BodyError;
use crate::sticky::engineio::SESSION_UNKNOWN_BODY;
use crate::upstream::ConnectError;

/// A request limpet answers itself instead of relaying a server's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no location matches")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A client request refused with a status of its own (408, 414, 431, 501).
    #[error("request refused ({0}): {1}")]
    Refused(StatusCode, &'static str),
    #[error("request body too large")]
    BodyTooLarge,
    #[error("no server available")]
    NoServer,
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("upstream error: {0}")]
    Upstream(std::io::Error),
    #[error("upstream timed out")]
    Timeout,
    #[error("invalid upgrade answer from upstream: {0}")]
    BadUpgrade(&'static str),
    #[error("Engine.IO session unknown")]
    SessionUnknown { upgrade: bool },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BadRequest(_) | ProxyError::SessionUnknown { .. } => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::Refused(status, _) => *status,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoServer
            | ProxyError::Connect(_)
            | ProxyError::Upstream(_)
            | ProxyError::BadUpgrade(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Was this the server's fault (logged as a warning, counted against it)?
    pub fn is_upstream(&self) -> bool {
        !matches!(self, ProxyError::Refused(..)) && self.status().is_server_error()
    }

    /// Does the client connection close after this answer? Yes after any refused request: what follows it on
    /// the connection cannot be trusted to start where limpet thinks it does.
    fn closes(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_) | ProxyError::Refused(..) | ProxyError::BodyTooLarge
        )
    }

    /// The answer the client gets.
    pub fn response(&self) -> Response<ResponseBody> {
        match self {
            ProxyError::SessionUnknown { upgrade } => session_unknown(*upgrade),
            _ => {
                let status = self.status();
                let text = format!(
                    "{} {}\n",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                );
                let mut resp = plain(status, text);
                if self.closes() {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                if matches!(self, ProxyError::MethodNotAllowed) {
                    resp.headers_mut().insert(
                        header::ALLOW,
                        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                    );
                }
                resp
            }
        }
    }
}

/// A short text/plain answer.
pub fn plain(status: StatusCode, text: impl Into<bytes::Bytes>) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Engine.IO's own answer for a session it does not know; for an upgrade, it also closes the connection.
fn session_unknown(upgrade: bool) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(SESSION_UNKNOWN_BODY));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The answer to give when the client's request body caused a failure (None: the upstream did).
pub fn client_fault(e: &BodyError) -> Option<ProxyError> {
    match e {
        BodyError::TooLarge => Some(ProxyError::BodyTooLarge),
        BodyError::Client(_) => Some(ProxyError::BadRequest("malformed request body")),
        BodyError::ClientTimeout => Some(ProxyError::Refused(
            StatusCode::REQUEST_TIMEOUT,
            "request body too slow",
        )),
        BodyError::Upstream(_) | BodyError::UpstreamTimeout => None,
    }
}
