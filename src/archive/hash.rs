//! sha256 while streaming.

use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::names::Sha256Hex;

/// A reader that hashes everything read through it.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new(), count: 0 }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest of everything read.
    pub fn finish(self) -> Sha256Hex {
        Sha256Hex::from_digest(&self.hasher.finalize())
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// sha256 and length of a file, read in large blocks.
pub fn sha256_file(path: &Path) -> io::Result<(Sha256Hex, u64)> {
    let mut r = HashReader::new(std::fs::File::open(path)?);
    let mut buf = vec![0u8; 1 << 20];
    while r.read(&mut buf)? > 0 {}
    let n = r.count();
    Ok((r.finish(), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        let mut r = HashReader::new(&b"abc"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(r.count(), 3);
        assert_eq!(r.finish().as_str(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
