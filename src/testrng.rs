//! Reproducible pseudo-random numbers for unit tests, without a dependency.

/// SplitMix64 (Steele, Lea and Flood, 2014): any seed, even 0 or 1, gives a
/// well-spread stream, so tests can loop over small seeds.
pub(crate) fn splitmix64(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
