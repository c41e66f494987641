//! Stable 64-bit hashes of label strings, for exchanging labels between
//! processes as integers instead of as pickled strings.
//!
//! The hash is fixed: the same bytes give the same value in every process,
//! on every platform and in every protofast version (the test vectors below
//! pin it). It is not a cryptographic hash: anyone can construct collisions on
//! purpose, but natural label texts collide with probability about
//! `m² / 2⁶⁵` for `m` distinct labels.
//!
//! # The algorithm (version 1)
//!
//! All arithmetic is on unsigned 64-bit words, wrapping. For a string of `n`
//! UTF-8 bytes:
//!
//! 1. `h = K0 ^ n`.
//! 2. For each 8-byte chunk of the bytes, in order, read as a little-endian
//!    word `w` (the last chunk, when shorter, padded with zero bytes; no chunk
//!    for the empty string): `h = fold(h ^ w)`, where `fold(x)` multiplies `x`
//!    by `K1` into 128 bits and XORs the high and low halves.
//! 3. Finalise: `h ^= h >> 33; h *= F1; h ^= h >> 33; h *= F2; h ^= h >> 33`.
//! 4. The result is `h` reinterpreted as a signed 64-bit integer (two's
//!    complement), the form numpy and torch hold.
//!
//! The length in the starting state keeps the zero padding unambiguous
//! (`"a"` and `"a\0"` differ). One folded multiply per 8 bytes keeps the hash
//! about four times cheaper than a byte-at-a-time hash such as FNV-1a.

/// The starting state (the first fractional hexadecimal digits of π).
pub const K0: u64 = 0x243F_6A88_85A3_08D3;
/// The multiplier of each chunk (2⁶⁴ divided by the golden ratio, odd).
pub const K1: u64 = 0x9E37_79B9_7F4A_7C15;
/// The finaliser's multipliers.
pub const F1: u64 = 0xFF51_AFD7_ED55_8CCD;
/// See [`F1`].
pub const F2: u64 = 0xC4CE_B9FE_1A85_EC53;

/// `x * K1` in 128 bits, high half XOR low half.
#[inline(always)]
fn fold(x: u64) -> u64 {
    let p = u128::from(x) * u128::from(K1);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The stable hash of `bytes` (see the module documentation), as the signed
/// integer numpy and torch store.
pub fn label_hash(bytes: &[u8]) -> i64 {
    let mut h = K0 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().expect("chunks of 8 bytes"));
        h = fold(h ^ w);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        h = fold(h ^ u64::from_le_bytes(last));
    }
    h ^= h >> 33;
    h = h.wrapping_mul(F1);
    h ^= h >> 33;
    h = h.wrapping_mul(F2);
    h ^= h >> 33;
    h as i64
}

/// [`label_hash`] of each label's UTF-8 bytes.
pub fn label_hashes<S: AsRef<str>>(labels: &[S]) -> Vec<i64> {
    labels
        .iter()
        .map(|l| label_hash(l.as_ref().as_bytes()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values computed independently, from the description above, by the
    /// pure-Python implementation in `tests/core/test_label_hashes.py` (which
    /// pins the same values). They must never change.
    const VECTORS: [(&str, i64); 9] = [
        ("", 8848935107335307795),
        ("a", 1108961763177208711),
        ("a\0", 5622207272599723098),
        ("walking", 3287065890914717306),
        ("walking upstairs", 7256239408253180257),
        ("12345678", -3756447662748408629),
        ("123456789", 27907803560282598),
        ("h\u{e9}llo w\u{f6}rld \u{2713}", -893065434330581332),
        ("\u{1F600} emoji", -7094812828988329143),
    ];

    #[test]
    fn pinned_vectors() {
        for (text, want) in VECTORS {
            assert_eq!(label_hash(text.as_bytes()), want, "{text:?}");
        }
        let texts: Vec<&str> = VECTORS.iter().map(|v| v.0).collect();
        let want: Vec<i64> = VECTORS.iter().map(|v| v.1).collect();
        assert_eq!(label_hashes(&texts), want);
    }

    #[test]
    fn every_byte_and_the_length_count() {
        // one flipped bit anywhere in up to three chunks changes the hash, as
        // does a trailing zero byte (the padding is not ambiguous)
        let base: Vec<u8> = (0u8..23).map(|b| b.wrapping_mul(37)).collect();
        let h = label_hash(&base);
        let mut seen = std::collections::HashSet::new();
        for i in 0..base.len() {
            for bit in 0..8 {
                let mut other = base.clone();
                other[i] ^= 1 << bit;
                let g = label_hash(&other);
                assert_ne!(g, h, "byte {i} bit {bit}");
                assert!(seen.insert(g), "byte {i} bit {bit} collides");
            }
        }
        for n in 0..base.len() {
            let mut padded = base[..n].to_vec();
            padded.push(0);
            assert_ne!(label_hash(&base[..n]), label_hash(&padded), "n={n}");
        }
    }
}
