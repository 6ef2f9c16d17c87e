//! Secrets at rest: the master key file and ChaCha20-Poly1305 sealing of
//! function secrets.
//!
//! The master key file (`<data-dir>/master.key`, beside the artifacts)
//! is created on first start with mode 0600 (32 random bytes as 64 hex
//! digits) and refused when anyone but its owner may read it. It may list
//! several keys, one a line (`#` comments allowed): the first seals, all
//! open. Rotation: put a new key on the first line, keep the old one below
//! it, restart; at start every secret sealed under another listed key is
//! sealed again under the first (`reseal_all`), after which the old line
//! can go. A secret sealed under a key no longer listed cannot be opened:
//! the route table then leaves it out and the control plane logs it.
//!
//! Each value is sealed with a fresh random 96-bit nonce, and the
//! associated data names the function's id and the secret's name, so a
//! ciphertext moved to another row does not open.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// File name of the master key inside the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

/// One master key and its id (16 hex digits of a hash of it: stored with
/// each ciphertext, names no secret).
struct MasterKey {
    id: String,
    cipher: ChaCha20Poly1305,
}

impl MasterKey {
    fn new(bytes: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"cpub master key id\0");
        h.update(bytes);
        let id = hex::encode(&h.finalize()[..8]);
        Self {
            id,
            cipher: ChaCha20Poly1305::new(Key::from_slice(bytes)),
        }
    }
}

/// A sealed secret as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// The master keys: the first seals, every one opens.
pub struct Vault {
    keys: Vec<MasterKey>,
    path: PathBuf,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .field("keys", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish()
    }
}

fn aad(function_id: i64, name: &str) -> Vec<u8> {
    format!("cpub secret\0{function_id}\0{name}").into_bytes()
}

impl Vault {
    /// Opens the key file at `path`, creating it (mode 0600, one new key)
    /// when it does not exist. Refuses a file others may read or write, or
    /// one without a well-formed key.
    pub fn open_or_create(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut file) => {
                let text = format!(
                    "# cpub-control master key: seals function secrets. Back it up; keep it 0600.\n\
                     # Rotation: add a new key (64 hex digits) as the first key line, keep this one\n\
                     # below it, restart cpub-control, then remove the old line.\n{}\n",
                    hex::encode(key)
                );
                file.write_all(text.as_bytes())
                    .and_then(|()| file.sync_all())
                    .with_context(|| format!("writing {}", path.display()))?;
                tracing::info!(path = %path.display(), "created the master key file");
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
        Self::load(path)
    }

    /// Reads an existing key file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{}: mode {mode:o} lets others read the master key; chmod 600 it",
                path.display()
            );
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes: [u8; 32] = hex::decode(line)
                .ok()
                .and_then(|b| b.try_into().ok())
                .with_context(|| {
                    format!(
                        "{} line {}: a key must be 64 hex digits (32 bytes)",
                        path.display(),
                        n + 1
                    )
                })?;
            keys.push(MasterKey::new(&bytes));
        }
        if keys.is_empty() {
            bail!("{}: no key in the master key file", path.display());
        }
        Ok(Self {
            keys,
            path: path.to_owned(),
        })
    }

    /// Id of the key that seals.
    pub fn primary_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seals `value` as secret `name` of function `function_id`.
    pub fn seal(&self, function_id: i64, name: &str, value: &str) -> anyhow::Result<Sealed> {
        let key = &self.keys[0];
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad = aad(function_id, name);
        let ciphertext = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing a secret failed"))?;
        Ok(Sealed {
            key_id: key.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens a sealed secret; the error says why (unknown key, or a
    /// ciphertext that does not authenticate), never the value.
    pub fn open(&self, function_id: i64, name: &str, sealed: &Sealed) -> anyhow::Result<String> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == sealed.key_id)
            .with_context(|| {
                format!(
                    "sealed under master key {} which {} does not list",
                    sealed.key_id,
                    self.path.display()
                )
            })?;
        if sealed.nonce.len() != 12 {
            bail!("nonce of {} bytes", sealed.nonce.len());
        }
        let aad = aad(function_id, name);
        let plain = key
            .cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("the ciphertext does not authenticate"))?;
        String::from_utf8(plain).context("the secret is not UTF-8")
    }

    /// `sealed` opened and sealed again under the primary key, for the
    /// reseal of a key rotation; `None` (logged, naming `what`) when it
    /// cannot be opened: it is left as it is.
    pub fn reseal(
        &self,
        function_id: i64,
        name: &str,
        sealed: &Sealed,
        what: &str,
    ) -> anyhow::Result<Option<Sealed>> {
        match self.open(function_id, name, sealed) {
            Ok(value) => self.seal(function_id, name, &value).map(Some),
            Err(err) => {
                tracing::error!(function_id, what, err = format!("{err:#}"), "cannot reseal");
                Ok(None)
            }
        }
    }
}

/// Seals again, under the primary key, every secret sealed under another
/// key of the file; returns how many. Secrets under an unknown key are left
/// (and counted in the log).
pub async fn reseal_all(pool: &sqlx::PgPool, vault: &Vault) -> anyhow::Result<u64> {
    type Row = (i64, String, String, Vec<u8>, Vec<u8>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT function_id, name, key_id, nonce, ciphertext FROM function_secrets WHERE key_id <> $1",
    )
    .bind(vault.primary_id())
    .fetch_all(pool)
    .await?;
    let mut done = 0;
    for (function_id, name, key_id, nonce, ciphertext) in rows {
        let sealed = Sealed {
            key_id,
            nonce,
            ciphertext,
        };
        let Some(fresh) = vault.reseal(function_id, &name, &sealed, &format!("secret {name}"))?
        else {
            continue;
        };
        // Only if nobody changed it meanwhile.
        let updated = sqlx::query(
            "UPDATE function_secrets SET key_id = $3, nonce = $4, ciphertext = $5 \
             WHERE function_id = $1 AND name = $2 AND key_id = $6 AND nonce = $7",
        )
        .bind(function_id)
        .bind(&name)
        .bind(&fresh.key_id)
        .bind(&fresh.nonce)
        .bind(&fresh.ciphertext)
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .execute(pool)
        .await?;
        done += updated.rows_affected();
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join(MASTER_KEY_FILE);
        let vault = Vault::open_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Vault::open_or_create(&path).unwrap();
        assert_eq!(vault.primary_id(), again.primary_id());
        let sealed = vault.seal(7, "TOKEN", "hunter2").unwrap();
        assert_eq!(again.open(7, "TOKEN", &sealed).unwrap(), "hunter2");
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
    }

    #[test]
    fn a_ciphertext_opens_only_for_its_function_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open_or_create(&dir.path().join(MASTER_KEY_FILE)).unwrap();
        let sealed = vault.seal(1, "A", "v").unwrap();
        assert!(vault.open(2, "A", &sealed).is_err());
        assert!(vault.open(1, "B", &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(vault.open(1, "A", &flipped).is_err());
        // Two seals of one value differ (fresh nonces).
        assert_ne!(vault.seal(1, "A", "v").unwrap(), sealed);
    }

    #[test]
    fn rotation_keeps_old_secrets_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        let old = Vault::open_or_create(&path).unwrap();
        let sealed = old.seal(1, "A", "v").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{}\n{text}", "ab".repeat(32))).unwrap();
        let rotated = Vault::load(&path).unwrap();
        assert_ne!(rotated.primary_id(), old.primary_id());
        assert_eq!(rotated.open(1, "A", &sealed).unwrap(), "v");
        assert_eq!(
            rotated.seal(1, "A", "v").unwrap().key_id,
            rotated.primary_id()
        );
        let resealed = rotated.reseal(1, "A", &sealed, "A").unwrap().unwrap();
        assert_eq!(resealed.key_id, rotated.primary_id());
        assert_eq!(rotated.open(1, "A", &resealed).unwrap(), "v");
        // What cannot be opened is left as it is.
        assert_eq!(rotated.reseal(2, "A", &sealed, "A").unwrap(), None);
        // Without the old line, the old secret cannot be opened.
        std::fs::write(&path, "ab".repeat(32)).unwrap();
        let err = Vault::load(&path)
            .unwrap()
            .open(1, "A", &sealed)
            .unwrap_err();
        assert!(err.to_string().contains("does not list"), "{err}");
    }

    #[test]
    fn unsafe_or_broken_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        std::fs::write(&path, "ab".repeat(32)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Vault::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        for bad in ["", "# only a comment\n", "abc\n", &"zz".repeat(32)] {
            std::fs::write(&path, bad).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(Vault::load(&path).is_err(), "{bad:?}");
        }
    }
}
