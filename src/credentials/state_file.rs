//! The agent's credential state on disk, written so that a crash at any
//! instant leaves either the old or the new file, never a torn one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

pub const STATE_VERSION: u32 = 1;

/// A long-term credential the agent created and may have served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongTermCredential {
    pub username: String,
    pub password: Secret,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; also encoded in the username.
    pub expires_at: u64,
}

/// A REST API shared secret the agent created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedSecret {
    pub value: Secret,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds after which no credential minted with it is valid; set
    /// when a newer secret replaced it.
    pub retired_until: Option<u64>,
}

/// Everything the agent must remember across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialState {
    pub version: u32,
    pub realm: String,
    /// The long-term credential being served.
    #[serde(default)]
    pub current: Option<LongTermCredential>,
    /// Usernames that were served and still wait for deletion.
    #[serde(default)]
    pub served: Vec<String>,
    /// REST API secrets, oldest first; the newest unretired one signs.
    #[serde(default)]
    pub secrets: Vec<SharedSecret>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid state file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Reads the state file; `Ok(None)` when there is none yet.
pub fn load(path: &Path) -> Result<Option<CredentialState>, StateFileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateFileError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    // serde_json's messages name positions and types, never values.
    let state: CredentialState =
        serde_json::from_slice(&bytes).map_err(|error| StateFileError::Parse {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
    if state.version != STATE_VERSION {
        return Err(StateFileError::Parse {
            path: path.to_path_buf(),
            message: format!("unsupported version {}", state.version),
        });
    }
    Ok(Some(state))
}

/// Writes `state` atomically: a temp file (mode 0600) in the same
/// directory, fsync, rename over the old file, fsync of the directory.
pub fn store(path: &Path, state: &CredentialState) -> Result<(), StateFileError> {
    let write_error = |source| StateFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let directory = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| write_error(io::Error::other("state file path has no file name")))?;
    let temp_path = directory.join(format!(".{}.tmp", file_name.to_string_lossy()));
    let bytes =
        serde_json::to_vec_pretty(state).map_err(|error| write_error(io::Error::other(error)))?;

    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp_path)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp_path, path)?;
        File::open(directory)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp_path);
    }
    result.map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> CredentialState {
        CredentialState {
            version: STATE_VERSION,
            realm: "example.org".into(),
            current: Some(LongTermCredential {
                username: "ta1-100-abc".into(),
                password: Secret::new("pw"),
                issued_at: 10,
                expires_at: 100,
            }),
            served: vec!["ta1-50-def".into()],
            secrets: Vec::new(),
        }
    }

    #[test]
    fn round_trips_with_mode_0600_and_no_temp_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential.json");
        assert_eq!(load(&path).unwrap(), None);
        store(&path, &sample()).unwrap();
        store(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("credential.json")]);
    }

    #[test]
    fn corrupt_file_is_an_error_that_names_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential.json");
        std::fs::write(
            &path,
            r#"{"version":1,"realm":"r","current":{"username":"u","password":"hunter2""#,
        )
        .unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("not a valid state file"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        let error = store(Path::new("/nonexistent-dir/credential.json"), &sample()).unwrap_err();
        assert!(error
            .to_string()
            .starts_with("cannot write /nonexistent-dir/credential.json"));
    }
}
