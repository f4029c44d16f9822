//! The file `psd FILE` writes every session into, when `ps` printed only
//! the first 256.
//!
//! turnserver opens the path it is given for writing by name, following
//! symlinks; a local user who could put a symlink there would have
//! turnserver overwrite whatever it points to. So the path is never in a
//! directory anyone else can write: [`DumpFile::create`] makes a fresh
//! directory of an unguessable name, mode 0700, beside the agent's
//! turnserver file (`mkdir` fails rather than follow anything already
//! there), and creates the file inside it with `O_EXCL | O_NOFOLLOW`, mode
//! 0600 (coturn 4.6.1 keeps the mode when it writes). Both are removed when
//! the [`DumpFile`] is dropped.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::coturn_cli::command::{CommandError, DumpPath};
use crate::file_checks::{read_limited_text, FileError};

/// Most bytes of a dump the agent reads: coturn writes about 440 bytes a
/// session, so this is some 70,000 sessions.
pub const MAX_DUMP_BYTES: u64 = 32 * 1024 * 1024;

/// Prefix of the private directory, so an operator can tell what it is.
const DIR_PREFIX: &str = ".turn-agent-psd-";

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot create the session dump in {dir}: {source}")]
    Create { dir: PathBuf, source: io::Error },
    #[error("the session dump path cannot be sent to the CLI: {0}")]
    Path(#[from] CommandError),
    #[error("the session dump {0}")]
    Read(#[from] FileError),
}

/// A 0600 file in a fresh 0700 directory, both removed on drop.
#[derive(Debug)]
pub struct DumpFile {
    dir: PathBuf,
    path: DumpPath,
}

impl DumpFile {
    /// Creates the directory and the empty file under `parent`.
    pub fn create(parent: &Path) -> Result<DumpFile, DumpError> {
        let create_error = |source| DumpError::Create {
            dir: parent.to_owned(),
            source,
        };
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let dir = parent.join(format!("{DIR_PREFIX}{name}"));
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(create_error)?;
        // From here on, drop removes the directory.
        let file = dir.join("sessions");
        let dump = DumpFile {
            dir,
            path: DumpPath::new(&file)?,
        };
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&file)
            .map_err(create_error)?;
        Ok(dump)
    }

    /// The path to hand `psd`.
    pub fn path(&self) -> &DumpPath {
        &self.path
    }

    /// What turnserver wrote, at most [`MAX_DUMP_BYTES`].
    pub fn read(&self) -> Result<String, DumpError> {
        Ok(read_limited_text(self.path.path(), MAX_DUMP_BYTES)?)
    }
}

impl Drop for DumpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path.path());
        if let Err(error) = std::fs::remove_dir(&self.dir) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(
                    dir = %crate::log_safe::LogSafe::new(&self.dir.to_string_lossy()),
                    %error,
                    "cannot remove the session dump directory"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_file_is_private_in_a_private_directory_and_removed_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let dump = DumpFile::create(parent.path()).unwrap();
        let file = dump.path().path().to_owned();
        let dir = file.parent().unwrap().to_owned();
        assert_eq!(dir.parent().unwrap(), parent.path());
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
        std::fs::write(&file, "Total sessions: 0\n").unwrap();
        assert_eq!(dump.read().unwrap(), "Total sessions: 0\n");
        // Two dumps never share a name.
        let other = DumpFile::create(parent.path()).unwrap();
        assert_ne!(other.path(), dump.path());
        drop(dump);
        drop(other);
        assert!(!dir.exists());
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_parent_that_is_not_a_directory_is_an_error_not_a_panic() {
        let parent = tempfile::tempdir().unwrap();
        let file = parent.path().join("plain");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            DumpFile::create(&file),
            Err(DumpError::Create { .. })
        ));
    }

    #[test]
    fn an_oversized_dump_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let dump = DumpFile::create(parent.path()).unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dump.path().path())
            .unwrap();
        file.set_len(MAX_DUMP_BYTES + 1).unwrap();
        assert!(matches!(
            dump.read(),
            Err(DumpError::Read(FileError::TooLarge { .. }))
        ));
    }
}
