//! Who leads an etcd election: the candidate key with the lowest create revision.

use etcd_client::KeyValue;

/// The key that leads an etcd election: the candidate key with the lowest create
/// revision under `<name>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdLeader {
    /// The key, `<name>/<lease id in hex>`.
    pub key: String,
    /// Its value: the leader's identity (what `etcdctl elect NAME PROPOSAL` calls the
    /// proposal). Invalid UTF-8 is replaced.
    pub value: String,
    /// The key's create revision: the fencing token of the leadership.
    pub create_revision: i64,
    /// The session lease the key is bound to.
    pub lease: i64,
}

impl EtcdLeader {
    pub(super) fn from_kv(kv: &KeyValue) -> Self {
        Self {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            create_revision: kv.create_revision(),
            lease: kv.lease(),
        }
    }
}

/// The session lease of a candidate key: etcd's, or, for a key etcd reports without
/// one, the lease Go names the key after.
pub(super) fn lease_of(key: &EtcdLeader) -> Option<i64> {
    if key.lease != 0 {
        return Some(key.lease);
    }
    let hex = key.key.rsplit('/').next().unwrap_or_default();
    i64::from_str_radix(hex, 16).ok()
}
