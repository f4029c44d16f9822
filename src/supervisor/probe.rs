//! The STUN Binding probe that tells a serving turnserver from a hung one.
//!
//! turnserver prints no ready line and keeps its process alive through many
//! faults, so the only honest health signal is an answer on the wire.

use std::net::SocketAddr;
use std::time::Duration;

use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5389::Attribute;
use stun_codec::{Message, MessageClass, TransactionId};
use tokio::time::Instant;

use crate::stun_client::{self, ExchangeError};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no STUN answer within {0:?}")]
    Timeout(Duration),
    #[error("STUN probe failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("STUN probe could not encode its request: {0}")]
    Encode(String),
}

/// Sends a STUN Binding request to `server` and waits for the success
/// response carrying the same transaction id. Returns the round-trip time.
///
/// The request is sent again halfway through `timeout`, so one lost datagram
/// does not count as a failed probe.
pub async fn stun_binding(server: SocketAddr, timeout: Duration) -> Result<Duration, ProbeError> {
    let socket = stun_client::connect(server).await?;
    let transaction_id = TransactionId::new(rand::random());
    let request = Message::<Attribute>::new(MessageClass::Request, BINDING, transaction_id);
    let started = Instant::now();
    stun_client::exchange(&socket, request, started + timeout, is_binding_success)
        .await
        .map_err(|error| match error {
            ExchangeError::Timeout => ProbeError::Timeout(timeout),
            ExchangeError::Io(error) => ProbeError::Io(error),
            ExchangeError::Encode(error) => ProbeError::Encode(error),
        })?;
    Ok(started.elapsed())
}

fn is_binding_success(message: &Message<Attribute>) -> bool {
    message.method() == BINDING && message.class() == MessageClass::SuccessResponse
}

/// A Binding success response for our transaction; anything else (stray
/// datagrams, answers to an earlier probe, garbage) is ignored.
#[cfg(test)]
fn is_answer(datagram: &[u8], transaction_id: TransactionId) -> bool {
    stun_client::decode_answer(datagram, transaction_id).is_some_and(|m| is_binding_success(&m))
}

#[cfg(test)]
mod tests {
    use bytecodec::{DecodeExt, EncodeExt};
    use stun_codec::{MessageDecoder, MessageEncoder};
    use tokio::net::UdpSocket;

    use super::*;

    /// A minimal STUN responder for the probe's own tests: it answers with a
    /// success response built by the same codec.
    async fn responder(answer: bool) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buffer = [0u8; 1500];
            while let Ok((length, peer)) = socket.recv_from(&mut buffer).await {
                let mut decoder = MessageDecoder::<Attribute>::new();
                let Ok(Ok(request)) = decoder.decode_from_bytes(&buffer[..length]) else {
                    continue;
                };
                // A stray datagram first: the probe must skip it.
                let _ = socket.send_to(b"garbage", peer).await;
                if answer {
                    let response = Message::<Attribute>::new(
                        MessageClass::SuccessResponse,
                        BINDING,
                        request.transaction_id(),
                    );
                    let bytes = MessageEncoder::new().encode_into_bytes(response).unwrap();
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn answered_probe_succeeds() {
        let addr = responder(true).await;
        stun_binding(addr, Duration::from_millis(500))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let addr = responder(false).await;
        let error = stun_binding(addr, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(error, ProbeError::Timeout(_)), "{error}");
    }

    #[test]
    fn wrong_transaction_is_not_an_answer() {
        let response = Message::<Attribute>::new(
            MessageClass::SuccessResponse,
            BINDING,
            TransactionId::new([1; 12]),
        );
        let bytes = MessageEncoder::new().encode_into_bytes(response).unwrap();
        assert!(is_answer(&bytes, TransactionId::new([1; 12])));
        assert!(!is_answer(&bytes, TransactionId::new([2; 12])));
        assert!(!is_answer(&bytes[..10], TransactionId::new([1; 12])));
    }
}
