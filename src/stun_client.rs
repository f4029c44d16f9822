//! One STUN request over UDP and its answer, as both the supervisor's
//! Binding probe and the TURN self-check send them: the request goes out
//! again at half the time left, so one lost datagram does not fail a check,
//! and stray or stale datagrams are skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::{Attribute, Message, MessageDecoder, MessageEncoder, TransactionId};
use tokio::net::UdpSocket;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("no answer before the deadline")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

/// A UDP socket connected to `server`, from the unspecified address of its
/// family.
pub async fn connect(server: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = match server.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    Ok(socket)
}

/// `datagram` decoded, if it is a STUN message for `transaction`.
pub fn decode_answer<A: Attribute>(
    datagram: &[u8],
    transaction: TransactionId,
) -> Option<Message<A>> {
    let mut decoder = MessageDecoder::<A>::new();
    match decoder.decode_from_bytes(datagram) {
        Ok(Ok(message)) if message.transaction_id() == transaction => Some(message),
        _ => None,
    }
}

/// Sends `request` and returns the first answer to it that `accept` takes;
/// others are skipped like stray datagrams.
pub async fn exchange<A: Attribute>(
    socket: &UdpSocket,
    request: Message<A>,
    deadline: Instant,
    accept: impl Fn(&Message<A>) -> bool,
) -> Result<Message<A>, ExchangeError> {
    let transaction = request.transaction_id();
    let bytes = MessageEncoder::new()
        .encode_into_bytes(request)
        .map_err(|error| ExchangeError::Encode(error.to_string()))?;
    let now = Instant::now();
    let resend_at = now + deadline.saturating_duration_since(now) / 2;
    let mut resent = false;
    socket.send(&bytes).await?;
    let mut buffer = [0u8; 2048];
    loop {
        let wake = if resent { deadline } else { resend_at };
        match tokio::time::timeout_at(wake, socket.recv(&mut buffer)).await {
            Ok(received) => {
                let length = received?;
                if let Some(answer) = decode_answer(&buffer[..length], transaction) {
                    if accept(&answer) {
                        return Ok(answer);
                    }
                }
            }
            Err(_) if !resent => {
                resent = true;
                socket.send(&bytes).await?;
            }
            Err(_) => return Err(ExchangeError::Timeout),
        }
    }
}
