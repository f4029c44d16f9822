//! `POST /rotate[?revoke=true]` (operator permission `rotate`).
//!
//! A plain rotation publishes a new credential and leaves the old users to
//! their grace period. A revoke (long-term mode) rotates, deletes every
//! earlier agent user at once and ends their sessions through the control
//! channel: coturn keeps relaying allocations made before a user was
//! deleted, so a leaked credential stops working only once its sessions
//! are gone. A revoke that could not end them says so (503), never
//! `"terminated"` as if it had.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::sessions::{end_sessions_of_users, Ended};
use super::{no_store, ApiError, SharedState};
use crate::config::CredentialMode;
use crate::credentials::RotateError;

#[derive(Debug, Deserialize)]
pub(super) struct RotateQuery {
    revoke: Option<String>,
}

/// `revoke` is `true` or `false`; anything else is the caller's mistake.
fn parse_revoke(value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::BadRequest(
            "revoke: expected true or false".into(),
        )),
    }
}

fn rotate_error(error: RotateError) -> ApiError {
    match error {
        RotateError::RevokeNeedsLongTerm => ApiError::Status {
            status: axum::http::StatusCode::CONFLICT,
            reason: error.to_string(),
        },
        error => match error.retry_after_secs() {
            Some(retry_after_secs) => ApiError::TooManyRequests { retry_after_secs },
            None => ApiError::Unavailable(error.to_string()),
        },
    }
}

pub(super) async fn rotate(
    State(state): State<SharedState>,
    query: Result<Query<RotateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    if !parse_revoke(query.revoke.as_deref())? {
        return super::rotate(State(state)).await;
    }
    // Refuse before rotating what cannot be done in full.
    if state.readiness.credentials.borrow().mode != CredentialMode::LongTerm {
        return Err(rotate_error(RotateError::RevokeNeedsLongTerm));
    }
    {
        let control = state.control.status.borrow();
        if !control.enabled {
            return Err(ApiError::Unavailable(
                "revoke ends the old users' sessions through the control channel, which is off (turnserver.control); nothing was rotated".into(),
            ));
        }
        if !control.up {
            return Err(ApiError::Unavailable(
                "revoke ends the old users' sessions through the control channel, and turnserver's CLI is not answering; nothing was rotated".into(),
            ));
        }
    }
    let rotated = state.rotate.revoke().await.map_err(rotate_error)?;
    if let Some((user, error)) = rotated.not_revoked.first() {
        return Err(ApiError::Unavailable(format!(
            "rotated to {}, revoked {:?}, but cannot delete user {user}: {error}",
            rotated.credential, rotated.revoked
        )));
    }
    let ended = end_sessions_of_users(&state, &rotated.revoked)
        .await
        .map_err(|error| {
            ApiError::Unavailable(format!(
                "rotated to {} and deleted {:?}, but cannot end their sessions: {error}",
                rotated.credential, rotated.revoked
            ))
        })?;
    match ended {
        Ended {
            terminated,
            remaining: 0,
        } => Ok(no_store(
            Json(json!({
                "rotated": true,
                "credential": rotated.credential,
                "revoked": rotated.revoked,
                "terminated": terminated,
            }))
            .into_response(),
        )),
        Ended {
            terminated,
            remaining,
        } => Err(ApiError::Unavailable(format!(
            "rotated to {} and deleted {:?}; ended {terminated} of their sessions, {remaining} are still listed",
            rotated.credential, rotated.revoked
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_takes_true_or_false_only() {
        assert!(!parse_revoke(None).unwrap());
        assert!(!parse_revoke(Some("false")).unwrap());
        assert!(parse_revoke(Some("true")).unwrap());
        for bad in ["", "1", "yes", "TRUE", "true ", "true\r\nhalt"] {
            assert!(parse_revoke(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
