//! Ed25519 keys and patch signing (`keygen`, `repair --sign`, `inspect --key`).
//!
//! Key files are versioned text, one value per line:
//!
//! ```text
//! KEY (secret, created with mode 0600):   KEY.pub (public):
//!   prorepair-ed25519-secret-v1             prorepair-ed25519-public-v1
//!   <64 hex digits: the 32-byte seed>       <64 hex digits: the 32-byte public key>
//! ```
//!
//! The seed comes from the operating system's entropy (`rand`'s `OsRng`) and becomes a
//! key through `SigningKey::from_bytes` (RFC 8032). A device holds the 32 public-key
//! bytes; the signature over a patch is made by the core's encoder
//! ([`prorepair_core::patch::encode::seal_ed25519`]), so host and device agree on what is
//! signed. A signed patch names its signer by the key's fingerprint (the first 8 bytes
//! of its SHA-256, [`fingerprint`]); only the signature check proves it.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use prorepair_core::patch::PUBLIC_KEY_SIZE;

/// First line of a secret key file.
pub const SECRET_HEADER: &str = "prorepair-ed25519-secret-v1";
/// First line of a public key file.
pub const PUBLIC_HEADER: &str = "prorepair-ed25519-public-v1";

/// Why a key cannot be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A key file cannot be read or written.
    #[error("{path}: {problem}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The patch cannot be signed (the core refuses it).
    #[error("cannot sign the patch: {0}")]
    Core(#[from] prorepair_core::Error),
}

fn file_error(path: &Path, problem: impl std::fmt::Display) -> SignError {
    SignError::File {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// Lowercase hex of a public key.
pub fn key_hex(key: &[u8; PUBLIC_KEY_SIZE]) -> String {
    super::hex(key)
}

/// The key's fingerprint as patches carry it: 16 hex digits of its SHA-256
/// ([`prorepair_core::patch::key_id`]); `inspect` names a patch's signer by it.
pub fn fingerprint(key: &[u8; PUBLIC_KEY_SIZE]) -> String {
    super::hex(&prorepair_core::patch::key_id(key))
}

/// A fresh signing key from the operating system's entropy.
pub fn generate() -> Result<SigningKey, SignError> {
    use rand::TryRngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| file_error(Path::new("<os entropy>"), e))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key file path for a secret key path: `KEY.pub`.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Create `path` (mode 0600 on Unix) and write `text`; refuses to replace an existing
/// file unless `force`.
fn write_new(path: &Path, text: &str, secret: bool, force: bool) -> Result<(), SignError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            file_error(path, "already exists (use --force to replace it)")
        } else {
            file_error(path, format!("cannot create: {e}"))
        }
    })?;
    // A replaced secret file keeps its old mode on open: set 0600 explicitly.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| file_error(path, format!("cannot set mode 0600: {e}")))?;
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| file_error(path, format!("cannot write: {e}")))
}

/// Write `key` to `secret` (0600) and its public half to `secret.pub`; returns the
/// public key path. Neither file is replaced unless `force`; both are checked first.
pub fn write_keypair(secret: &Path, key: &SigningKey, force: bool) -> Result<PathBuf, SignError> {
    let public = public_path(secret);
    if !force {
        for p in [secret, public.as_path()] {
            if p.exists() {
                return Err(file_error(p, "already exists (use --force to replace it)"));
            }
        }
    }
    write_new(
        secret,
        &format!("{SECRET_HEADER}\n{}\n", super::hex(key.as_bytes())),
        true,
        force,
    )?;
    write_new(
        &public,
        &format!(
            "{PUBLIC_HEADER}\n{}\n",
            key_hex(&key.verifying_key().to_bytes())
        ),
        false,
        force,
    )?;
    Ok(public)
}

/// Parse `header` then one line of 64 hex digits.
fn read_key_file(path: &Path, header: &str) -> Result<[u8; 32], SignError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some(header) {
        return Err(file_error(
            path,
            format!("not a key file of this kind (first line must be `{header}`)"),
        ));
    }
    let value = lines
        .next()
        .ok_or_else(|| file_error(path, "missing the key line"))?;
    if lines.next().is_some() {
        return Err(file_error(path, "trailing lines after the key"));
    }
    let mut out = [0u8; 32];
    if value.len() != 64 || !value.is_ascii() {
        return Err(file_error(path, "the key must be 64 hex digits"));
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&value[2 * i..2 * i + 2], 16)
            .map_err(|_| file_error(path, "the key must be 64 hex digits"))?;
    }
    Ok(out)
}

/// Read a secret key file written by [`write_keypair`].
pub fn read_secret(path: &Path) -> Result<SigningKey, SignError> {
    Ok(SigningKey::from_bytes(&read_key_file(path, SECRET_HEADER)?))
}

/// Read a public key file (`KEY.pub`); the key must be a valid Ed25519 point.
pub fn read_public(path: &Path) -> Result<[u8; PUBLIC_KEY_SIZE], SignError> {
    let key = read_key_file(path, PUBLIC_HEADER)?;
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| file_error(path, "not a valid Ed25519 public key"))?;
    Ok(key)
}

/// Sign the unsigned patch `bytes` in place with `key` (signature kind 1, Ed25519 over
/// every byte before the signature field, CRC recomputed).
pub fn sign_patch(bytes: &mut [u8], key: &SigningKey) -> Result<(), SignError> {
    let public = key.verifying_key().to_bytes();
    prorepair_core::patch::encode::seal_ed25519(bytes, &public, |msg| key.sign(msg).to_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_are_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("prorepair-sign-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vendor.key");
        let key = generate().unwrap();
        let public = write_keypair(&path, &key, false).unwrap();
        assert_eq!(public, dir.join("vendor.key.pub"));
        assert_eq!(read_secret(&path).unwrap().to_bytes(), key.to_bytes());
        assert_eq!(
            read_public(&public).unwrap(),
            key.verifying_key().to_bytes()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never replaced without force; the old key survives.
        let other = generate().unwrap();
        let err = write_keypair(&path, &other, false).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(read_secret(&path).unwrap().to_bytes(), key.to_bytes());
        write_keypair(&path, &other, true).unwrap();
        assert_eq!(read_secret(&path).unwrap().to_bytes(), other.to_bytes());
        // A public file is not a secret file and vice versa.
        assert!(read_secret(&public).is_err());
        assert!(read_public(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_key_files_are_refused_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("prorepair-badkey-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let hex64 = "ab".repeat(32);
        let cases = [
            ("empty", String::new(), "not a key file"),
            ("garbage", "\u{0}\u{1}binary".to_string(), "not a key file"),
            (
                "no key line",
                format!("{SECRET_HEADER}\n"),
                "missing the key line",
            ),
            ("short", format!("{SECRET_HEADER}\nabcd\n"), "64 hex digits"),
            (
                "not hex",
                format!("{SECRET_HEADER}\n{}\n", "zz".repeat(32)),
                "64 hex digits",
            ),
            (
                "non-ASCII",
                format!("{SECRET_HEADER}\n{}é\n", &hex64[..62]),
                "64 hex digits",
            ),
            (
                "trailing",
                format!("{SECRET_HEADER}\n{hex64}\nmore\n"),
                "trailing lines",
            ),
        ];
        for (name, text, why) in cases {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            let err = read_secret(&path).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(name), "{name}: {err}");
        }
        let missing = read_secret(&dir.join("missing")).unwrap_err().to_string();
        assert!(missing.contains("cannot read"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
