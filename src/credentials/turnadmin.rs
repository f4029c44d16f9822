//! The shell around coturn's `turnadmin`: argv only, never a shell, and
//! nothing trusted until read back.
//!
//! turnadmin exits 0 even when its database write failed; the only sign is
//! an `ERROR:` line on stdout. So every change is checked for such lines and
//! then confirmed with a listing (`-l`).
//!
//! Only long-term users go through turnadmin: their password is on its
//! command line for the length of a call (turnadmin takes it no other way),
//! which exposes nothing a client of this host does not get anyway. REST
//! API secrets, which would let anyone mint credentials, never do: they are
//! written to the SQLite database directly (`userdb`).
//! turnadmin also leaves a log file behind on every call; its path is on
//! stdout and the file is removed after the call.
//!
//! Every child dies with the agent: it is forked from one dedicated thread
//! (the supervisor's [`Spawner`]) with a parent-death signal, and killed on
//! drop when a call is abandoned. turnadmin has no option to place or stop
//! its log file (`/var/log/turn_<pid>_<date>.log` as root, `/var/tmp/…`
//! otherwise), so each child writes its own pid into a journal in the
//! agent's state directory before it execs: a call cut short by the agent's
//! death leaves that pid behind, and the next start removes its log file.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;

use crate::secret::Secret;
use crate::supervisor::process::Spawner;

/// Where coturn's logging puts a file when it is given none, in the order
/// it tries them; the child's working directory is the last resort.
const LOG_DIRECTORIES: [&str; 4] = ["/var/log/turnserver", "/var/log", "/var/tmp", "/tmp"];

/// The journal of the running call's pid, in the launcher's directory.
const JOURNAL_NAME: &str = "turnadmin-call.pid";

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

/// Starts turnadmin children so none outlives the agent or leaves a file.
#[derive(Clone)]
pub struct Launcher {
    spawner: Arc<Spawner>,
    /// The children's working directory and the pid journal's home: the
    /// agent's private state directory.
    work_dir: PathBuf,
}

impl Launcher {
    /// Starts the spawner thread; needs a Tokio runtime.
    pub fn start(work_dir: PathBuf) -> io::Result<Launcher> {
        Ok(Launcher {
            spawner: Arc::new(Spawner::start()?),
            work_dir,
        })
    }

    fn journal(&self) -> PathBuf {
        self.work_dir.join(JOURNAL_NAME)
    }

    /// Removes the log file of a call an earlier agent was killed in: the
    /// journal names its pid. Returns the files removed.
    pub fn sweep_leftovers(&self) -> Vec<PathBuf> {
        let journal = self.journal();
        let Ok(text) = std::fs::read_to_string(&journal) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        if let Ok(pid) = text.trim().parse::<u32>() {
            // A pid in use again belongs to someone else now; its files are
            // not ours to judge.
            if !is_running(pid) {
                removed = remove_logs_of(pid, &self.work_dir);
            }
        }
        let _ = std::fs::remove_file(&journal);
        removed
    }

    /// Spawns `command`: its pid is journaled from inside the child before
    /// exec, so no log file can exist before the pid is on disk.
    async fn spawn(&self, mut command: Command) -> io::Result<tokio::process::Child> {
        let journal = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.journal());
        command.current_dir(&self.work_dir);
        if let Ok(journal) = &journal {
            let fd = journal.as_raw_fd();
            // SAFETY: the hook runs in the forked child before exec, where
            // only async-signal-safe calls are allowed: `record_pid` uses
            // getpid and write on a descriptor the parent keeps open until
            // `spawn` returns, formatting into a stack buffer.
            unsafe {
                command.pre_exec(move || record_pid(fd));
            }
        }
        let child = self.spawner.spawn(command).await;
        drop(journal);
        child
    }

    /// After a call: its log file goes, and so does the journal.
    fn finished(&self, pid: u32, stdout: Option<&str>) {
        match stdout {
            Some(stdout) => remove_call_log(stdout, pid),
            None => {
                remove_logs_of(pid, &self.work_dir);
            }
        }
        let _ = std::fs::remove_file(self.journal());
    }
}

/// Whether `pid` is a live process (a zombie has exited: it only waits
/// for a parent, or an init that does not reap, to collect it).
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
    })
}

/// Runs in the child between fork and exec: writes its pid in decimal.
fn record_pid(fd: std::os::fd::RawFd) -> io::Result<()> {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    let mut pid = std::process::id();
    loop {
        start -= 1;
        digits[start] = b'0' + (pid % 10) as u8;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    let bytes = &digits[start..];
    // SAFETY: `bytes` is a valid buffer of its length and `fd` is open.
    let written = unsafe { nix::libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    if written < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes `turn_<pid>_*.log` files from the places coturn's logging tries.
fn remove_logs_of(pid: u32, work_dir: &Path) -> Vec<PathBuf> {
    let prefix = format!("turn_{pid}_");
    let mut removed = Vec::new();
    let directories = LOG_DIRECTORIES
        .iter()
        .map(PathBuf::from)
        .chain([work_dir.to_path_buf()]);
    for directory in directories {
        let Ok(entries) = std::fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
            if is_file
                && name.starts_with(&prefix)
                && name.ends_with(".log")
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed.push(entry.path());
            }
        }
    }
    removed
}

#[derive(Clone)]
pub struct Turnadmin {
    launcher: Launcher,
    binary: PathBuf,
    database_args: Vec<String>,
    realm: String,
}

impl Turnadmin {
    pub fn new(
        launcher: Launcher,
        binary: PathBuf,
        database_args: Vec<String>,
        realm: String,
    ) -> Turnadmin {
        Turnadmin {
            launcher,
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

    /// Runs one call and returns its stdout. `sensitive` is scrubbed from
    /// any error message.
    async fn run(
        &self,
        action: &'static str,
        args: &[&str],
        sensitive: Option<&Secret>,
    ) -> Result<String, TurnadminError> {
        let mut command = Command::new(&self.binary);
        command.args(args).args(&self.database_args);
        // The spawner pipes stdout and stderr, nulls stdin, kills on drop and
        // sets the parent-death signal.
        let child = self
            .launcher
            .spawn(command)
            .await
            .map_err(TurnadminError::Spawn)?;
        let pid = child.id().unwrap_or_default();
        // Abandoned (shutdown, timeout): the child is killed on drop and its
        // log file removed by pid.
        let mut cleanup = CallCleanup {
            launcher: &self.launcher,
            pid,
        };
        let output = tokio::time::timeout(CALL_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| TurnadminError::Timeout { action })?
            .map_err(TurnadminError::Spawn)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        cleanup.pid = 0;
        self.launcher.finished(pid, Some(&stdout));

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

/// Removes the log file of a call that did not finish, once its child is
/// gone (kill on drop has been sent before this runs: the child future is
/// dropped first).
struct CallCleanup<'a> {
    launcher: &'a Launcher,
    pid: u32,
}

impl Drop for CallCleanup<'_> {
    fn drop(&mut self) {
        if self.pid != 0 {
            self.launcher.finished(self.pid, None);
        }
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

    fn launcher(dir: &Path) -> Launcher {
        Launcher::start(dir.to_path_buf()).unwrap()
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
        let turnadmin = Turnadmin::new(launcher(dir.path()), binary, vec![], "example.org".into());
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
        let turnadmin = Turnadmin::new(launcher(dir.path()), binary, vec![], "example.org".into());
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
            launcher(dir.path()),
            fake_turnadmin(dir.path(), &script),
            vec![],
            "example.org".into(),
        );
        assert_eq!(turnadmin.list_users().await.unwrap(), vec!["x"]);
        assert_eq!(std::fs::read_dir(&log_dir).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_call_journals_its_pid_until_it_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("seen");
        let script = format!(
            "echo \"$(cat {}/{JOURNAL_NAME})\" > {}; echo $$ >> {}; pwd >> {}",
            dir.path().display(),
            seen.display(),
            seen.display(),
            seen.display()
        );
        let turnadmin = Turnadmin::new(
            launcher(dir.path()),
            fake_turnadmin(dir.path(), &script),
            vec![],
            "example.org".into(),
        );
        turnadmin.list_users().await.unwrap();
        let seen = std::fs::read_to_string(seen).unwrap();
        let lines: Vec<&str> = seen.lines().collect();
        // The journal held the child's own pid while it ran, in the
        // launcher's directory, and is gone afterwards.
        assert_eq!(lines[0], lines[1], "{seen}");
        assert_eq!(Path::new(lines[2]), dir.path());
        assert!(!dir.path().join(JOURNAL_NAME).exists());
    }

    #[tokio::test]
    async fn the_log_of_a_call_cut_short_is_swept_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above any pid_max: certainly not running.
        let pid = 999_999_999u32;
        let log = dir.path().join(format!("turn_{pid}_2026-01-01.log"));
        let other = dir.path().join("turn_1_2026-01-01.log");
        std::fs::write(&log, "").unwrap();
        std::fs::write(&other, "").unwrap();
        std::fs::write(dir.path().join(JOURNAL_NAME), pid.to_string()).unwrap();
        let launcher = launcher(dir.path());
        assert_eq!(launcher.sweep_leftovers(), vec![log.clone()]);
        assert!(!log.exists());
        assert!(other.exists());
        assert!(!dir.path().join(JOURNAL_NAME).exists());
        assert!(launcher.sweep_leftovers().is_empty());
    }
}
