//! Which shard a key belongs to, and which replica should own each shard.
//!
//! Both are pure functions of their inputs, stable across versions, platforms and
//! processes, so that replicas agree without talking to each other.

/// FNV-1a, 64 bits (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's finalizer: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Lamping and Veach's jump consistent hash: a bucket in `0..buckets` for `key`, such
/// that growing `buckets` by one moves only `1 / buckets` of the keys.
fn jump(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The shard of `key` among `shards` shards (numbered `0..shards`).
///
/// The hash is FNV-1a (64 bits) of the key's bytes, finished with SplitMix64's mixer,
/// then Lamping and Veach's jump consistent hash onto `0..shards`: the same key maps to
/// the same shard in every process, on every platform and in every version of this
/// crate (it is part of the API), and changing `shards` from `n` to `n + 1` moves only
/// about `1 / (n + 1)` of the keys. Go programs can compute it in a few lines too.
///
/// # Panics
///
/// When `shards` is zero.
///
/// # Examples
///
/// ```
/// use leaderelection::shard_for_key;
///
/// let shard = shard_for_key("default/nginx-7c5ddbdf54-x8f7q", 12);
/// assert!(shard < 12);
/// assert_eq!(shard, shard_for_key("default/nginx-7c5ddbdf54-x8f7q", 12));
/// ```
pub fn shard_for_key(key: impl AsRef<[u8]>, shards: u32) -> u32 {
    assert!(shards > 0, "shard_for_key needs at least one shard");
    jump(mix(fnv1a64(key.as_ref())), shards)
}

/// Rendezvous (highest random weight) score of `identity` for `shard`.
fn score(shard: u32, identity: &str) -> u64 {
    let mut bytes = Vec::with_capacity(identity.len() + 5);
    bytes.extend_from_slice(&shard.to_be_bytes());
    bytes.push(0xff);
    bytes.extend_from_slice(identity.as_bytes());
    mix(fnv1a64(&bytes))
}

/// The target owner of every shard (an index into `members`), for `members` sorted
/// and deduplicated.
///
/// Each member may own `floor(shards / members)` shards, and the `shards % members`
/// members with the highest score for the shard count `shards` own one more, so owners
/// differ by at most one shard. Shards are placed in order, each on the member that
/// ranks it highest by rendezvous hashing among those with room left: every replica
/// computes the same table from the same member list, and a join or leave moves few
/// shards besides those the newcomer ranks first or the leaver owned.
pub(crate) fn assign(shards: u32, members: &[String]) -> Vec<usize> {
    let m = members.len();
    if m == 0 {
        return Vec::new();
    }
    let base = shards as usize / m;
    let extra = shards as usize % m;
    let mut by_bonus: Vec<usize> = (0..m).collect();
    by_bonus.sort_by_key(|&i| (std::cmp::Reverse(score(shards, &members[i])), i));
    let mut room = vec![base; m];
    for &i in by_bonus.iter().take(extra) {
        room[i] += 1;
    }
    let mut owners = Vec::with_capacity(shards as usize);
    let mut ranked: Vec<(u64, usize)> = Vec::with_capacity(m);
    for shard in 0..shards {
        ranked.clear();
        ranked.extend((0..m).map(|i| (score(shard, &members[i]), i)));
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        let owner = ranked
            .iter()
            .map(|&(_, i)| i)
            .find(|&i| room[i] > 0)
            .unwrap_or(0);
        room[owner] = room[owner].saturating_sub(1);
        owners.push(owner);
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("replica-{i}")).collect()
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn shard_for_key_is_pinned() {
        // Part of the API: these values must never change.
        let got: Vec<u32> = ["a", "b", "default/web-0", ""]
            .iter()
            .map(|k| shard_for_key(k, 16))
            .collect();
        assert_eq!(got, PINNED);
        for n in 1..50 {
            assert!(shard_for_key("x", n) < n);
        }
    }
    const PINNED: [u32; 4] = [9, 12, 1, 11];

    #[test]
    fn growing_the_shard_count_moves_few_keys() {
        let moved = (0..10_000)
            .filter(|i| {
                let k = format!("pod-{i}");
                shard_for_key(&k, 10) != shard_for_key(&k, 11)
            })
            .count();
        assert!(moved < 1_300, "{moved} of 10000 keys moved");
    }

    #[test]
    fn assignment_is_balanced_within_one() {
        for (shards, m) in [(64, 4), (12, 5), (1000, 10), (3, 7), (12, 3)] {
            let owners = assign(shards, &members(m));
            let mut count = vec![0; m];
            for o in owners {
                count[o] += 1;
            }
            let (lo, hi) = (count.iter().min().unwrap(), count.iter().max().unwrap());
            assert!(hi - lo <= 1, "{shards} over {m}: {count:?}");
        }
    }

    #[test]
    fn a_join_moves_few_shards() {
        let before = assign(64, &members(4));
        let mut five = members(4);
        five.push("replica-new".into());
        five.sort();
        let after = assign(64, &five);
        let name = |v: &[String], i: usize| v[i].clone();
        let old = members(4);
        let moved = (0..64)
            .filter(|&s| name(&old, before[s]) != name(&five, after[s]))
            .count();
        // 12 or 13 must move to the newcomer; the greedy placement moves some more.
        assert!(moved <= 32, "{moved} shards moved");
    }
}
