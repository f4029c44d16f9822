//! The edge every request passes first, as one hand-written tower service
//! ([`Edge`]) with a concrete future: the request head limit (431), the
//! request timeout (408) and the JSON rendering of every error status the
//! stack answers without a JSON body (404, 405, 413, ...).
//!
//! Three `from_fn` middlewares and tower-http's timeout did the same with
//! a boxed future, a `Next` and a timer per request. Here a request costs
//! no allocation, no timer and no clock read unless its answer is not
//! ready on the first poll: the timer is armed only then (the first poll is
//! when the request comes in), and only an error answer that needs its body read is
//! rendered in a boxed future.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::time::{Instant, Sleep};

use super::error::{
    canonical_reason, head_bytes, is_error_without_json, render_json_error, ApiError,
};

/// Makes [`Edge`] services.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLayer {
    max_header_bytes: usize,
    request_timeout: Duration,
}

impl EdgeLayer {
    /// A head over `max_header_bytes` gets a JSON 431; an answer not ready
    /// after `request_timeout` a JSON 408.
    pub fn new(max_header_bytes: usize, request_timeout: Duration) -> EdgeLayer {
        EdgeLayer {
            max_header_bytes,
            request_timeout,
        }
    }

    /// The JSON 431 for a request whose head is over the limit.
    pub fn refuse_long_head<B>(&self, request: &axum::http::Request<B>) -> Option<Response> {
        let max_header_bytes = self.max_header_bytes;
        let size = head_bytes(request);
        (size > max_header_bytes).then(|| {
            ApiError::Status {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                reason: format!(
                    "the request head is {size} bytes; at most {max_header_bytes} are accepted"
                ),
            }
            .into_response()
        })
    }
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            limits: *self,
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
    limits: EdgeLayer,
}

impl<S> tower::Service<Request> for Edge<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if let Some(refusal) = self.limits.refuse_long_head(&request) {
            return EdgeFuture::answered(refusal);
        }
        EdgeFuture {
            inner: Some(self.inner.call(request)),
            answer: None,
            request_timeout: self.limits.request_timeout,
            timer: None,
            rendering: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Edge`]'s answer: the inner service's, bounded in time, errors in
    /// JSON.
    pub struct EdgeFuture<F> {
        #[pin]
        inner: Option<F>,
        // An answer given without the inner service (431).
        answer: Option<Response>,
        request_timeout: Duration,
        // Armed on the first poll that finds the answer not ready: the
        // request's first poll, when it arrives (hyper polls an answer as
        // soon as it has asked for it).
        timer: Option<Pin<Box<Sleep>>>,
        // An error answer whose body is being read into its JSON reason.
        rendering: Option<Pin<Box<dyn Future<Output = Response> + Send>>>,
    }
}

impl<F> EdgeFuture<F> {
    fn answered(response: Response) -> EdgeFuture<F> {
        EdgeFuture {
            inner: None,
            answer: Some(response),
            request_timeout: Duration::ZERO,
            timer: None,
            rendering: None,
        }
    }
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(rendering) = this.rendering.as_mut() {
            return rendering.as_mut().poll(cx).map(Ok);
        }
        if let Some(answer) = this.answer.take() {
            return Poll::Ready(Ok(answer));
        }
        let inner = this
            .inner
            .as_mut()
            .as_pin_mut()
            .expect("EdgeFuture polled after it completed");
        let response = match inner.poll(cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => {
                let request_timeout = *this.request_timeout;
                let timer = this.timer.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + request_timeout))
                });
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.inner.set(None);
                *this.timer = None;
                let status = StatusCode::REQUEST_TIMEOUT;
                return Poll::Ready(Ok(ApiError::Status {
                    status,
                    reason: canonical_reason(status),
                }
                .into_response()));
            }
        };
        this.inner.set(None);
        *this.timer = None;
        if !is_error_without_json(&response) {
            return Poll::Ready(Ok(response));
        }
        let mut rendering = Box::pin(render_json_error(response));
        match rendering.as_mut().poll(cx) {
            Poll::Ready(response) => Poll::Ready(Ok(response)),
            Poll::Pending => {
                *this.rendering = Some(rendering);
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    fn app() -> Edge<Router> {
        let router = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }),
            )
            .route(
                "/yield-then-ok",
                get(|| async {
                    tokio::task::yield_now().await;
                    "ok"
                }),
            );
        tower::Layer::layer(&EdgeLayer::new(200, Duration::from_secs(5)), router)
    }

    async fn call(app: &Edge<Router>, request: Request) -> (StatusCode, String, String) {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn get_request(path: &str) -> Request {
        Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_gets_a_json_408_at_the_deadline_and_not_before() {
        let app = app();
        let started = Instant::now();
        let (status, content_type, body) = call(&app, get_request("/slow")).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(content_type, "application/json");
        assert!(body.contains("\"code\":\"request_timeout\""), "{body}");
        assert!(body.contains("\"reason\":\"request timeout\""), "{body}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_ready_later_but_in_time_passes_unchanged() {
        let app = app();
        let (status, _, body) = call(&app, get_request("/yield-then-ok")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
        let (status, _, body) = call(&app, get_request("/ok")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }

    #[tokio::test]
    async fn errors_without_a_json_body_are_rendered_and_long_heads_refused() {
        let app = app();
        let (status, content_type, body) = call(&app, get_request("/nowhere")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(content_type, "application/json");
        assert!(body.contains("\"code\":\"not_found\""), "{body}");
        let request = Request::get("/ok")
            .header("x-padding", "a".repeat(300))
            .body(Body::empty())
            .unwrap();
        let (status, content_type, body) = call(&app, request).await;
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(content_type, "application/json");
        assert!(body.contains("at most 200 are accepted"), "{body}");
    }
}
