//! The one error type of the HTTP API.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Every handler error, rendered in the same JSON shape as a credential
/// answer: `{"type":"result","code":...,"reason":...}`. Reasons never carry
/// a password or secret.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("too many requests; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// Any other status the stack produces (404, 405, 408, 431, ...).
    #[error("{reason}")]
    Status { status: StatusCode, reason: String },
}

/// A query string that does not parse is the caller's mistake: 400 with
/// axum's reason, in our JSON shape.
impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::TooManyRequests { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Status { status, .. } => (*status, status_code_name(*status)),
        };
        let body = json!({ "type": "result", "code": code, "reason": self.to_string() });
        let mut response =
            (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response();
        match &self {
            ApiError::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::TooManyRequests { retry_after_secs } => {
                if let Ok(value) = HeaderValue::from_str(&(*retry_after_secs).max(1).to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
            }
            _ => {}
        }
        response
    }
}

/// The `code` of a status the stack produced: `not_found`,
/// `method_not_allowed`, ... (the canonical reason in snake case).
fn status_code_name(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "request_header_fields_too_large",
        StatusCode::INTERNAL_SERVER_ERROR => "internal_error",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        status if status.is_client_error() => "client_error",
        _ => "server_error",
    }
}

/// Longest plain-text error body kept as the reason of its JSON rendering.
const MAX_REASON_BYTES: usize = 1024;

/// True for an error status without a JSON body (axum's 404 and 405, a
/// timeout's 408, a body limit's 413, a rejection's plain text): what
/// [`render_json_error`] rewrites.
pub(crate) fn is_error_without_json(response: &Response) -> bool {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return false;
    }
    !response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"))
}

/// An error answer as `{"type":"result","code":…,"reason":…}`, its text
/// (up to [`MAX_REASON_BYTES`]) as the reason. Other headers (`Allow`,
/// `Retry-After`, ...) are kept.
pub(crate) async fn render_json_error(response: Response) -> Response {
    let status = response.status();
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REASON_BYTES)
        .await
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .filter(|text| !text.is_empty());
    let reason = text.unwrap_or_else(|| canonical_reason(status));
    let rendered = ApiError::Status { status, reason }.into_response();
    let (rendered_parts, body) = rendered.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &rendered_parts.headers {
        parts.headers.insert(name, value.clone());
    }
    Response::from_parts(parts, body)
}

/// `request timeout`, `not found`, ...: the reason of an empty error body.
pub(crate) fn canonical_reason(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
}

/// Size of a request head as it came in: request line and header lines.
pub(crate) fn head_bytes<B>(request: &axum::http::Request<B>) -> usize {
    // The length of the URI as written (its `Display`), without writing it.
    let uri = request.uri();
    let uri_len = uri.scheme_str().map_or(0, |scheme| scheme.len() + 3)
        + uri
            .authority()
            .map_or(0, |authority| authority.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |query| query.len() + 1);
    let request_line = request.method().as_str().len() + uri_len + 12;
    request_line
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
}

/// hyper answers a request it cannot parse by itself (400 for a bad
/// request line or header, 414, 431 beyond its buffer) with a bare head and
/// `content-length: 0`, before any router runs. Given the bytes hyper is
/// about to write, this returns the same answer with a JSON body, or
/// `None` for anything else (every answer of the router that is an error
/// already carries a JSON content type).
pub fn render_bare_error_head(head: &[u8]) -> Option<Vec<u8>> {
    // hyper writes such a head in one piece; anything long is a body.
    if head.len() > 1024 || !head.starts_with(b"HTTP/1.1 ") {
        return None;
    }
    // Every answer passes here: the common ones leave at their first digit.
    if !matches!(head.get(9), Some(b'4' | b'5')) {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let head_end = text.find("\r\n\r\n")?;
    if head_end + 4 != text.len() {
        return None;
    }
    let mut lines = text[..head_end].split("\r\n");
    let status: StatusCode = lines
        .next()?
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()?;
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let mut bare = false;
    let mut kept = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => return None,
            "content-length" if value.trim() == "0" => bare = true,
            "content-length" => return None,
            "connection" => {}
            _ => kept.push(line),
        }
    }
    if !bare {
        return None;
    }
    let reason = canonical_reason(status);
    let body =
        json!({ "type": "result", "code": status_code_name(status), "reason": reason }).to_string();
    let mut rendered = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for line in kept {
        rendered.push_str(line);
        rendered.push_str("\r\n");
    }
    rendered.push_str("\r\n");
    rendered.push_str(&body);
    Some(rendered.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_bare_error_heads_get_a_json_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 29 Nov 2026 19:30:00 GMT\r\n\r\n";
        let rendered = String::from_utf8(render_bare_error_head(head).unwrap()).unwrap();
        let (head, body) = rendered.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\ndate: Sun, 29 Nov 2026 19:30:00 GMT"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["type"], "result");
        assert_eq!(body["code"], "request_header_fields_too_large");
        let bad = render_bare_error_head(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        assert!(String::from_utf8(bad)
            .unwrap()
            .contains("\"code\":\"bad_request\""));
    }

    #[test]
    fn other_writes_pass_unchanged() {
        for bytes in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n{}",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n",
            b"{\"type\":\"result\"}",
            b"",
            b"HTTP/1.1 4",
        ] {
            assert_eq!(render_bare_error_head(bytes), None, "{:?}", String::from_utf8_lossy(bytes));
        }
    }
}
