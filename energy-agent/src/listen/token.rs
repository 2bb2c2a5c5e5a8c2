//! Bearer tokens (`--receive-token-file`, `--prometheus-token-file`): every non-empty
//! line of the file is a token the listener accepts, so a new token can be added before
//! the old one is removed. Reloaded like the TLS files: when the file changes, and on
//! SIGHUP; a file that no longer loads keeps the previous tokens. Compared in constant
//! time.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, RwLock},
};

use super::ListenError;

/// The tokens of one file.
pub struct Tokens {
    path: PathBuf,
    current: RwLock<Vec<Vec<u8>>>,
    stamp: Mutex<Option<(std::time::SystemTime, u64, u64)>>,
}

fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

fn read(path: &Path) -> Result<Vec<Vec<u8>>, ListenError> {
    let text = std::fs::read_to_string(path).map_err(|source| ListenError::TokenFile {
        path: path.to_path_buf(),
        reason: source.to_string(),
    })?;
    let tokens: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect();
    if tokens.is_empty() {
        return Err(ListenError::TokenFile {
            path: path.to_path_buf(),
            reason: "no token in it (one per line)".into(),
        });
    }
    if tokens.iter().any(|t| t.len() < 16) {
        return Err(ListenError::TokenFile {
            path: path.to_path_buf(),
            reason: "a token shorter than 16 characters is too easy to guess".into(),
        });
    }
    Ok(tokens)
}

/// Equal without an early exit on the first differing byte, so that the time taken
/// does not tell how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

impl Tokens {
    /// Reads the file; an error here stops the start.
    pub fn load(path: &Path) -> Result<Self, ListenError> {
        let stamp = stamp(path);
        Ok(Self {
            path: path.to_path_buf(),
            current: RwLock::new(read(path)?),
            stamp: Mutex::new(stamp),
        })
    }

    /// Whether `header` (an `authorization` value) is `Bearer <one of the tokens>`.
    pub fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(header) = header else { return false };
        let Some(presented) = header
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| header[7..].trim_ascii())
        else {
            return false;
        };
        let tokens = match self.current.read() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Every token is compared, so the time does not say which one matched.
        tokens
            .iter()
            .fold(false, |ok, token| same(token, presented) | ok)
    }

    /// Rereads the file when it changed (`force`: in any case); `None` when it did not.
    pub fn reload(&self, force: bool) -> Option<Result<(), ListenError>> {
        let now = stamp(&self.path);
        {
            let mut last = self.stamp.lock().ok()?;
            if !force && *last == now {
                return None;
            }
            *last = now;
        }
        Some(read(&self.path).map(|tokens| {
            if let Ok(mut current) = self.current.write() {
                *current = tokens;
            }
        }))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_line_as_a_bearer_token_and_nothing_else() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "old-token-0123456789\n\n  new-token-0123456789 \n")
            .expect("writing the tokens");
        let tokens = Tokens::load(&path).expect("tokens");
        assert!(tokens.accepts(Some(b"Bearer old-token-0123456789")));
        assert!(tokens.accepts(Some(b"bearer new-token-0123456789")));
        assert!(!tokens.accepts(Some(b"Bearer new-token-012345678")));
        assert!(!tokens.accepts(Some(b"Bearer new-token-01234567890")));
        assert!(!tokens.accepts(Some(b"Basic new-token-0123456789")));
        assert!(!tokens.accepts(Some(b"new-token-0123456789")));
        assert!(!tokens.accepts(Some(b"Bearer ")));
        assert!(!tokens.accepts(None));
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "first-token-0123456789\n").expect("writing");
        let tokens = Tokens::load(&path).expect("tokens");
        assert!(tokens.reload(false).is_none(), "unchanged");
        std::fs::write(&path, "second-token-0123456789-longer\n").expect("rewriting");
        assert!(matches!(tokens.reload(false), Some(Ok(()))));
        assert!(tokens.accepts(Some(b"Bearer second-token-0123456789-longer")));
        assert!(!tokens.accepts(Some(b"Bearer first-token-0123456789")));
        std::fs::write(&path, "\n").expect("emptying");
        assert!(matches!(tokens.reload(true), Some(Err(_))));
        assert!(
            tokens.accepts(Some(b"Bearer second-token-0123456789-longer")),
            "a file that does not load keeps the previous tokens"
        );
    }

    #[test]
    fn short_or_missing_token_files_are_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "short\n").expect("writing");
        let e = Tokens::load(&path).err().expect("too short");
        assert!(e.to_string().contains("16"), "{e}");
        assert!(Tokens::load(&dir.path().join("none")).is_err());
    }
}
