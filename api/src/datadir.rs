//! The data directory (`--data`): it holds the event log, the read models, the token
//! hashes, the encrypted secrets and maybe the secret-store key, so only the server's own
//! user may read it. A new one is created 0700; one that other users may read, write or
//! enter, or that holds such a file, is refused with the `chmod` that fixes it, never
//! changed behind the operator's back (`--data /srv` must not make `/srv` private).

use latchkey_sql::files::create_private_dir;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The permission bits of group and others.
const OTHERS: u32 = 0o077;
/// More loose entries than this are fixed with one recursive `chmod`.
const LISTED: usize = 8;

/// Makes every file this process creates from now on private to its user (umask 077): the
/// SQLite databases (whose `-wal` and `-shm` files SQLite creates later, with the mode of
/// their database), the key file, and whatever comes next. Call it before any file is made.
pub fn restrict_umask() {
    // SAFETY: umask(2) only swaps the process's file-creation mask; it cannot fail and
    // touches no memory of ours.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates the data directory (0700, with any missing parents) if it is missing; refuses it
/// if other users may use it or anything in it.
pub fn prepare(dir: &Path) -> Result<(), String> {
    create_private_dir(dir)
        .map_err(|e| format!("--data {}: cannot create the directory: {e}", dir.display()))?;
    check_private(dir)
}

/// One directory or file that others may read, write or enter.
struct Loose {
    path: PathBuf,
    mode: u32,
    is_dir: bool,
}

/// Refuses `dir` if group or others have any permission on it or on an entry of it (a
/// symbolic link is judged by what it points to).
pub fn check_private(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    let mode = |path: &Path| -> Result<Option<std::fs::Metadata>, String> {
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Some(meta)),
            // Removed meanwhile, or a dangling link: nothing to protect.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!(
                "--data {shown}: cannot read the mode of {}: {e}",
                path.display()
            )),
        }
    };
    let mut loose = Vec::new();
    let meta = mode(dir)?.ok_or_else(|| format!("--data {shown}: the directory is missing"))?;
    if !meta.is_dir() {
        return Err(format!("--data {shown}: not a directory"));
    }
    if meta.permissions().mode() & OTHERS != 0 {
        loose.push(Loose {
            path: dir.to_owned(),
            mode: meta.permissions().mode() & 0o777,
            is_dir: true,
        });
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("--data {shown}: cannot list the directory: {e}"))?;
    let mut inside = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("--data {shown}: cannot list the directory: {e}"))?;
        let path = entry.path();
        if let Some(meta) = mode(&path)? {
            if meta.permissions().mode() & OTHERS != 0 {
                inside.push(Loose {
                    path,
                    mode: meta.permissions().mode() & 0o777,
                    is_dir: meta.is_dir(),
                });
            }
        }
    }
    if loose.is_empty() && inside.is_empty() {
        return Ok(());
    }
    inside.sort_by(|a, b| a.path.cmp(&b.path));
    loose.extend(inside);
    Err(refusal(dir, &loose))
}

/// "--data DIR: other users may read or write …; make it private with `chmod …`".
fn refusal(dir: &Path, loose: &[Loose]) -> String {
    let what: Vec<String> = loose
        .iter()
        .take(LISTED)
        .map(|entry| match entry.path == dir {
            true => format!("the directory (mode {:o})", entry.mode),
            false => format!("{} (mode {:o})", entry.path.display(), entry.mode),
        })
        .collect();
    let mut what = what.join(", ");
    if loose.len() > LISTED {
        what.push_str(&format!(" and {} more", loose.len() - LISTED));
    }
    let fix = match loose.len() > LISTED {
        true => format!("chmod -R go-rwx {}", quoted(dir)),
        false => {
            let mut commands = Vec::new();
            let dirs: Vec<String> = loose
                .iter()
                .filter(|e| e.is_dir)
                .map(|e| quoted(&e.path))
                .collect();
            let files: Vec<String> = loose
                .iter()
                .filter(|e| !e.is_dir)
                .map(|e| quoted(&e.path))
                .collect();
            if !dirs.is_empty() {
                commands.push(format!("chmod 700 {}", dirs.join(" ")));
            }
            if !files.is_empty() {
                commands.push(format!("chmod 600 {}", files.join(" ")));
            }
            commands.join(" && ")
        }
    };
    format!(
        "--data {}: other users may read or write it: {what}. It holds the event log, the \
         token hashes and the encrypted secrets: make it private ({fix}) or choose a new \
         directory",
        dir.display()
    )
}

/// A path as a shell word: as it is when that is safe, else in single quotes.
fn quoted(path: &Path) -> String {
    let text = path.display().to_string();
    let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    match !text.is_empty() && text.chars().all(safe) {
        true => text,
        false => format!("'{}'", text.replace('\'', r"'\''")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_new_directory_is_created_private_with_its_parents() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/data");
        prepare(&dir).unwrap();
        for path in [root.path().join("a"), dir] {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", path.display());
        }
    }

    #[test]
    fn a_directory_others_may_read_is_refused_with_the_chmod_that_fixes_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        chmod(dir, 0o755);
        let err = prepare(dir).unwrap_err();
        assert!(err.contains("the directory (mode 755)"), "{err}");
        assert!(
            err.contains(&format!("(chmod 700 {})", dir.display())),
            "{err}"
        );
        chmod(dir, 0o700);
        prepare(dir).unwrap();
    }

    #[test]
    fn a_file_others_may_read_or_write_is_refused_by_name() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        chmod(dir, 0o700);
        let events = dir.join("events.db");
        let tokens = dir.join("tokens.db");
        std::fs::write(&events, b"").unwrap();
        std::fs::write(&tokens, b"").unwrap();
        chmod(&events, 0o644);
        chmod(&tokens, 0o602);
        let err = prepare(dir).unwrap_err();
        assert!(!err.contains("the directory"), "{err}");
        assert!(
            err.contains(&format!(
                "chmod 600 {} {}",
                events.display(),
                tokens.display()
            )),
            "{err}"
        );
        chmod(&events, 0o600);
        chmod(&tokens, 0o600);
        prepare(dir).unwrap();
    }

    #[test]
    fn many_loose_entries_get_one_recursive_chmod() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("it's here");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o750);
        for i in 0..LISTED + 2 {
            let file = dir.join(format!("f{i}"));
            std::fs::write(&file, b"").unwrap();
            chmod(&file, 0o640);
        }
        let err = prepare(&dir).unwrap_err();
        assert!(err.contains("and 3 more"), "{err}");
        let quoted = format!("'{}'", dir.display().to_string().replace('\'', r"'\''"));
        assert!(
            err.contains(&format!("(chmod -R go-rwx {quoted})")),
            "{err}"
        );
    }

    #[test]
    fn a_path_that_is_a_file_is_not_a_data_directory() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        assert!(prepare(&file).is_err());
    }
}
