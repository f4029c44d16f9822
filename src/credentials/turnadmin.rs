//! The shell around coturn's `turnadmin`: argv only, never a shell, and
//! nothing trusted until read back.
//!
//! turnadmin exits 0 even when its database write failed; the only sign is
//! an `ERROR:` line on stdout. So every change is checked for such lines and
//! then confirmed with a listing (`-l` for users, `-S` for secrets).
//! turnadmin also leaves a log file behind on every call; its path is on
//! stdout and the file is removed after the call.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::secret::Secret;

/// Upper bound on one turnadmin call; it normally takes 10-30 ms.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TurnadminError {
    #[error("cannot run turnadmin: {0}")]
    Spawn(std::io::Error),
    #[error("turnadmin {action} timed out after {CALL_TIMEOUT:?}")]
    Timeout { action: &'static str },
    #[error("turnadmin {action} failed: {message}")]
    Failed {
        action: &'static str,
        message: String,
    },
    #[error("turnadmin {action} reported success but {what}")]
    NotConfirmed { action: &'static str, what: String },
}

#[derive(Debug, Clone)]
pub struct Turnadmin {
    binary: PathBuf,
    database_args: Vec<String>,
    realm: String,
}

impl Turnadmin {
    pub fn new(binary: PathBuf, database_args: Vec<String>, realm: String) -> Turnadmin {
        Turnadmin {
            binary,
            database_args,
            realm,
        }
    }

    /// Adds (or replaces) a long-term user and confirms it is listed.
    pub async fn add_user(&self, username: &str, password: &Secret) -> Result<(), TurnadminError> {
        let action = "add user";
        self.run(
            action,
            &[
                "-a",
                "-u",
                username,
                "-r",
                &self.realm,
                "-p",
                password.expose(),
            ],
            Some(password),
        )
        .await?;
        if self.list_users().await?.iter().any(|user| user == username) {
            Ok(())
        } else {
            Err(TurnadminError::NotConfirmed {
                action,
                what: format!("user {username} is not listed"),
            })
        }
    }

    /// Deletes a long-term user and confirms it is gone.
    pub async fn delete_user(&self, username: &str) -> Result<(), TurnadminError> {
        let action = "delete user";
        self.run(action, &["-d", "-u", username, "-r", &self.realm], None)
            .await?;
        if self.list_users().await?.iter().any(|user| user == username) {
            Err(TurnadminError::NotConfirmed {
                action,
                what: format!("user {username} is still listed"),
            })
        } else {
            Ok(())
        }
    }

    /// Long-term users of our realm.
    pub async fn list_users(&self) -> Result<Vec<String>, TurnadminError> {
        let output = self.run("list users", &["-l"], None).await?;
        Ok(parse_listing(&output, &self.realm))
    }

    /// Adds a REST API shared secret and confirms it is listed.
    pub async fn add_secret(&self, secret: &Secret) -> Result<(), TurnadminError> {
        let action = "add secret";
        self.run(
            action,
            &["-s", secret.expose(), "-r", &self.realm],
            Some(secret),
        )
        .await?;
        if self.list_secrets().await?.contains(secret) {
            Ok(())
        } else {
            Err(TurnadminError::NotConfirmed {
                action,
                what: "the new secret is not listed".into(),
            })
        }
    }

    /// Deletes one shared secret and confirms it is gone.
    pub async fn delete_secret(&self, secret: &Secret) -> Result<(), TurnadminError> {
        let action = "delete secret";
        self.run(
            action,
            &["-X", secret.expose(), "-r", &self.realm],
            Some(secret),
        )
        .await?;
        if self.list_secrets().await?.contains(secret) {
            Err(TurnadminError::NotConfirmed {
                action,
                what: "the secret is still listed".into(),
            })
        } else {
            Ok(())
        }
    }

    /// Shared secrets of our realm.
    pub async fn list_secrets(&self) -> Result<Vec<Secret>, TurnadminError> {
        let output = self
            .run("list secrets", &["-S", "-r", &self.realm], None)
            .await?;
        Ok(parse_listing(&output, &self.realm)
            .into_iter()
            .map(Secret::new)
            .collect())
    }

    /// Runs one call and returns its stdout. `sensitive` is scrubbed from
    /// any error message.
    async fn run(
        &self,
        action: &'static str,
        args: &[&str],
        sensitive: Option<&Secret>,
    ) -> Result<String, TurnadminError> {
        let child = Command::new(&self.binary)
            .args(args)
            .args(&self.database_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(TurnadminError::Spawn)?;
        let pid = child.id();
        let output = tokio::time::timeout(CALL_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| TurnadminError::Timeout { action })?
            .map_err(TurnadminError::Spawn)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if let Some(pid) = pid {
            remove_call_log(&stdout, pid);
        }

        let scrub = |text: &str| match sensitive {
            Some(secret) if !secret.expose().is_empty() => text.replace(secret.expose(), "***"),
            _ => text.to_string(),
        };
        let errors: Vec<&str> = stdout
            .lines()
            .chain(stderr.lines())
            .filter(|line| line.contains("ERROR:"))
            .map(str::trim)
            .collect();
        if !errors.is_empty() {
            return Err(TurnadminError::Failed {
                action,
                message: scrub(&errors.join("; ")),
            });
        }
        if !output.status.success() {
            return Err(TurnadminError::Failed {
                action,
                message: format!("{}: {}", output.status, scrub(stderr.trim())),
            });
        }
        Ok(stdout)
    }
}

/// `name[realm]` lines for `realm`; turnadmin's own log lines
/// (`<secs>: : text`) are skipped.
pub fn parse_listing(output: &str, realm: &str) -> Vec<String> {
    output
        .lines()
        .map(str::trim)
        .filter_map(|line| {
            let body = line.strip_suffix(']')?;
            let (name, line_realm) = body.rsplit_once('[')?;
            (line_realm == realm && !name.is_empty() && !name.contains(' '))
                .then(|| name.to_string())
        })
        .collect()
}

/// Removes the log file turnadmin announced (`log file opened: PATH`), if it
/// is really one of its per-call files (`turn_<pid>_<date>.log`).
fn remove_call_log(stdout: &str, pid: u32) {
    for line in stdout.lines() {
        let Some((_, path)) = line.split_once("log file opened: ") else {
            continue;
        };
        let path = Path::new(path.trim());
        let expected_prefix = format!("turn_{pid}_");
        let is_call_log = path.is_absolute()
            && path.file_name().is_some_and(|name| {
                let name = name.to_string_lossy();
                name.starts_with(&expected_prefix) && name.ends_with(".log")
            });
        if is_call_log {
            if let Err(error) = std::fs::remove_file(path) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::debug!(path = %path.display(), %error, "cannot remove turnadmin's log file");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_keeps_only_our_realm_and_skips_log_lines() {
        let output = "ta1-1-ab[example.org]\nalice[other.org]\n0: : SQLite connection was closed.\n\
                      0: : log file opened: /var/log/turn_1_2026-01-01.log\nbob[example.org]\n[example.org]\n";
        assert_eq!(
            parse_listing(output, "example.org"),
            vec!["ta1-1-ab", "bob"]
        );
    }

    /// A stand-in turnadmin: prints an ERROR line and exits 0, like the real
    /// one does when its database cannot be opened.
    fn fake_turnadmin(dir: &Path, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("turnadmin");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn error_lines_fail_the_call_even_with_exit_0_and_hide_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let binary = fake_turnadmin(dir.path(), "echo \"0: : ERROR: cannot store $7\"; exit 0");
        let turnadmin = Turnadmin::new(binary, vec![], "example.org".into());
        let error = turnadmin
            .add_user("ta1-1-ab", &Secret::new("hunter2"))
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("cannot store ***"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn unconfirmed_add_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let binary = fake_turnadmin(dir.path(), "exit 0");
        let turnadmin = Turnadmin::new(binary, vec![], "example.org".into());
        let error = turnadmin
            .add_user("ta1-1-ab", &Secret::new("pw"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, TurnadminError::NotConfirmed { .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn announced_log_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join("logs");
        std::fs::create_dir(&log_dir).unwrap();
        let script = format!(
            "f={}/turn_$$_2026-01-01.log; : > $f; echo \"0: : log file opened: $f\"; echo 'x[example.org]'",
            log_dir.display()
        );
        let turnadmin = Turnadmin::new(
            fake_turnadmin(dir.path(), &script),
            vec![],
            "example.org".into(),
        );
        assert_eq!(turnadmin.list_users().await.unwrap(), vec!["x"]);
        assert_eq!(std::fs::read_dir(&log_dir).unwrap().count(), 0);
    }
}
