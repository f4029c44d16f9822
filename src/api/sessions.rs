//! `/sessions`: coturn's sessions from the control channel, and ending
//! them (operator permission, like `/rotate` and `/drain`).
//!
//! Nothing from the request reaches coturn's CLI as text: an id must be a
//! number (`SessionId`), and a user name only selects sessions from a fresh
//! `ps` listing; what is sent is the listed ids.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, ApiState};
use crate::control::ControlError;
use crate::coturn_cli::command::{SessionId, UserName};
use crate::coturn_cli::listing::{Session, SessionListing};

#[derive(Debug, Deserialize)]
pub(super) struct SessionsQuery {
    user: Option<String>,
}

/// One session as `GET /sessions` shows it.
#[derive(Debug, Serialize, PartialEq)]
pub struct SessionView {
    /// coturn's id, as printed (digits).
    pub id: String,
    pub user: String,
    pub realm: Option<String>,
    pub client: Option<String>,
    pub relay: Vec<String>,
    pub transport: &'static str,
    pub age_s: Option<u64>,
    /// coturn's lifetime average (its `rate:` line), bytes per second.
    pub rx_bps: u64,
    pub tx_bps: u64,
}

impl SessionView {
    pub fn new(session: &Session) -> SessionView {
        SessionView {
            id: session.id.to_string(),
            user: session.user.clone(),
            realm: session.realm.clone(),
            client: session.client_addr.map(|address| address.to_string()),
            relay: session
                .relay_addrs
                .iter()
                .map(ToString::to_string)
                .collect(),
            transport: session.client_transport.name(),
            age_s: session.age_secs,
            rx_bps: session.lifetime_rate.received,
            tx_bps: session.lifetime_rate.sent,
        }
    }
}

/// A `?user=` filter, checked before any listing: a name the CLI could not
/// take safely is a 400.
fn user_filter(user: Option<String>) -> Result<Option<UserName>, ApiError> {
    user.map(|name| {
        UserName::new(&name).map_err(|error| ApiError::BadRequest(format!("user: {error}")))
    })
    .transpose()
}

fn matching<'a>(
    listing: &'a SessionListing,
    user: Option<&'a UserName>,
) -> impl Iterator<Item = &'a Session> {
    listing
        .sessions
        .iter()
        .filter(move |session| user.is_none_or(|user| session.user == user.as_str()))
}

fn unavailable(error: ControlError) -> ApiError {
    ApiError::Unavailable(error.to_string())
}

/// `GET /sessions[?user=NAME]`.
pub(super) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<SessionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let user = user_filter(query.user)?;
    let listing = state.control.sessions().await.map_err(unavailable)?;
    let sessions: Vec<SessionView> = matching(&listing, user.as_ref())
        .map(SessionView::new)
        .collect();
    let total = if user.is_some() {
        sessions.len() as u64
    } else {
        listing.total
    };
    Ok(Json(json!({
        "total": total,
        "complete": listing.is_complete(),
        "sessions": sessions,
    }))
    .into_response())
}

/// `DELETE /sessions?user=NAME`: ends every listed session of that user.
pub(super) async fn end_by_user(
    State(state): State<ApiState>,
    query: Result<Query<SessionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let Some(user) = user_filter(query.user)? else {
        return Err(ApiError::BadRequest(
            "name the sessions to end: DELETE /sessions/{id} or DELETE /sessions?user=NAME".into(),
        ));
    };
    let terminated = end_sessions_of(&state, &user).await?;
    Ok(Json(json!({ "terminated": terminated })).into_response())
}

/// Ends every session of `user` and returns how many a fresh listing no
/// longer shows.
pub async fn end_sessions_of(state: &ApiState, user: &UserName) -> Result<usize, ApiError> {
    let ended = end_matching(state, |session| session.user == user.as_str())
        .await
        .map_err(unavailable)?;
    Ok(ended.terminated)
}

/// Ends every session of the agent users in `users` (a revoke), including
/// any that appears while the first ones are ended.
pub async fn end_sessions_of_users(
    state: &ApiState,
    users: &[String],
) -> Result<Ended, ControlError> {
    if users.is_empty() {
        return Ok(Ended::default());
    }
    end_matching(state, |session| users.contains(&session.user)).await
}

/// How ending a set of sessions went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Asked to end and no longer listed.
    pub terminated: usize,
    /// Asked to end and still listed when the time to confirm ran out.
    pub remaining: usize,
}

/// How long ending sessions may wait for a listing without them.
const CONFIRM_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

/// One listing, `cs` for every matching session in one batch, then fresh
/// listings until none of them is listed or [`CONFIRM_WITHIN`] has passed
/// (coturn answers `cs` with nothing). A matching session that appears
/// meanwhile is ended too.
async fn end_matching(
    state: &ApiState,
    wanted: impl Fn(&Session) -> bool,
) -> Result<Ended, ControlError> {
    let mut asked: std::collections::HashSet<SessionId> = std::collections::HashSet::new();
    let mut listing = state.control.sessions().await?;
    let deadline = tokio::time::Instant::now() + CONFIRM_WITHIN;
    loop {
        let new: Vec<SessionId> = listing
            .sessions
            .iter()
            .filter(|session| wanted(session) && !asked.contains(&session.id))
            .map(|session| session.id)
            .collect();
        let still = |listing: &SessionListing| {
            listing
                .sessions
                .iter()
                .filter(|session| asked.contains(&session.id))
                .count()
        };
        if new.is_empty() {
            let remaining = still(&listing);
            if remaining == 0 || tokio::time::Instant::now() >= deadline {
                return Ok(Ended {
                    terminated: asked.len() - remaining,
                    remaining,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            listing = state.control.sessions().await?;
        } else {
            asked.extend(new.iter().copied());
            listing = state.control.cancel(new).await?;
        }
    }
}

/// `DELETE /sessions/{id}`: 404 when no such session is listed.
pub(super) async fn end_one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: SessionId = id
        .parse()
        .map_err(|error: crate::coturn_cli::command::CommandError| {
            ApiError::BadRequest(format!("session id: {error}"))
        })?;
    let listing = state.control.sessions().await.map_err(unavailable)?;
    if !listing.sessions.iter().any(|session| session.id == id) {
        return Err(ApiError::Status {
            status: axum::http::StatusCode::NOT_FOUND,
            reason: format!("no session {id}"),
        });
    }
    let ended = end_matching(&state, |session| session.id == id)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({ "terminated": ended.terminated })).into_response())
}
