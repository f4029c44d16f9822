//! What a TURN user name may hold (pure): shared by REST API credentials,
//! client tokens' `sub` and the allocator's `?username=`.

/// A `username` query value safe to embed: 1-64 of `[A-Za-z0-9_.@-]`.
pub fn is_safe_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'@'))
}
