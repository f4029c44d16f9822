//! Opening the small files an operator points the agent at (configuration,
//! TLS certificate and key, tokens, ZooKeeper auth) without being hurt by
//! them, and judging the permissions of the ones that hold secrets.
//!
//! A path may name a FIFO (opening it blocks until a writer comes), a device
//! (`/dev/zero` never ends) or a huge file. [`read_limited`] opens with
//! `O_NONBLOCK`, so a FIFO open returns at once, checks with `fstat` on the
//! opened descriptor (no check-then-open race) that it is a regular file no
//! larger than the limit, and reads at most the limit.

use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Upper bound for a configuration file.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Upper bound for a PEM certificate chain or key.
pub const MAX_PEM_BYTES: u64 = 1 << 20;
/// Upper bound for a token or auth file.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Why a file was not read. Shown after the file's name.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read: {0}")]
    Open(io::Error),
    #[error("is a {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("is {size} bytes, more than the {limit} bytes allowed")]
    TooLarge { size: u64, limit: u64 },
    #[error("cannot read: {0}")]
    Read(io::Error),
    #[error("is not UTF-8 text")]
    NotUtf8,
}

/// Reads a regular file of at most `limit` bytes, without blocking on a
/// FIFO or reading a device.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(FileError::Open)?;
    let metadata = file.metadata().map_err(FileError::Read)?;
    let kind = file_kind(&metadata);
    if kind != "regular file" {
        return Err(FileError::NotRegular(kind));
    }
    if metadata.len() > limit {
        return Err(FileError::TooLarge {
            size: metadata.len(),
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    // The file may grow between fstat and read: read one byte past the
    // limit at most, to tell.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(FileError::Read)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// [`read_limited`] for text.
pub fn read_limited_text(path: &Path, limit: u64) -> Result<String, FileError> {
    String::from_utf8(read_limited(path, limit)?).map_err(|_| FileError::NotUtf8)
}

fn file_kind(metadata: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let file_type = metadata.file_type();
    if file_type.is_file() {
        "regular file"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Who may read a secret file, from its mode and group (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFileAccess {
    /// Only its owner (and the service's own group, if that owns it).
    Private,
    /// Every local user may read it.
    ReadableByOthers,
    /// Members of a group other than the service's may read it.
    ReadableByAnotherGroup,
}

/// Judges `mode` and `file_gid` against the group the service runs as.
pub fn secret_file_access(mode: u32, file_gid: u32, service_gid: u32) -> SecretFileAccess {
    if mode & 0o004 != 0 {
        SecretFileAccess::ReadableByOthers
    } else if mode & 0o040 != 0 && file_gid != service_gid {
        SecretFileAccess::ReadableByAnotherGroup
    } else {
        SecretFileAccess::Private
    }
}

/// Logs a warning for each secret file that more than the service may
/// read, with advice that works in the package layout. `what` names the
/// setting (`access.tokens[0].token_file`). Used by the agent and the
/// allocator service.
pub fn warn_if_readable_by_others<'a>(files: impl IntoIterator<Item = (String, &'a Path)>) {
    let service_gid = nix::unistd::getegid().as_raw();
    let service_user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map_or_else(|| "turn-agent".to_string(), |user| user.name);
    let service_group = nix::unistd::Group::from_gid(nix::unistd::getegid())
        .ok()
        .flatten()
        .map_or_else(|| "turn-agent".to_string(), |group| group.name);
    for (what, path) in files {
        let Ok(metadata) = std::fs::metadata(path) else {
            continue;
        };
        let mode = metadata.mode() & 0o7777;
        let shown = crate::log_safe::LogSafe::new(&path.to_string_lossy()).to_string();
        let advice = format!("chown {service_user}:{service_group} {shown}; chmod 0600 {shown}");
        match secret_file_access(mode, metadata.gid(), service_gid) {
            SecretFileAccess::Private => {}
            SecretFileAccess::ReadableByOthers => tracing::warn!(
                setting = %what,
                path = %shown,
                mode = format!("{mode:04o}"),
                %advice,
                "secret file is readable by every local user"
            ),
            SecretFileAccess::ReadableByAnotherGroup => tracing::warn!(
                setting = %what,
                path = %shown,
                mode = format!("{mode:04o}"),
                group = metadata.gid(),
                %advice,
                "secret file is readable by a group other than the service's"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_small_regular_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, "x = 1\n").unwrap();
        assert_eq!(read_limited_text(&path, 100).unwrap(), "x = 1\n");
    }

    #[test]
    fn devices_fifos_directories_and_large_files_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let started = Instant::now();
        assert!(matches!(
            read_limited(&fifo, 100),
            Err(FileError::NotRegular("FIFO"))
        ));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(matches!(
            read_limited(Path::new("/dev/zero"), 100),
            Err(FileError::NotRegular("character device"))
        ));
        assert!(matches!(
            read_limited(dir.path(), 100),
            Err(FileError::NotRegular("directory"))
        ));
        let big = dir.path().join("big");
        let file = std::fs::File::create(&big).unwrap();
        file.set_len(200 * 1024 * 1024).unwrap();
        assert!(matches!(
            read_limited(&big, MAX_CONFIG_BYTES),
            Err(FileError::TooLarge { size, .. }) if size == 200 * 1024 * 1024
        ));
        assert!(matches!(
            read_limited(&dir.path().join("missing"), 100),
            Err(FileError::Open(_))
        ));
    }

    #[test]
    fn secret_file_access_follows_mode_and_group() {
        use SecretFileAccess::*;
        assert_eq!(secret_file_access(0o600, 5, 7), Private);
        assert_eq!(secret_file_access(0o640, 7, 7), Private);
        assert_eq!(secret_file_access(0o640, 5, 7), ReadableByAnotherGroup);
        assert_eq!(secret_file_access(0o644, 7, 7), ReadableByOthers);
        assert_eq!(secret_file_access(0o604, 7, 7), ReadableByOthers);
    }
}
