//! Signed tokens: the session cookie, the pending sign-in and the CSRF token are all a
//! payload and an HMAC-SHA256 over it, under the session keys.
//!
//! The first key signs; every key verifies, so a key can be rotated in (first) and the
//! previous one kept (second) until the sessions it signed have expired. Every MAC is bound
//! to a purpose, so a value signed for one use is never accepted for another. Comparisons
//! are constant time.

use std::{fmt, path::Path};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The length of a MAC.
pub const MAC_LEN: usize = 32;

/// Shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// What a MAC is for; part of the signed input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The session cookie.
    Session,
    /// The pending sign-in cookie (between the e-mail and the code).
    Pending,
    /// The commitment to a one-time code.
    Code,
    /// The CSRF token of the sign-in forms.
    Csrf,
    /// A proof-of-work challenge handed to a client.
    Challenge,
    /// The pass a solved challenge earns.
    Pass,
}

impl Purpose {
    const fn label(self) -> &'static [u8] {
        match self {
            Self::Session => b"portcullis/session/v1\0",
            Self::Pending => b"portcullis/pending/v1\0",
            Self::Code => b"portcullis/code/v1\0",
            Self::Csrf => b"portcullis/csrf/v1\0",
            Self::Challenge => b"portcullis/challenge/v1\0",
            Self::Pass => b"portcullis/pass/v1\0",
        }
    }
}

/// Why the session keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key is too short to be safe.
    #[error("{path}: a session key needs at least {MIN_KEY_LEN} bytes, it has {len}")]
    TooShort {
        /// The file.
        path: String,
        /// Its length.
        len: usize,
    },
    /// No key at all.
    #[error("no session key file")]
    None,
}

/// The session keys: the first signs, all verify.
#[derive(Clone)]
pub struct Signer {
    keys: Vec<HmacSha256>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Keys from their bytes, signing key first.
    pub fn new<K: AsRef<[u8]>>(keys: impl IntoIterator<Item = K>) -> Option<Self> {
        let keys: Vec<HmacSha256> = keys
            .into_iter()
            .map(|key| HmacSha256::new_from_slice(key.as_ref()).expect("HMAC takes any key"))
            .collect();
        (!keys.is_empty()).then_some(Self { keys })
    }

    /// Reads the key files (every byte is part of the key).
    pub fn from_files<P: AsRef<Path>>(files: &[P]) -> Result<Self, KeyError> {
        let mut keys = Vec::with_capacity(files.len());
        for file in files {
            let path = file.as_ref();
            let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let key = bytes;
            if key.len() < MIN_KEY_LEN {
                return Err(KeyError::TooShort {
                    path: path.display().to_string(),
                    len: key.len(),
                });
            }
            keys.push(key);
        }
        Self::new(keys).ok_or(KeyError::None)
    }

    fn mac(key: &HmacSha256, purpose: Purpose, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = key.clone();
        mac.update(purpose.label());
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The MAC of `parts` for `purpose` under the signing key.
    pub fn sign(&self, purpose: Purpose, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        Self::mac(&self.keys[0], purpose, parts)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `tag` is the MAC of `parts` for `purpose` under any key (constant time for
    /// each key).
    pub fn verify(&self, purpose: Purpose, parts: &[&[u8]], tag: &[u8]) -> bool {
        // Every key is tried, so the time does not tell which one matched.
        self.keys.iter().fold(false, |found, key| {
            Self::mac(key, purpose, parts).verify_slice(tag).is_ok() | found
        })
    }

    /// `base64url(payload).base64url(mac)`: a payload signed for `purpose`.
    pub fn seal(&self, purpose: Purpose, payload: &[u8]) -> String {
        let tag = self.sign(purpose, &[payload]);
        let mut out = URL_SAFE_NO_PAD.encode(payload);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut out);
        out
    }

    /// The payload of a value made by [`Self::seal`] for `purpose`, if its MAC holds.
    pub fn open(&self, purpose: Purpose, sealed: &str) -> Option<Vec<u8>> {
        let (payload, tag) = sealed.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.verify(purpose, &[&payload], &tag).then_some(payload)
    }
}

/// `n` random bytes from the operating system.
pub fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

/// Base64url without padding, for cookies and form fields.
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The inverse of [`encode`].
pub fn decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NEW: &[u8] = b"fedcba9876543210fedcba9876543210";

    #[test]
    fn a_sealed_value_opens_with_the_same_keys_and_purpose_only() {
        let signer = Signer::new([NEW]).unwrap();
        let sealed = signer.seal(Purpose::Session, b"payload");
        assert_eq!(signer.open(Purpose::Session, &sealed).unwrap(), b"payload");
        assert_eq!(signer.open(Purpose::Pending, &sealed), None);
        assert_eq!(
            Signer::new([OLD]).unwrap().open(Purpose::Session, &sealed),
            None
        );
    }

    #[test]
    fn the_previous_key_still_verifies_after_a_rotation() {
        let before = Signer::new([OLD]).unwrap();
        let after = Signer::new([NEW, OLD]).unwrap();
        let sealed = before.seal(Purpose::Session, b"x");
        assert!(after.open(Purpose::Session, &sealed).is_some());
        // New values are signed with the new key only.
        let fresh = after.seal(Purpose::Session, b"x");
        assert!(before.open(Purpose::Session, &fresh).is_none());
    }

    #[test]
    fn any_change_to_payload_or_tag_is_refused() {
        let signer = Signer::new([NEW]).unwrap();
        let sealed = signer.seal(Purpose::Session, b"alice@example.org");
        let (payload, tag) = sealed.split_once('.').unwrap();
        let other = encode(b"mallory@example.org");
        assert_eq!(
            signer.open(Purpose::Session, &format!("{other}.{tag}")),
            None
        );
        let mut bad_tag = decode(tag).unwrap();
        bad_tag[0] ^= 1;
        assert_eq!(
            signer.open(Purpose::Session, &format!("{payload}.{}", encode(&bad_tag))),
            None
        );
        assert_eq!(signer.open(Purpose::Session, payload), None);
        assert_eq!(signer.open(Purpose::Session, ""), None);
    }

    #[test]
    fn parts_are_length_delimited() {
        let signer = Signer::new([NEW]).unwrap();
        assert_ne!(
            signer.sign(Purpose::Code, &[b"ab", b"c"]),
            signer.sign(Purpose::Code, &[b"a", b"bc"])
        );
    }

    #[test]
    fn short_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("portcullis-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, b"tiny\n").unwrap();
        assert!(matches!(
            Signer::from_files(&[&short]),
            Err(KeyError::TooShort { len: 5, .. })
        ));
        let good = dir.join("good");
        std::fs::write(&good, [NEW, b"\n"].concat()).unwrap();
        assert!(Signer::from_files(&[&good]).is_ok());
        assert!(matches!(
            Signer::from_files::<&Path>(&[]),
            Err(KeyError::None)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
