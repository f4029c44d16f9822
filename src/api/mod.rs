//! The HTTP API: router, handlers, and the server loop.
//!
//! The router is built by [`router`] from shared state so tests can drive it
//! with `tower::ServiceExt::oneshot`; [`serve`] takes an already-bound
//! listener and a shutdown token.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::supervisor::SupervisorStatus;

/// What the handlers read; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub supervisor: watch::Receiver<SupervisorStatus>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

/// 200 while the agent's HTTP server runs: liveness, not readiness.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 only while turnserver answers STUN; 503 with the reason otherwise.
async fn readyz(State(state): State<ApiState>) -> Response {
    let status = state.supervisor.borrow().clone();
    if status.is_ready() {
        (
            StatusCode::OK,
            Json(json!({ "status": "ready", "turnserver": status })),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not-ready",
                "reason": status.reason(),
                "turnserver": status,
            })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::Phase;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_json(app: Router, path: &str) -> (StatusCode, serde_json::Value) {
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn readyz_follows_the_supervisor() {
        let (sender, receiver) = watch::channel(SupervisorStatus::default());
        let app = router(ApiState {
            supervisor: receiver,
        });

        let (status, body) = get_json(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["reason"], "turnserver is starting");

        sender.send_modify(|s| {
            s.phase = Phase::Ready;
            s.pid = Some(42);
        });
        let (status, body) = get_json(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["turnserver"]["pid"], 42);
        assert_eq!(body["turnserver"]["phase"], "ready");

        let (status, body) = get_json(app, "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");
    }
}
