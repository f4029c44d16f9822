//! The agent's service: `GET /turncredential` and `GET /ice`, the requests
//! browsers and signalling servers send most, answered without the
//! router, and every other request by the router.
//!
//! The fast path goes through the same [`guard::Access`] (request count,
//! CORS, access checks) and the same answer functions as the router's
//! routes; it only skips the router's own work per request (finding the
//! route, the matched-path and URL-parameter extensions, cloning the
//! route's boxed service, boxing the handler's future). Any other method
//! on these paths (HEAD, OPTIONS, POST) still goes to the router, which
//! answers it as before.

use std::convert::Infallible;
use std::future::{Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::{guard, RequestCounter, SharedState};

/// The paths the fast path answers (for `GET` only).
pub const FAST_PATHS: [&str; 2] = ["/turncredential", "/ice"];

/// The agent's routes: see the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    fast: guard::Access<FastRoutes, RequestCounter>,
    router: Router,
    /// The peer address of requests without one (router tests only).
    #[cfg(test)]
    mock_peer: Option<std::net::SocketAddr>,
}

impl Api {
    pub(super) fn new(
        state: SharedState,
        access: guard::AccessLayer<RequestCounter>,
        router: Router,
    ) -> Api {
        Api {
            fast: tower::Layer::layer(&access, FastRoutes { state }),
            router,
            #[cfg(test)]
            mock_peer: None,
        }
    }

    /// The router alone, without the fast path in front of it.
    #[cfg(test)]
    pub(crate) fn router_only(&self) -> Router {
        self.router.clone()
    }

    /// The router changed by `change` (to add routes for a test).
    #[cfg(test)]
    pub(crate) fn map_router(mut self, change: impl FnOnce(Router) -> Router) -> Api {
        self.router = change(self.router);
        self
    }

    /// Requests without a connection address come from `peer` (what
    /// axum's `MockConnectInfo` does for a router).
    #[cfg(test)]
    pub(crate) fn with_mock_peer(mut self, peer: std::net::SocketAddr) -> Api {
        self.mock_peer = Some(peer);
        self.router = self
            .router
            .layer(axum::extract::connect_info::MockConnectInfo(peer));
        self
    }
}

impl tower::Service<Request> for Api {
    type Response = Response;
    type Error = Infallible;
    type Future = ApiFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready (the router, and `Access` around a service
        // that always is).
        Poll::Ready(Ok(()))
    }

    #[cfg_attr(not(test), allow(unused_mut))]
    fn call(&mut self, mut request: Request) -> ApiFuture {
        #[cfg(test)]
        if let Some(peer) = self.mock_peer {
            request
                .extensions_mut()
                .insert(axum::extract::connect_info::MockConnectInfo(peer));
        }
        if request.method() == Method::GET && FAST_PATHS.contains(&request.uri().path()) {
            return ApiFuture::Fast {
                answer: self.fast.call(request),
            };
        }
        ApiFuture::Router {
            answer: tower::Service::call(&mut self.router, request),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Api`]'s answer.
    #[project = ApiFutureProjection]
    pub enum ApiFuture {
        Fast { #[pin] answer: guard::AccessFuture<Ready<Result<Response, Infallible>>, RequestCounter> },
        Router { #[pin] answer: <Router as tower::Service<Request>>::Future },
    }
}

impl Future for ApiFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ApiFutureProjection::Fast { answer } => answer.poll(cx),
            ApiFutureProjection::Router { answer } => answer.poll(cx),
        }
    }
}

/// `GET /turncredential` and `GET /ice` behind the access checks.
#[derive(Clone)]
pub struct FastRoutes {
    state: SharedState,
}

impl tower::Service<Request> for FastRoutes {
    type Response = Response;
    type Error = Infallible;
    type Future = Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let subject = request.extensions().get::<guard::ClientSubject>();
        let uri = request.uri();
        let answer = match uri.path() {
            "/turncredential" => super::credential_answer(&self.state, uri, subject),
            _ => super::ice_answer(&self.state, uri, subject),
        };
        std::future::ready(Ok(answer.unwrap_or_else(IntoResponse::into_response)))
    }
}
