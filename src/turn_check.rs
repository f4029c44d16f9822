//! A real TURN allocation against our own turnserver with a credential we
//! serve, then its release: the only check that proves clients can relay.
//!
//! Allocate without credentials (to learn the realm and nonce), Allocate
//! with long-term MESSAGE-INTEGRITY, then Refresh with lifetime 0. Messages
//! and integrity come from `stun_codec`.

use std::net::SocketAddr;
use std::time::Duration;

use stun_codec::define_attribute_enums;
use stun_codec::rfc5389::attributes::{
    ErrorCode, Fingerprint, MessageIntegrity, Nonce, Realm, Software, Username, XorMappedAddress,
};
use stun_codec::rfc5766::attributes::{Lifetime, RequestedTransport, XorRelayAddress};
use stun_codec::rfc5766::methods::{ALLOCATE, REFRESH};
use stun_codec::{Message, MessageClass, Method, TransactionId};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::secret::Secret;
use crate::stun_client::{self, ExchangeError};

define_attribute_enums!(
    TurnAttribute,
    TurnAttributeDecoder,
    TurnAttributeEncoder,
    [
        Username,
        Realm,
        Nonce,
        MessageIntegrity,
        ErrorCode,
        Lifetime,
        RequestedTransport,
        XorRelayAddress,
        XorMappedAddress,
        Software,
        Fingerprint
    ]
);

/// IANA protocol number of UDP, for REQUESTED-TRANSPORT.
const UDP: u8 = 17;

#[derive(Debug, thiserror::Error)]
pub enum TurnCheckError {
    #[error("turnserver rejected the credential ({0})")]
    AuthRejected(String),
    #[error("no TURN answer within {0:?}")]
    Timeout(Duration),
    #[error("turnserver refused the allocation: {0}")]
    Refused(String),
    #[error("TURN check failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("TURN check failed: {0}")]
    Protocol(String),
}

/// Allocates a relay on `server` as `username` and releases it again.
/// Returns the time the whole exchange took.
pub async fn allocate_and_release(
    server: SocketAddr,
    username: &str,
    password: &Secret,
    timeout: Duration,
) -> Result<Duration, TurnCheckError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let socket = stun_client::connect(server).await?;

    // 1. Unauthenticated: the server answers 401 with its realm and nonce.
    let mut probe = request(ALLOCATE);
    probe.add_attribute(RequestedTransport::new(UDP));
    let challenge = exchange(&socket, probe, deadline, timeout).await?;
    let realm = challenge
        .get_attribute::<Realm>()
        .cloned()
        .ok_or_else(|| TurnCheckError::Protocol("no REALM in the 401 challenge".into()))?;
    let mut nonce = challenge
        .get_attribute::<Nonce>()
        .cloned()
        .ok_or_else(|| TurnCheckError::Protocol("no NONCE in the 401 challenge".into()))?;
    let user =
        Username::new(username.to_string()).map_err(|e| TurnCheckError::Protocol(e.to_string()))?;

    // 2. Authenticated Allocate; one retry on a stale nonce (438).
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut allocate = request(ALLOCATE);
        allocate.add_attribute(RequestedTransport::new(UDP));
        sign(&mut allocate, &user, &realm, &nonce, password)?;
        let answer = exchange(&socket, allocate, deadline, timeout).await?;
        match answer.class() {
            MessageClass::SuccessResponse => break,
            _ => {
                let (code, reason) = error_of(&answer);
                if code == 438 && attempts == 1 {
                    if let Some(fresh) = answer.get_attribute::<Nonce>() {
                        nonce = fresh.clone();
                        continue;
                    }
                }
                return Err(match code {
                    401 => TurnCheckError::AuthRejected(format!("{code} {reason}")),
                    _ => TurnCheckError::Refused(format!("{code} {reason}")),
                });
            }
        }
    }

    // 3. Release: Refresh with lifetime 0.
    let mut refresh = request(REFRESH);
    refresh.add_attribute(
        Lifetime::new(Duration::ZERO).map_err(|e| TurnCheckError::Protocol(e.to_string()))?,
    );
    sign(&mut refresh, &user, &realm, &nonce, password)?;
    let released = exchange(&socket, refresh, deadline, timeout).await?;
    if released.class() != MessageClass::SuccessResponse {
        let (code, reason) = error_of(&released);
        return Err(TurnCheckError::Refused(format!("release: {code} {reason}")));
    }
    Ok(started.elapsed())
}

fn request(method: Method) -> Message<TurnAttribute> {
    Message::new(
        MessageClass::Request,
        method,
        TransactionId::new(rand::random()),
    )
}

fn sign(
    message: &mut Message<TurnAttribute>,
    user: &Username,
    realm: &Realm,
    nonce: &Nonce,
    password: &Secret,
) -> Result<(), TurnCheckError> {
    message.add_attribute(user.clone());
    message.add_attribute(realm.clone());
    message.add_attribute(nonce.clone());
    let integrity =
        MessageIntegrity::new_long_term_credential(message, user, realm, password.expose())
            .map_err(|e| TurnCheckError::Protocol(e.to_string()))?;
    message.add_attribute(integrity);
    Ok(())
}

fn error_of(message: &Message<TurnAttribute>) -> (u16, String) {
    message
        .get_attribute::<ErrorCode>()
        .map(|error| (error.code(), error.reason_phrase().to_string()))
        .unwrap_or((0, "no ERROR-CODE".into()))
}

/// Sends `message` (again at half the remaining time) and returns the
/// answer with its transaction id.
async fn exchange(
    socket: &UdpSocket,
    message: Message<TurnAttribute>,
    deadline: Instant,
    timeout: Duration,
) -> Result<Message<TurnAttribute>, TurnCheckError> {
    stun_client::exchange(socket, message, deadline, |_| true)
        .await
        .map_err(|error| match error {
            ExchangeError::Timeout => TurnCheckError::Timeout(timeout),
            ExchangeError::Io(error) => TurnCheckError::Io(error),
            ExchangeError::Encode(error) => TurnCheckError::Protocol(error),
        })
}
