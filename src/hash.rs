//! The hash of the maps every call looks its service's name up in.

/// Builds [`NameHasher`]s.
pub(crate) type BuildNameHasher = std::hash::BuildHasherDefault<NameHasher>;

/// A multiply-and-fold hash over eight bytes at a time (as foldhash and aHash do), a few
/// instructions for a service name where SipHash takes about 300. It does not resist
/// chosen collisions, which only matter for keys an attacker can insert: the maps keyed
/// with it hold an entry for each service the application has called (its stack, its
/// cached token), and only services the registry knows get one.
#[derive(Default, Clone, Copy)]
pub(crate) struct NameHasher(u64);

impl NameHasher {
    const K: u64 = 0xf135_7aea_2e62_a9c5;

    /// A folded multiply: the 128-bit product's halves xored, so that every bit of the
    /// word reaches every bit of the state (a plain multiply only carries bits upwards).
    #[inline]
    fn add(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(Self::K);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl std::hash::Hasher for NameHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        let mut word = [0; 8];
        word[..rest.len()].copy_from_slice(rest);
        // The length, so that trailing zero bytes change the hash.
        self.add(u64::from_le_bytes(word) ^ ((bytes.len() as u64) << 56));
    }

    #[inline]
    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn service_names_spread_over_the_buckets() {
        let hasher = BuildNameHasher::default();
        // Names alike but for a few characters, as services are named; the map finds its
        // bucket from the hash's low bits.
        let names: Vec<String> = (0..10_000).map(|i| format!("svc-{i:04}")).collect();
        let mut hashes: Vec<u64> = names.iter().map(|n| hasher.hash_one(n.as_str())).collect();
        let mut load = vec![0u32; 1024];
        for hash in &hashes {
            load[(hash & 1023) as usize] += 1;
        }
        let fullest = load.iter().max().copied().unwrap_or_default();
        assert!(
            fullest < 30,
            "{fullest} of 10 000 names in one of 1 024 buckets"
        );
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), names.len(), "every name hashes apart");
        // Trailing zero bytes and the length count.
        assert_ne!(hasher.hash_one("a"), hasher.hash_one("a\0"));
        assert_ne!(hasher.hash_one(""), hasher.hash_one("\0"));
    }
}
