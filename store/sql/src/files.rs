//! Files only their owner may read: every SQLite database Latchkey keeps (the event log, the
//! read models, the token, secret and idempotency tables) is created 0600 in a directory
//! created 0700, whatever the process umask. SQLite gives a database's `-wal` and `-shm`
//! files the mode of the database file itself, so they are 0600 too.
//!
//! Nothing here loosens the mode of a file or directory that already exists.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// The mode of every file Latchkey creates for its data.
pub const PRIVATE_FILE: u32 = 0o600;
/// The mode of every directory Latchkey creates for its data.
pub const PRIVATE_DIR: u32 = 0o700;

/// Creates `path` empty with mode 0600 unless it exists (then it is left as it is), so
/// SQLite opens a file only its owner can read. An empty file is a valid new database.
pub fn create_private_file(path: &Path) -> io::Result<()> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(PRIVATE_FILE)
        .open(path)
        .map(drop)
}

/// Creates `path` and any missing parents with mode 0700; existing ones are left alone.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_and_directories_are_private_and_existing_ones_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_private_dir(&nested).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&nested), 0o700);
        let file = nested.join("x.db");
        create_private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        std::fs::write(&file, b"kept").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        create_private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o640, "an existing file's mode is not changed");
        assert_eq!(std::fs::read(&file).unwrap(), b"kept", "nor its content");
    }
}
