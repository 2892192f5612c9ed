//! Key files for the wallet: where a passphrase comes from, and reading a
//! key file of either form ([`cairn_genesis::keyfile`]).
//!
//! A passphrase comes from, in this order: `--passphrase-file FILE` (its
//! first line: one trailing newline is dropped), the environment variable
//! `CAIRN_PASSPHRASE`, or a prompt on the terminal that does not echo. With
//! none of them (no terminal: a script, CI) the wallet stops with one line
//! saying how to give one. Passphrases are held in [`Zeroizing`] strings,
//! wiped when dropped.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use cairn_core::Keypair;
use cairn_genesis::keyfile::{self, KeyFile, PASSPHRASE_ENV};

use crate::WalletError;

/// Longest passphrase accepted, in bytes.
pub const PASSPHRASE_BYTES_MAX: usize = 1024;

/// Where the passphrase may come from, besides the environment and the
/// terminal.
#[derive(Clone, Debug, Default)]
pub struct PassphraseSource {
    /// `--passphrase-file`.
    pub file: Option<PathBuf>,
}

impl PassphraseSource {
    pub fn from_file(file: Option<PathBuf>) -> PassphraseSource {
        PassphraseSource { file }
    }

    /// The passphrase that opens `key_file`.
    pub fn for_opening(&self, key_file: &Path) -> Result<Zeroizing<String>, WalletError> {
        self.get(key_file, false)
    }

    /// A passphrase for a new encrypted `key_file`; at a prompt it is asked
    /// twice and must match.
    pub fn for_new(&self, key_file: &Path) -> Result<Zeroizing<String>, WalletError> {
        self.get(key_file, true)
    }

    /// The new passphrase for `change-passphrase`: from `new_file`, else
    /// asked twice on the terminal (the environment holds the old one).
    pub fn for_change(
        new_file: Option<&Path>,
        key_file: &Path,
    ) -> Result<Zeroizing<String>, WalletError> {
        let passphrase = match new_file {
            Some(file) => passphrase_from_file(file)?,
            None if std::io::stdin().is_terminal() => prompt(key_file, true)?,
            None => {
                return Err(WalletError::Invalid(format!(
                    "a new passphrase for {} is needed: pass --new-passphrase-file FILE or run on a terminal",
                    key_file.display()
                )))
            }
        };
        check_passphrase(&passphrase)?;
        Ok(passphrase)
    }

    fn get(&self, key_file: &Path, new: bool) -> Result<Zeroizing<String>, WalletError> {
        let passphrase = if let Some(file) = &self.file {
            passphrase_from_file(file)?
        } else if let Some(passphrase) =
            keyfile::passphrase_from_env().map_err(WalletError::Invalid)?
        {
            passphrase
        } else if std::io::stdin().is_terminal() {
            prompt(key_file, new)?
        } else {
            return Err(WalletError::Invalid(format!(
                "{} {}: set {PASSPHRASE_ENV}, pass --passphrase-file FILE, or run on a terminal{}",
                key_file.display(),
                if new {
                    "needs a passphrase to encrypt it"
                } else {
                    "is encrypted and no passphrase was given"
                },
                if new { " (or use --plain)" } else { "" },
            )));
        };
        check_passphrase(&passphrase)?;
        Ok(passphrase)
    }
}

fn check_passphrase(passphrase: &str) -> Result<(), WalletError> {
    if passphrase.is_empty() {
        return Err(WalletError::Invalid("the passphrase is empty".into()));
    }
    if passphrase.len() > PASSPHRASE_BYTES_MAX {
        return Err(WalletError::Invalid(format!(
            "the passphrase is longer than {PASSPHRASE_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// The passphrase in `file`: its text less one trailing newline (`\n` or
/// `\r\n`), so `echo secret > FILE` works.
pub fn passphrase_from_file(file: &Path) -> Result<Zeroizing<String>, WalletError> {
    let mut bytes = Zeroizing::new(Vec::new());
    std::fs::File::open(file)
        .and_then(|f| {
            f.take(PASSPHRASE_BYTES_MAX as u64 + 3)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| {
            WalletError::Invalid(format!(
                "cannot read passphrase file {}: {e}",
                file.display()
            ))
        })?;
    let mut end = bytes.len();
    if bytes[..end].ends_with(b"\n") {
        end -= 1;
        if bytes[..end].ends_with(b"\r") {
            end -= 1;
        }
    }
    if end > PASSPHRASE_BYTES_MAX {
        return Err(WalletError::Invalid(format!(
            "passphrase file {} holds more than {PASSPHRASE_BYTES_MAX} bytes",
            file.display()
        )));
    }
    let text = std::str::from_utf8(&bytes[..end]).map_err(|_| {
        WalletError::Invalid(format!(
            "passphrase file {} is not UTF-8 text",
            file.display()
        ))
    })?;
    Ok(Zeroizing::new(text.to_string()))
}

/// Asks on the terminal without echo; twice for a new file.
fn prompt(key_file: &Path, new: bool) -> Result<Zeroizing<String>, WalletError> {
    let ask = |text: String| {
        rpassword::prompt_password(text)
            .map(Zeroizing::new)
            .map_err(|e| {
                WalletError::Invalid(format!("cannot read a passphrase from the terminal: {e}"))
            })
    };
    if !new {
        return ask(format!("Passphrase for {}: ", key_file.display()));
    }
    let first = ask(format!("New passphrase for {}: ", key_file.display()))?;
    check_passphrase(&first)?;
    let second = ask("Repeat the passphrase: ".to_string())?;
    if *first != *second {
        return Err(WalletError::Invalid("the passphrases do not match".into()));
    }
    Ok(first)
}

/// Reads the key in `path`, plain or encrypted (asking `source` for the
/// passphrase only when it is encrypted).
pub fn read_key(path: &Path, source: &PassphraseSource) -> Result<Keypair, WalletError> {
    match keyfile::load(path).map_err(WalletError::Invalid)? {
        KeyFile::Plain(key) => Ok(key),
        KeyFile::Encrypted(sealed) => {
            let passphrase = source.for_opening(path)?;
            sealed
                .open(passphrase.as_bytes())
                .map_err(WalletError::Invalid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_genesis::keyfile::KdfParams;

    const CHEAP: KdfParams = KdfParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    fn key() -> Keypair {
        Keypair::from_seed([5; 32])
    }

    #[test]
    fn passphrase_files_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pass");
        for (written, read) in [
            ("secret\n", "secret"),
            ("secret\r\n", "secret"),
            ("secret", "secret"),
            ("two words \n\n", "two words \n"),
        ] {
            std::fs::write(&file, written).unwrap();
            assert_eq!(*passphrase_from_file(&file).unwrap(), read);
        }
        std::fs::write(&file, vec![b'a'; PASSPHRASE_BYTES_MAX + 1]).unwrap();
        let error = passphrase_from_file(&file).unwrap_err().to_string();
        assert!(error.contains("more than"), "{error}");
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        let error = passphrase_from_file(&file).unwrap_err().to_string();
        assert!(error.contains("not UTF-8"), "{error}");
        let error = passphrase_from_file(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot read passphrase file"), "{error}");
    }

    #[test]
    fn read_key_opens_both_forms() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "hunter2\n").unwrap();
        let source = PassphraseSource::from_file(Some(pass.clone()));

        let plain = dir.path().join("plain.key");
        keyfile::write_new(&plain, &key()).unwrap();
        // A plain file needs no passphrase, whatever the source says.
        let nowhere = PassphraseSource::from_file(Some(dir.path().join("missing")));
        assert_eq!(read_key(&plain, &nowhere).unwrap().public(), key().public());

        let sealed = dir.path().join("sealed.key");
        keyfile::write_new_encrypted(&sealed, &key(), b"hunter2", CHEAP).unwrap();
        assert_eq!(read_key(&sealed, &source).unwrap().public(), key().public());

        std::fs::write(&pass, "hunter3\n").unwrap();
        let error = read_key(&sealed, &source).unwrap_err().to_string();
        assert!(
            error.starts_with("wrong passphrase or corrupted key file"),
            "{error}"
        );
        std::fs::write(&pass, "\n").unwrap();
        let error = read_key(&sealed, &source).unwrap_err().to_string();
        assert!(error.contains("empty"), "{error}");
    }
}
