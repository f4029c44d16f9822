//! coturn's SQLite user database, opened directly: REST API shared secrets
//! are written here instead of through turnadmin, whose only way to take a
//! secret is its command line (readable by every local user in /proc).
//!
//! The file is kept private (0600: it holds long-term keys or shared
//! secrets) and in WAL mode, so turnserver's reads on every authentication
//! never wait for a write and never meet `database is locked`.
//!
//! The tables are coturn's own (`turnserver`/`turnadmin` create the same
//! ones, ignoring those that exist), so either side may create the file.
//! Every change is confirmed by reading the table back, as with turnadmin.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection};

use crate::secret::Secret;

/// How long a write waits for another writer (turnadmin, turnserver's
/// schema check) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// coturn 4.6.1's schema, as `turnadmin` creates it (`sqlite3 DB .schema`),
/// with `IF NOT EXISTS` so creating it again is harmless.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS turnusers_lt ( realm varchar(127) default '', name varchar(512), hmackey char(128), PRIMARY KEY (realm,name));
CREATE TABLE IF NOT EXISTS turn_secret (realm varchar(127) default '', value varchar(127), primary key (realm,value));
CREATE TABLE IF NOT EXISTS allowed_peer_ip (realm varchar(127) default '', ip_range varchar(256), primary key (realm,ip_range));
CREATE TABLE IF NOT EXISTS denied_peer_ip (realm varchar(127) default '', ip_range varchar(256), primary key (realm,ip_range));
CREATE TABLE IF NOT EXISTS turn_origin_to_realm (origin varchar(127),realm varchar(127),primary key (origin));
CREATE TABLE IF NOT EXISTS turn_realm_option (realm varchar(127) default '',\topt varchar(32),\tvalue varchar(128),\tprimary key (realm,opt));
CREATE TABLE IF NOT EXISTS oauth_key (kid varchar(128),ikm_key varchar(256),timestamp bigint default 0,lifetime integer default 0,as_rs_alg varchar(64) default '',realm varchar(127) default '',primary key (kid));
CREATE TABLE IF NOT EXISTS admin_user (name varchar(32), realm varchar(127), password varchar(127), primary key (name));
";

#[derive(Debug, thiserror::Error)]
pub enum UserDbError {
    #[error("cannot prepare the user database {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// rusqlite's messages name the statement's failure, never a bound
    /// value, so a secret cannot reach this text.
    #[error("user database {action} failed: {source}")]
    Sql {
        action: &'static str,
        source: rusqlite::Error,
    },
    #[error("user database {action}: {what}")]
    NotConfirmed { action: &'static str, what: String },
    #[error("user database is not in WAL mode (journal mode {0})")]
    NotWal(String),
}

pub use crate::config::sqlite_path;

/// Whether a file mode lets anyone but the owner in.
pub fn is_private(mode: u32) -> bool {
    mode & 0o077 == 0
}

/// One realm's view of the database. Calls block: run them on the blocking
/// pool (no child process is spawned here, so that is safe).
#[derive(Debug, Clone)]
pub struct UserDb {
    path: PathBuf,
    realm: String,
}

impl UserDb {
    pub fn new(path: PathBuf, realm: String) -> UserDb {
        UserDb { path, realm }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the file (0600) and coturn's tables if missing, narrows a
    /// wider mode to 0600, and switches the database to WAL mode (a
    /// persistent setting every later connection, turnserver's included,
    /// follows).
    pub fn prepare(&self) -> Result<(), UserDbError> {
        let file_error = |source| UserDbError::File {
            path: self.path.clone(),
            source,
        };
        if let Some(directory) = self.path.parent() {
            if !directory.as_os_str().is_empty() && !directory.is_dir() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(directory)
                    .map_err(file_error)?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.path)
            .map_err(file_error)?;
        let mode = file.metadata().map_err(file_error)?.permissions().mode();
        if !is_private(mode) {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(file_error)?;
            tracing::warn!(path = %self.path.display(), mode = format!("{:o}", mode & 0o777), "the user database was readable by others; narrowed to 0600");
        }
        drop(file);
        let connection = self.open("open")?;
        let journal_mode: String = connection
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(|source| UserDbError::Sql {
                action: "switch to WAL",
                source,
            })?;
        if !journal_mode.eq_ignore_ascii_case("wal") {
            return Err(UserDbError::NotWal(journal_mode));
        }
        connection
            .execute_batch(SCHEMA)
            .map_err(|source| UserDbError::Sql {
                action: "create tables",
                source,
            })
    }

    /// Adds a shared secret for the realm and confirms it is listed.
    pub fn add_secret(&self, secret: &Secret) -> Result<(), UserDbError> {
        let action = "add secret";
        let connection = self.open(action)?;
        connection
            .execute(
                "INSERT OR IGNORE INTO turn_secret (realm, value) VALUES (?1, ?2)",
                params![self.realm, secret.expose()],
            )
            .map_err(|source| UserDbError::Sql { action, source })?;
        drop(connection);
        if self.list_secrets()?.contains(secret) {
            Ok(())
        } else {
            Err(UserDbError::NotConfirmed {
                action,
                what: "the new secret is not listed".into(),
            })
        }
    }

    /// Deletes one shared secret of the realm and confirms it is gone.
    pub fn delete_secret(&self, secret: &Secret) -> Result<(), UserDbError> {
        let action = "delete secret";
        let connection = self.open(action)?;
        connection
            .execute(
                "DELETE FROM turn_secret WHERE realm = ?1 AND value = ?2",
                params![self.realm, secret.expose()],
            )
            .map_err(|source| UserDbError::Sql { action, source })?;
        drop(connection);
        if self.list_secrets()?.contains(secret) {
            Err(UserDbError::NotConfirmed {
                action,
                what: "the secret is still listed".into(),
            })
        } else {
            Ok(())
        }
    }

    /// The realm's shared secrets.
    pub fn list_secrets(&self) -> Result<Vec<Secret>, UserDbError> {
        let action = "list secrets";
        let connection = self.open(action)?;
        let mut statement = connection
            .prepare("SELECT value FROM turn_secret WHERE realm = ?1 ORDER BY value")
            .map_err(|source| UserDbError::Sql { action, source })?;
        let rows = statement
            .query_map(params![self.realm], |row| row.get::<_, String>(0))
            .map_err(|source| UserDbError::Sql { action, source })?;
        rows.map(|row| {
            row.map(Secret::new)
                .map_err(|source| UserDbError::Sql { action, source })
        })
        .collect()
    }

    fn open(&self, action: &'static str) -> Result<Connection, UserDbError> {
        let connection =
            Connection::open(&self.path).map_err(|source| UserDbError::Sql { action, source })?;
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|source| UserDbError::Sql { action, source })?;
        Ok(connection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sqlite_paths_in_every_spelling() {
        for spelling in [
            args(&["-b", "/d/turndb"]),
            args(&["--db", "/d/turndb"]),
            args(&["--userdb", "/d/turndb"]),
            args(&["--db=/d/turndb"]),
            args(&["--userdb=/d/turndb"]),
            args(&["-b/d/turndb"]),
        ] {
            assert_eq!(
                sqlite_path(&spelling),
                Some(PathBuf::from("/d/turndb")),
                "{spelling:?}"
            );
        }
        for other in [
            args(&["-e", "host=x dbname=turn"]),
            args(&["-M", "host=x"]),
            args(&["-N", "ip=127.0.0.1"]),
            args(&["-b", "/d/turndb", "-e", "x"]),
            args(&["-b"]),
            args(&["-b", ""]),
            args(&[]),
        ] {
            assert_eq!(sqlite_path(&other), None, "{other:?}");
        }
    }

    #[test]
    fn modes() {
        assert!(is_private(0o100600));
        assert!(is_private(0o100700));
        assert!(!is_private(0o100644));
        assert!(!is_private(0o100640));
    }

    #[test]
    fn created_private_in_wal_mode_with_coturns_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/turndb");
        let db = UserDb::new(path.clone(), "example.org".into());
        db.prepare().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let connection = Connection::open(&path).unwrap();
        let journal: String = connection
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        let tables: i64 = connection
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(tables, 8);
        // Preparing again is harmless; a widened mode is narrowed.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        db.prepare().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn secrets_per_realm_are_added_listed_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("turndb");
        let ours = UserDb::new(path.clone(), "example.org".into());
        let theirs = UserDb::new(path, "other.org".into());
        ours.prepare().unwrap();
        let secret = Secret::new("ta1s-1-abc");
        ours.add_secret(&secret).unwrap();
        ours.add_secret(&secret).unwrap();
        theirs.add_secret(&Secret::new("operator")).unwrap();
        assert_eq!(ours.list_secrets().unwrap(), vec![secret.clone()]);
        ours.delete_secret(&secret).unwrap();
        assert!(ours.list_secrets().unwrap().is_empty());
        assert_eq!(
            theirs.list_secrets().unwrap(),
            vec![Secret::new("operator")]
        );
    }

    #[test]
    fn an_unreadable_database_is_an_error_without_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("turndb");
        std::fs::write(&path, vec![0x5a_u8; 4096]).unwrap();
        let db = UserDb::new(path, "example.org".into());
        let error = db.add_secret(&Secret::new("hunter2")).unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }
}
