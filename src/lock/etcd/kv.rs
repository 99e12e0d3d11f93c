//! The record as etcd stores it: the JSON of one key, versioned by its mod revision.
//! Shared by the lock's reads and its watch.

use etcd_client::KeyValue;

use crate::error::LockError;
use crate::lock::{Version, Versioned};
use crate::record::{InvalidRecord, LeaderElectionRecord};

/// The record in a key-value, versioned by its mod revision.
pub(super) fn parse_kv(kv: &KeyValue) -> Result<Versioned, LockError> {
    let version = version(kv.mod_revision());
    let record = match std::str::from_utf8(kv.value()) {
        Ok(text) => LeaderElectionRecord::from_json(text),
        Err(e) => Err(InvalidRecord::new(
            format!("the value is not UTF-8: {e}"),
            &String::from_utf8_lossy(kv.value()),
        )),
    };
    match record {
        Ok(record) => Ok(Versioned { record, version }),
        Err(source) => Err(LockError::InvalidRecord {
            source,
            version: Some(version),
        }),
    }
}

pub(super) fn version(revision: i64) -> Version {
    Version::from(u64::try_from(revision).unwrap_or(0))
}
