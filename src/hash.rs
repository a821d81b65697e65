//! FNV-1a: the one stable hash of canaryd, for sticky buckets (a product contract: changing it
//! reshuffles every sticky user) and for fingerprints kept in the rollout state file (std's
//! hasher is not promised to be stable across releases).

/// FNV-1a's offset basis: the state to start from.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, continuing from state `h`.
pub fn fnv<'a>(mut h: u64, bytes: impl IntoIterator<Item = &'a u8>) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h
}
