//! The agent's routes: `GET /turncredential` and `GET /ice`, the requests
//! browsers and signalling servers send most, answered at once without
//! the router, and every other request by the router.
//!
//! The fast path runs the same request count, CORS and access checks
//! ([`guard::AccessLayer::answer_now`]), the same head limit
//! ([`EdgeLayer::refuse_long_head`]) and the same answer functions as the
//! router's routes. It skips what the router costs per request: boxing
//! the request body, the peer and matched-path extensions, finding the
//! route, cloning its boxed service and boxing the handler's future. Its
//! answers are made at once, so the request timeout has nothing to time.
//! Any other method on these paths (HEAD, OPTIONS, POST) still goes to the
//! router, which answers it as before.

use std::convert::Infallible;
use std::future::{Future, Ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{Method, Request as HttpRequest};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;

use super::{guard, Answer, RequestCounter, SharedState};
use crate::http::edge::EdgeLayer;
use crate::http::server::Routes;
use crate::http::ApiError;

/// The paths the fast path answers (for `GET` only), with their answers.
pub(super) const FAST_PATHS: [(&str, Answer); 2] = [
    ("/turncredential", super::credential_answer),
    ("/ice", super::ice_answer),
];

/// The agent's routes: see the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    state: SharedState,
    access: guard::AccessLayer<RequestCounter>,
    router: Router,
    /// The peer address of requests without one (router tests only).
    #[cfg(test)]
    mock_peer: Option<SocketAddr>,
}

impl Api {
    pub(super) fn new(
        state: SharedState,
        access: guard::AccessLayer<RequestCounter>,
        router: Router,
    ) -> Api {
        Api {
            state,
            access,
            router,
            #[cfg(test)]
            mock_peer: None,
        }
    }

    /// The answer of a request the fast path answers.
    fn fast_answer<B>(request: &HttpRequest<B>) -> Option<Answer> {
        if request.method() != Method::GET {
            return None;
        }
        let path = request.uri().path();
        FAST_PATHS
            .iter()
            .find(|(fast, _)| *fast == path)
            .map(|&(_, answer)| answer)
    }

    /// The fast path's `answer` to `request` from `peer`.
    fn answer_now<B>(
        &self,
        answer: Answer,
        request: &mut HttpRequest<B>,
        peer: Result<SocketAddr, ApiError>,
    ) -> Response {
        self.access.answer_now(request, peer, |request| {
            let subject = request.extensions().get::<guard::ClientSubject>();
            answer(&self.state, request.uri(), subject).unwrap_or_else(IntoResponse::into_response)
        })
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
    pub(crate) fn with_mock_peer(mut self, peer: SocketAddr) -> Api {
        self.mock_peer = Some(peer);
        self.router = self
            .router
            .layer(axum::extract::connect_info::MockConnectInfo(peer));
        self
    }
}

/// How the server calls it: the fast path with the connection's peer, the
/// rest through the router.
impl Routes for Api {
    type Answer = ApiFuture;

    fn answer(
        &self,
        mut request: hyper::Request<Incoming>,
        peer: SocketAddr,
        edge: &EdgeLayer,
    ) -> ApiFuture {
        let Some(fast) = Api::fast_answer(&request) else {
            return ApiFuture::Router {
                answer: Routes::answer(&self.router, request, peer, edge),
            };
        };
        let answer = edge
            .refuse_long_head(&request)
            .unwrap_or_else(|| self.answer_now(fast, &mut request, Ok(peer)));
        ApiFuture::Now {
            answer: std::future::ready(Ok(answer)),
        }
    }
}

/// How router tests call it (`oneshot` with a mock peer): the same fast
/// path, with the peer from the request's `ConnectInfo`.
impl tower::Service<Request> for Api {
    type Response = Response;
    type Error = Infallible;
    type Future = ApiFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready; the fast path needs nothing.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> ApiFuture {
        #[cfg(test)]
        if let Some(peer) = self.mock_peer {
            request
                .extensions_mut()
                .insert(axum::extract::connect_info::MockConnectInfo(peer));
        }
        let Some(fast) = Api::fast_answer(&request) else {
            return ApiFuture::Inner {
                answer: tower::Service::call(&mut self.router, request),
            };
        };
        let peer = guard::connection_peer(&request);
        let answer = self.answer_now(fast, &mut request, peer);
        ApiFuture::Now {
            answer: std::future::ready(Ok(answer)),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Api`]'s answer.
    #[project = ApiFutureProjection]
    pub enum ApiFuture {
        Now { #[pin] answer: Ready<Result<Response, Infallible>> },
        Router { #[pin] answer: <Router as Routes>::Answer },
        Inner { #[pin] answer: <Router as tower::Service<Request>>::Future },
    }
}

impl Future for ApiFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ApiFutureProjection::Now { answer } => answer.poll(cx),
            ApiFutureProjection::Router { answer } => answer.poll(cx),
            ApiFutureProjection::Inner { answer } => answer.poll(cx),
        }
    }
}
