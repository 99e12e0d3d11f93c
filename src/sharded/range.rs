//! Shard ranges the Kubernetes API server can filter by (KEP-5866, "Server-side
//! sharded list and watch").
//!
//! KEP-5866 adds a `shardSelector` parameter to list and watch requests: the API
//! server hashes one metadata field of each object with 64-bit FNV-1a and returns only
//! the objects whose hash falls in the requested half-open range `[start, end)`. The
//! API reference of `ListOptions.shardSelector` (Kubernetes 1.36, alpha, feature gate
//! `ShardedListAndWatch`) gives the grammar:
//!
//! ```text
//! shardRange(object.metadata.uid, '0x0000000000000000', '0x8000000000000000')
//! shardRange(object.metadata.uid, '0x0', '0x8000000000000000') || shardRange(object.metadata.uid, '0x8000000000000000', '0x10000000000000000')
//! ```
//!
//! The field paths are CEL-style and rooted at `object` (`object.metadata.uid` or
//! `object.metadata.namespace`, not the field selector's `metadata.uid`); the bounds
//! are single-quoted string literals of `0x`-prefixed hexadecimal, the start inclusive
//! and the end exclusive; the end of the whole space, 2^64, is written
//! `'0x10000000000000000'`.

use super::balance::fnv1a64;

/// The part of the 64-bit FNV-1a hash space that one shard covers: `[start, end)`.
///
/// Shard `i` of `n` covers `[floor(i * 2^64 / n), floor((i + 1) * 2^64 / n))`, so the
/// `n` ranges tile the whole space `[0, 2^64)` without gap or overlap, and the last one
/// ends at 2^64 (`end` is `None`). This is the mapping of Kubernetes' server-side
/// sharded list and watch (KEP-5866): [`selector`](Self::selector) gives the
/// `shardSelector` value with which the API server returns only the objects whose
/// FNV-1a hash of the field is in the range, and
/// [`contains_key`](Self::contains_key) is the same test on the client, for servers
/// that ignore the parameter.
///
/// It is a second mapping of keys to shards, besides the crate's `shard_for_key`
/// (FNV-1a, then SplitMix64, then jump consistent hash), and the two disagree on most
/// keys. Use ranges for controllers whose shard owner should list and watch only its
/// own API objects; use `shard_for_key` for work that is not tied to API objects (it
/// moves fewer keys when the shard count changes by one).
///
/// # Examples
///
/// ```
/// use leaderelection::{LeaseLock, MemoryStore, ShardedElector};
///
/// # fn main() -> Result<(), leaderelection::ConfigError> {
/// let store = MemoryStore::new();
/// let elector = ShardedElector::new(leaderelection::Config::new("controller"), 4, move |name: &str| {
///     Box::new(store.lock(name)) as Box<dyn LeaseLock>
/// })?;
/// let range = elector.shard_range(1);
/// assert_eq!((range.start, range.end), (0x4000_0000_0000_0000, Some(0x8000_0000_0000_0000)));
/// assert_eq!(
///     range.selector("object.metadata.uid"),
///     "shardRange(object.metadata.uid, '0x4000000000000000', '0x8000000000000000')",
/// );
/// // The last range ends at 2^64, written as KEP-5866 writes it.
/// assert!(elector.shard_range(3).selector("object.metadata.uid").ends_with("'0x10000000000000000')"));
/// // The client-side filter: FNV-1a (64 bits) of the bytes, in the range or not.
/// let uid = "2f8b8d2e-6c1a-4f0e-9d53-0b6a4c1e7f3a";
/// let shard = (0..4).find(|&s| elector.shard_range(s).contains_key(uid)).unwrap();
/// assert_eq!(shard, elector.range_shard_for_key(uid));
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShardRange {
    /// The first hash in the range.
    pub start: u64,
    /// The first hash past the range; `None` for 2^64, the end of the hash space.
    pub end: Option<u64>,
}

impl ShardRange {
    /// The range of shard `shard` of `shards` (numbered `0..shards`):
    /// `[floor(shard * 2^64 / shards), floor((shard + 1) * 2^64 / shards))`.
    ///
    /// # Panics
    ///
    /// When `shards` is zero or `shard` is not less than `shards`.
    pub fn of(shard: u32, shards: u32) -> Self {
        assert!(
            shard < shards,
            "shard {shard} is out of range for {shards} shards"
        );
        let bound = |i: u32| ((u128::from(i) << 64) / u128::from(shards)) as u64;
        Self {
            start: bound(shard),
            end: (shard + 1 < shards).then(|| bound(shard + 1)),
        }
    }

    /// The shard, among `shards`, whose range holds `hash`: the inverse of
    /// [`of`](Self::of).
    ///
    /// # Panics
    ///
    /// When `shards` is zero.
    pub fn shard_for_hash(hash: u64, shards: u32) -> u32 {
        assert!(shards > 0, "shard_for_hash needs at least one shard");
        // The largest `i` with floor(i * 2^64 / n) <= hash, that is with
        // i * 2^64 < (hash + 1) * n.
        (((u128::from(hash) + 1) * u128::from(shards) - 1) >> 64) as u32
    }

    /// The shard, among `shards`, whose range holds the FNV-1a hash of `key`.
    ///
    /// # Panics
    ///
    /// When `shards` is zero.
    pub fn shard_for_key(key: impl AsRef<[u8]>, shards: u32) -> u32 {
        Self::shard_for_hash(Self::hash(key), shards)
    }

    /// The hash KEP-5866 filters by: 64-bit FNV-1a of the bytes (offset basis
    /// `0xcbf29ce484222325`, prime `0x100000001b3`), with no further mixing.
    pub fn hash(key: impl AsRef<[u8]>) -> u64 {
        fnv1a64(key.as_ref())
    }

    /// Whether `hash` is in `[start, end)`.
    pub fn contains(&self, hash: u64) -> bool {
        hash >= self.start && self.end.is_none_or(|end| hash < end)
    }

    /// Whether the FNV-1a hash of `key` is in the range: the client-side filter, the
    /// same test the API server applies to the field named in the selector (for
    /// [`selector("object.metadata.uid")`](Self::selector), pass the object's UID).
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> bool {
        self.contains(Self::hash(key))
    }

    /// The `shardSelector` query value that selects this range of `field`'s hash:
    /// `shardRange(<field>, '0x<start>', '0x<end>')`, each bound 16 lowercase hex
    /// digits and the end of the space `'0x10000000000000000'`, as in the examples of
    /// KEP-5866's API reference. The field paths the API server accepts are
    /// `object.metadata.uid` and `object.metadata.namespace`. The value still needs
    /// percent-encoding in a URL.
    pub fn selector(&self, field: &str) -> String {
        let end = match self.end {
            Some(end) => format!("0x{end:016x}"),
            None => "0x10000000000000000".to_string(),
        };
        format!("shardRange({field}, '0x{:016x}', '{end}')", self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_tile_the_hash_space() {
        for n in (1..=64).chain([1000]) {
            let mut next = Some(0u64);
            for i in 0..n {
                let r = ShardRange::of(i, n);
                assert_eq!(Some(r.start), next, "shard {i} of {n}");
                assert_eq!(r.end.is_none(), i == n - 1, "shard {i} of {n}");
                assert!(r.end.is_none_or(|e| e > r.start), "shard {i} of {n}: {r:?}");
                next = r.end;
                // Both edges fall on the right side, and the inverse agrees.
                let last = r.end.map_or(u64::MAX, |e| e - 1);
                for h in [r.start, last] {
                    assert!(r.contains(h));
                    assert_eq!(ShardRange::shard_for_hash(h, n), i, "{h:#x} of {n}");
                }
                if let Some(end) = r.end {
                    assert!(!r.contains(end));
                }
                if r.start > 0 {
                    assert!(!r.contains(r.start - 1));
                }
            }
            assert_eq!(next, None, "{n} shards do not end at 2^64");
        }
        let n = u32::MAX;
        assert_eq!(ShardRange::shard_for_hash(u64::MAX, n), n - 1);
        assert_eq!(ShardRange::shard_for_hash(0, n), 0);
        assert_eq!(ShardRange::of(n - 1, n).end, None);
    }

    #[test]
    fn bounds_are_floor_of_the_exact_fraction() {
        let r = ShardRange::of(1, 3);
        assert_eq!(r.start, 6_148_914_691_236_517_205); // floor(2^64 / 3)
        assert_eq!(r.end, Some(12_297_829_382_473_034_410)); // floor(2 * 2^64 / 3)
        assert_eq!(
            ShardRange::of(0, 1),
            ShardRange {
                start: 0,
                end: None
            }
        );
    }

    #[test]
    fn hash_is_plain_fnv1a() {
        // The FNV reference vectors (draft-eastlake-fnv), no mixing after.
        assert_eq!(ShardRange::hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(ShardRange::hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(ShardRange::hash("foobar"), 0x8594_4171_f739_67e8);
        // 0xaf63... is in the upper half and in the third quarter.
        assert!(ShardRange::of(1, 2).contains_key("a"));
        assert_eq!(ShardRange::shard_for_key("a", 4), 2);
    }

    #[test]
    fn selectors_are_written_as_the_kep_writes_them() {
        let got: Vec<String> = (0..4)
            .map(|i| ShardRange::of(i, 4).selector("object.metadata.uid"))
            .collect();
        assert_eq!(
            got,
            [
                "shardRange(object.metadata.uid, '0x0000000000000000', '0x4000000000000000')",
                "shardRange(object.metadata.uid, '0x4000000000000000', '0x8000000000000000')",
                "shardRange(object.metadata.uid, '0x8000000000000000', '0xc000000000000000')",
                "shardRange(object.metadata.uid, '0xc000000000000000', '0x10000000000000000')",
            ]
        );
        assert_eq!(
            ShardRange::of(0, 1).selector("object.metadata.namespace"),
            "shardRange(object.metadata.namespace, '0x0000000000000000', '0x10000000000000000')"
        );
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn a_shard_past_the_count_panics() {
        let _ = ShardRange::of(4, 4);
    }
}
