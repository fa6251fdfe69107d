//! ECDSA P-256 keys: PEM in (PKCS#8 or SEC1 private keys, SPKI public keys), PEM out, and the
//! key id OMS signatures carry (the sha256 of the public key's SPKI PEM).
//!
//! A private key's bytes never reach an error message, a log line or a `Debug` output.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use p256::ecdsa::{Signature, SigningKey, VerifyingKey, signature::Signer as _, signature::Verifier as _};
use p256::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _, LineEnding,
};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A private signing key and where it came from (a path, or an environment variable).
pub struct PrivateKey {
    key: SigningKey,
    public: PublicKey,
    origin: String,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey").field("id", &self.public.short_id()).field("origin", &self.origin).finish()
    }
}

impl PrivateKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut urandom =
            std::fs::File::open("/dev/urandom").map_err(|e| Error::io("cannot open", Path::new("/dev/urandom"), e))?;
        loop {
            let mut bytes = [0u8; 32];
            urandom.read_exact(&mut bytes).map_err(|e| Error::io("cannot read", Path::new("/dev/urandom"), e))?;
            // Zero or a value past the group order (probability ~2^-32) is not a key: draw again.
            if let Ok(key) = SigningKey::from_slice(&bytes) {
                bytes.fill(0);
                return Ok(Self::from_key(key, "a new key".into()));
            }
        }
    }

    /// Reads a PEM private key (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`, as `openssl`
    /// writes them) from `source`: a path, or PEM text itself (a CI secret in an environment
    /// variable). `origin` names it in messages.
    pub fn load(source: &str, origin: &str) -> Result<Self> {
        let (text, origin) = if source.trim_start().starts_with("-----BEGIN") {
            (source.to_string(), origin.to_string())
        } else {
            let path = PathBuf::from(source);
            warn_if_readable_by_others(&path);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::usage(
                    format!("cannot read the signing key {}: {e}", path.display()),
                    "give the path of a PEM private key (make one with `crowecode-cloud keygen --out PATH`)",
                )
            })?;
            (text, path.display().to_string())
        };
        Self::parse(&text, &origin)
    }

    fn parse(text: &str, origin: &str) -> Result<Self> {
        let bad = |what: &str| {
            Error::usage(
                format!("the signing key {origin} is not usable: {what}"),
                "use an ECDSA P-256 key in PEM (`crowecode-cloud keygen --out PATH`, or `openssl ecparam -genkey -name prime256v1`)",
            )
        };
        if text.contains("ENCRYPTED PRIVATE KEY") {
            return Err(bad("it is encrypted with a passphrase, which this tool cannot prompt for"));
        }
        let key = if text.contains("-----BEGIN EC PRIVATE KEY-----") {
            p256::SecretKey::from_sec1_pem(text).map(SigningKey::from).map_err(|_| bad("not a P-256 EC private key"))?
        } else if text.contains("-----BEGIN PRIVATE KEY-----") {
            SigningKey::from_pkcs8_pem(text).map_err(|_| {
                bad("not a P-256 key (OMS key signatures, AWS KMS and GCP KMS use P-256; RSA and Ed25519 are not supported)")
            })?
        } else {
            return Err(bad("no PEM private key in it"));
        };
        Ok(Self::from_key(key, origin.to_string()))
    }

    fn from_key(key: SigningKey, origin: String) -> Self {
        let public = PublicKey::from_key(*key.verifying_key(), None);
        Self { key, public, origin }
    }

    /// The matching public key.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Where the key came from (a path, or the name of a variable), for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// An ECDSA-SHA256 signature over `message`, DER-encoded (as OMS and DSSE carry it).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let sig: Signature = self.key.sign(message);
        sig.to_der().as_bytes().to_vec()
    }

    /// The key as PKCS#8 PEM (for `keygen` only).
    pub(crate) fn to_pkcs8_pem(&self) -> Result<p256::elliptic_curve::zeroize::Zeroizing<String>> {
        self.key.to_pkcs8_pem(LineEnding::LF).map_err(|_| Error::other("cannot encode the new key", None))
    }
}

/// A public key that verifies signatures.
#[derive(Clone)]
pub struct PublicKey {
    key: VerifyingKey,
    pem: String,
    id: String,
    /// Where it was configured (a path), for messages.
    label: Option<String>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short_id())
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl PublicKey {
    fn from_key(key: VerifyingKey, label: Option<String>) -> Self {
        let pem = key.to_public_key_pem(LineEnding::LF).expect("a P-256 public key encodes");
        let id = hex::encode(Sha256::digest(pem.as_bytes()));
        Self { key, pem, id, label }
    }

    /// Parses an SPKI PEM public key (`BEGIN PUBLIC KEY`), as `keygen` and `openssl ec -pubout`
    /// write it.
    pub fn from_pem(text: &str, origin: &str) -> Result<Self> {
        let key = VerifyingKey::from_public_key_pem(text.trim()).map_err(|_| {
            Error::usage(
                format!("the trusted key {origin} is not an ECDSA P-256 public key in PEM (BEGIN PUBLIC KEY)"),
                "give the .pub file `crowecode-cloud keygen` wrote, or `openssl ec -in KEY -pubout`",
            )
        })?;
        Ok(Self::from_key(key, Some(origin.to_string())))
    }

    /// The key id: sha256 (hex) of the SPKI PEM, the `publicKey.hint` of an OMS bundle.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The first 16 hex digits of the id, for humans and object names.
    pub fn short_id(&self) -> &str {
        &self.id[..16]
    }

    /// The key in SPKI PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Where it was configured, or its short id.
    pub fn label(&self) -> String {
        match &self.label {
            Some(l) => format!("{} ({l})", self.short_id()),
            None => self.short_id().to_string(),
        }
    }

    /// Whether `der` is this key's ECDSA-SHA256 signature over `message` (DER; raw r‖s too).
    pub fn verifies(&self, message: &[u8], der: &[u8]) -> bool {
        let sig = Signature::from_der(der).or_else(|_| Signature::from_slice(der));
        sig.is_ok_and(|s| self.key.verify(message, &s).is_ok())
    }
}

/// Says so when a private key file can be read by its group or others (ssh refuses such keys;
/// this only warns, since a Kubernetes Secret volume is often mounted 0644).
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "the signing key {} can be read by other users (mode {:o}); `chmod 600` it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
}

/// Writes a new key pair: `out` (PKCS#8 PEM, mode 0600, never over an existing file) and
/// `out.pub` (SPKI PEM). Returns the public key.
pub fn keygen(out: &Path, force: bool) -> Result<PublicKey> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let public_path = pub_path(out);
    for p in [out, public_path.as_path()] {
        if !force && p.exists() {
            return Err(Error::usage(
                format!("{} already exists; nothing was written", p.display()),
                "choose another --out, or pass --force to replace the key pair",
            ));
        }
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| Error::io("cannot create", parent, e))?;
    }
    let key = PrivateKey::generate()?;
    let pem = key.to_pkcs8_pem()?;
    let write = |path: &Path, bytes: &[u8], mode: u32| -> Result<()> {
        let tmp = path.with_file_name(format!(
            ".{}.tmp-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
            std::process::id()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io("cannot create", &tmp, e))?;
        let done = f.write_all(bytes).and_then(|()| f.sync_all()).and_then(|()| std::fs::rename(&tmp, path));
        done.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io("cannot write", path, e)
        })
    };
    write(out, pem.as_bytes(), 0o600)?;
    write(&public_path, key.public().pem().as_bytes(), 0o644)?;
    Ok(key.public().clone())
}

/// `PATH.pub`, as ssh-keygen names a public key.
pub fn pub_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_key_only() {
        let a = PrivateKey::generate().unwrap();
        let b = PrivateKey::generate().unwrap();
        let sig = a.sign(b"message");
        assert!(a.public().verifies(b"message", &sig));
        assert!(!a.public().verifies(b"messagf", &sig));
        assert!(!b.public().verifies(b"message", &sig));
        assert!(!a.public().verifies(b"message", b"not a signature"));
    }

    #[test]
    fn keys_round_trip_through_pem_and_never_show_in_debug() {
        let a = PrivateKey::generate().unwrap();
        let pem = a.to_pkcs8_pem().unwrap();
        let b = PrivateKey::parse(&pem, "test").unwrap();
        assert_eq!(a.public(), b.public());
        let public = PublicKey::from_pem(a.public().pem(), "test").unwrap();
        assert_eq!(&public, a.public());
        let shown = format!("{a:?}");
        assert!(!shown.contains(pem.lines().nth(1).unwrap()), "{shown}");
        assert!(PrivateKey::parse("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n", "x").is_err());
    }
}
