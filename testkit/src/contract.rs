//! The [`LeaseLock`] contract as executable scenarios: run them against your own lock
//! to know the elector can rely on it.
//!
//! The elector's safety rests on a few promises every lock makes (documented on
//! [`LeaseLock`]): an absent record reads as `None`, `create` refuses to overwrite,
//! `update` is a compare-and-swap on the version, a watch reports every change in
//! order, an unreadable record is an error that carries its version, and fencing
//! tokens only grow. Each scenario here checks one promise on a fresh record and
//! panics with the lock's [`describe`](LeaseLock::describe) and the rule it broke.
//!
//! Call [`run_all`] with a [`Backend`] (how to open a lock on a name, and, where the
//! backend allows, how to delete or garble its record behind the lock's back), or call
//! the scenarios one by one with a `&dyn LeaseLock`. This crate's own locks (memory,
//! file, etcd, every Kubernetes kind) run the same suite.
//!
//! Every call to the lock is bounded by [`CALL_LIMIT`], so a hanging backend fails the
//! scenario instead of the whole test run.
//!
//! # Examples
//!
//! ```
//! use async_trait::async_trait;
//! use leaderelection::{LeaseLock, MemoryStore};
//! use leaderelection_testkit::contract::{self, Backend};
//!
//! struct Memory(MemoryStore);
//!
//! #[async_trait]
//! impl Backend for Memory {
//!     async fn lock(&self, name: &str) -> Box<dyn LeaseLock> {
//!         Box::new(self.0.lock(name))
//!     }
//!     fn can_delete(&self) -> bool {
//!         true
//!     }
//!     async fn delete(&self, name: &str) {
//!         self.0.delete(name);
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! contract::run_all(&Memory(MemoryStore::new())).await;
//!
//! // Or one scenario, on one lock.
//! let store = MemoryStore::new();
//! contract::create_of_an_existing_record_is_already_exists(&store.lock("jobs")).await;
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use leaderelection::{LeaderElectionRecord, LeaseLock, LockError, LockEvent, Version, WatchStream};

/// The longest one call to the lock (or one wait for a watch event) may take before
/// the scenario fails: generous, since a loaded machine runs real servers.
pub const CALL_LIMIT: Duration = Duration::from_secs(30);

/// How [`run_all`] reaches a backend: opens locks, and deletes or garbles records the
/// way another program (an operator, a bug) would.
///
/// Each scenario uses its own record name, made of lowercase letters and `-` so that
/// every backend accepts it (Kubernetes object names included).
#[async_trait]
pub trait Backend: Send + Sync {
    /// A new handle on the record `name`, as another replica would open it. The record
    /// must not exist before the first scenario that uses `name` runs.
    async fn lock(&self, name: &str) -> Box<dyn LeaseLock>;

    /// Whether [`delete`](Self::delete) works. The default, `false`, skips the
    /// scenarios that delete a record.
    fn can_delete(&self) -> bool {
        false
    }

    /// Deletes the record `name` behind the locks' back.
    ///
    /// # Panics
    ///
    /// The default panics: override it together with [`can_delete`](Self::can_delete).
    async fn delete(&self, name: &str) {
        panic!("Backend::delete is not implemented for {name}: override it with can_delete");
    }

    /// Whether [`corrupt`](Self::corrupt) works. The default, `false`, skips the
    /// scenario of an unreadable record.
    fn can_corrupt(&self) -> bool {
        false
    }

    /// Replaces the stored record `name`, which exists, with something the lock cannot
    /// parse (malformed JSON, a field of the wrong type), as a new stored version.
    ///
    /// # Panics
    ///
    /// The default panics: override it together with [`can_corrupt`](Self::can_corrupt).
    async fn corrupt(&self, name: &str) {
        panic!("Backend::corrupt is not implemented for {name}: override it with can_corrupt");
    }
}

/// One scenario of the suite, to leave out with [`run_all_except`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scenario {
    /// [`get_of_an_absent_record_is_none`]
    GetAbsent,
    /// [`create_then_get_round_trips`]
    CreateRoundTrips,
    /// [`create_of_an_existing_record_is_already_exists`]
    CreateExisting,
    /// [`update_with_the_current_version_writes_a_new_version`]
    UpdateCurrent,
    /// [`update_with_a_stale_version_is_a_conflict`]
    UpdateStale,
    /// [`update_after_deletion_is_a_conflict`] (needs [`Backend::delete`])
    UpdateAfterDelete,
    /// [`watch_reports_changes_in_order`]
    WatchChanges,
    /// [`watch_reports_deletion`] (needs [`Backend::delete`])
    WatchDeletion,
    /// [`invalid_record_carries_its_version_and_update_overwrites_it`] (needs
    /// [`Backend::corrupt`])
    InvalidRecord,
    /// [`fencing_tokens_grow_with_every_new_holder`]
    FencingTokens,
    /// [`fencing_tokens_grow_across_deletion`] (needs [`Backend::delete`])
    FencingAfterDelete,
}

impl Scenario {
    /// Every scenario, in the order [`run_all`] runs them.
    pub const ALL: [Scenario; 11] = [
        Scenario::GetAbsent,
        Scenario::CreateRoundTrips,
        Scenario::CreateExisting,
        Scenario::UpdateCurrent,
        Scenario::UpdateStale,
        Scenario::UpdateAfterDelete,
        Scenario::WatchChanges,
        Scenario::WatchDeletion,
        Scenario::InvalidRecord,
        Scenario::FencingTokens,
        Scenario::FencingAfterDelete,
    ];

    /// The record name [`run_all`] gives this scenario.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::GetAbsent => "contract-get-absent",
            Scenario::CreateRoundTrips => "contract-create-round-trips",
            Scenario::CreateExisting => "contract-create-existing",
            Scenario::UpdateCurrent => "contract-update-current",
            Scenario::UpdateStale => "contract-update-stale",
            Scenario::UpdateAfterDelete => "contract-update-after-delete",
            Scenario::WatchChanges => "contract-watch-changes",
            Scenario::WatchDeletion => "contract-watch-deletion",
            Scenario::InvalidRecord => "contract-invalid-record",
            Scenario::FencingTokens => "contract-fencing-tokens",
            Scenario::FencingAfterDelete => "contract-fencing-after-delete",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Runs every scenario against `backend`, each on a fresh record; the ones that need a
/// capability the backend lacks are skipped.
///
/// # Panics
///
/// On the first broken rule, naming the lock and the rule.
///
/// # Examples
///
/// See the [module](self) docs.
pub async fn run_all(backend: &dyn Backend) {
    run_all_except(backend, &[]).await;
}

/// Runs every scenario but those in `skip`: for a backend that breaks a rule knowingly
/// (say so where you call it, with the reason).
///
/// # Panics
///
/// On the first broken rule, naming the lock and the rule.
///
/// # Examples
///
/// ```no_run
/// # use leaderelection_testkit::contract::{self, Backend, Scenario};
/// # async fn f(backend: &dyn Backend) {
/// // This server recreates a deleted object on update.
/// contract::run_all_except(backend, &[Scenario::UpdateAfterDelete]).await;
/// # }
/// ```
pub async fn run_all_except(backend: &dyn Backend, skip: &[Scenario]) {
    for scenario in Scenario::ALL {
        if !skip.contains(&scenario) {
            run(backend, scenario).await;
        }
    }
}

/// Runs one scenario against `backend` on the record [`Scenario::name`]; does nothing
/// when it needs a capability the backend lacks.
///
/// # Panics
///
/// When the lock breaks the scenario's rule.
pub async fn run(backend: &dyn Backend, scenario: Scenario) {
    let name = scenario.name();
    let lock = backend.lock(name).await;
    let lock = &*lock;
    let delete = async || backend.delete(name).await;
    let corrupt = async || backend.corrupt(name).await;
    match scenario {
        Scenario::GetAbsent => get_of_an_absent_record_is_none(lock).await,
        Scenario::CreateRoundTrips => {
            create_then_get_round_trips(lock, &*backend.lock(name).await).await
        }
        Scenario::CreateExisting => create_of_an_existing_record_is_already_exists(lock).await,
        Scenario::UpdateCurrent => {
            update_with_the_current_version_writes_a_new_version(lock, &*backend.lock(name).await)
                .await
        }
        Scenario::UpdateStale => {
            update_with_a_stale_version_is_a_conflict(lock, &*backend.lock(name).await).await
        }
        Scenario::UpdateAfterDelete if backend.can_delete() => {
            update_after_deletion_is_a_conflict(lock, delete).await
        }
        Scenario::WatchChanges => {
            watch_reports_changes_in_order(lock, &*backend.lock(name).await).await
        }
        Scenario::WatchDeletion if backend.can_delete() => {
            watch_reports_deletion(lock, delete).await
        }
        Scenario::InvalidRecord if backend.can_corrupt() => {
            invalid_record_carries_its_version_and_update_overwrites_it(lock, corrupt).await
        }
        Scenario::FencingTokens => {
            fencing_tokens_grow_with_every_new_holder(lock, &*backend.lock(name).await).await
        }
        Scenario::FencingAfterDelete if backend.can_delete() => {
            fencing_tokens_grow_across_deletion(lock, delete).await
        }
        Scenario::UpdateAfterDelete
        | Scenario::WatchDeletion
        | Scenario::InvalidRecord
        | Scenario::FencingAfterDelete => {}
    }
}

// ---- the scenarios ------------------------------------------------------------

/// `get` of a record that was never written is `Ok(None)`, not an error.
///
/// `lock` must be on a record that does not exist.
///
/// # Panics
///
/// When the rule is broken.
pub async fn get_of_an_absent_record_is_none(lock: &dyn LeaseLock) {
    let got = call(lock, "get", lock.get()).await;
    check(lock, "get of an absent record is Ok(None)", || {
        matches!(got, Ok(None))
            .then_some(())
            .ok_or(format!("got {got:?}"))
    });
}

/// `create` then `get` returns the record as written, with the version `create`
/// returned, through the same handle and through `other` (a second handle on the same
/// record, as another replica has).
///
/// `lock` must be on a record that does not exist.
///
/// # Panics
///
/// When the rule is broken.
pub async fn create_then_get_round_trips(lock: &dyn LeaseLock, other: &dyn LeaseLock) {
    const RULE: &str = "get returns what create wrote, at the version create returned";
    let written = record("a", 0);
    let v = expect_ok(
        lock,
        RULE,
        call(lock, "create", lock.create(&written)).await,
    );
    for (handle, reader) in [("the writer", lock), ("another handle", other)] {
        let got = expect_ok(lock, RULE, call(lock, "get", reader.get()).await);
        check(lock, RULE, || match &got {
            Some(got) if got.record == written && got.version == v => Ok(()),
            _ => Err(format!(
                "wrote {written:?} at version {v}, {handle} read {got:?}"
            )),
        });
    }
}

/// `create` of a record that exists fails with [`LockError::AlreadyExists`] (a
/// contention error) and leaves the stored record alone.
///
/// `lock` must be on a record that does not exist.
///
/// # Panics
///
/// When the rule is broken.
pub async fn create_of_an_existing_record_is_already_exists(lock: &dyn LeaseLock) {
    const RULE: &str = "create of an existing record is AlreadyExists and writes nothing";
    let v = expect_ok(
        lock,
        RULE,
        call(lock, "create", lock.create(&record("a", 0))).await,
    );
    let second = call(lock, "create", lock.create(&record("b", 1))).await;
    check(lock, RULE, || match &second {
        Err(e @ LockError::AlreadyExists) if e.is_contention() => Ok(()),
        other => Err(format!("the second create returned {other:?}")),
    });
    let got = expect_ok(lock, RULE, call(lock, "get", lock.get()).await);
    check(lock, RULE, || match &got {
        Some(got) if got.record.holder_identity == "a" && got.version == v => Ok(()),
        other => Err(format!("after the refused create the record is {other:?}")),
    });
}

/// `update` of a changed record (as every renewal is: it moves `renewTime`) with the
/// version last read succeeds, returns a version unlike the old one, and `get`
/// (through any handle) then returns the new record at that version.
///
/// `lock` must be on a record that does not exist; `other` is a second handle on it.
///
/// # Panics
///
/// When the rule is broken.
pub async fn update_with_the_current_version_writes_a_new_version(
    lock: &dyn LeaseLock,
    other: &dyn LeaseLock,
) {
    const RULE: &str = "update with the current version writes the record at a new version";
    let v1 = expect_ok(
        lock,
        RULE,
        call(lock, "create", lock.create(&record("a", 0))).await,
    );
    let renewed = record("a", 0);
    let v2 = expect_ok(
        lock,
        RULE,
        call(lock, "update", lock.update(&renewed, &v1)).await,
    );
    check(lock, RULE, || {
        (v2 != v1)
            .then_some(())
            .ok_or(format!("the update returned the old version {v1}"))
    });
    // A renewal through another handle, from the version that handle read.
    let seen = expect_ok(lock, RULE, call(lock, "get", other.get()).await);
    let seen = present(lock, RULE, seen);
    let taken = record("b", 1);
    let v3 = expect_ok(
        lock,
        RULE,
        call(lock, "update", other.update(&taken, &seen.version)).await,
    );
    let got = expect_ok(lock, RULE, call(lock, "get", lock.get()).await);
    check(lock, RULE, || match &got {
        Some(got) if got.record == taken && got.version == v3 && v3 != v2 => Ok(()),
        other => Err(format!(
            "another handle wrote {taken:?} at {v3} over {v2}, the writer read {other:?}"
        )),
    });
}

/// `update` with a version that is no longer stored fails with
/// [`LockError::Conflict`] and writes nothing: after one's own later write, after
/// another handle's write, and with a version never issued.
///
/// `lock` must be on a record that does not exist; `other` is a second handle on it.
///
/// # Panics
///
/// When the rule is broken.
pub async fn update_with_a_stale_version_is_a_conflict(
    lock: &dyn LeaseLock,
    other: &dyn LeaseLock,
) {
    const RULE: &str = "update with a stale version is Conflict and writes nothing";
    let v1 = expect_ok(
        lock,
        RULE,
        call(lock, "create", lock.create(&record("a", 0))).await,
    );
    let v2 = expect_ok(
        lock,
        RULE,
        call(lock, "update", lock.update(&record("a", 0), &v1)).await,
    );
    let stale = call(lock, "update", lock.update(&record("x", 1), &v1)).await;
    expect_conflict(lock, RULE, "with the version before its own write", stale);

    // Another replica read and took over in between: the version this handle holds
    // is stale.
    let seen = expect_ok(lock, RULE, call(lock, "get", other.get()).await);
    let seen = present(lock, RULE, seen);
    let v3 = expect_ok(
        lock,
        RULE,
        call(lock, "update", other.update(&record("b", 1), &seen.version)).await,
    );
    let stale = call(lock, "update", lock.update(&record("x", 2), &v2)).await;
    expect_conflict(lock, RULE, "after another handle wrote", stale);

    let never = Version::new("999999999");
    let stale = call(lock, "update", lock.update(&record("x", 2), &never)).await;
    expect_conflict(lock, RULE, "with a version never issued", stale);

    let got = expect_ok(lock, RULE, call(lock, "get", lock.get()).await);
    check(lock, RULE, || match &got {
        Some(got) if got.record.holder_identity == "b" && got.version == v3 => Ok(()),
        other => Err(format!("after the refused updates the record is {other:?}")),
    });
}

/// `update` of a record that was deleted since it was read is a
/// [`LockError::Conflict`]: the lock must not silently recreate it.
///
/// `lock` must be on a record that does not exist; `delete` deletes it behind the
/// lock's back.
///
/// # Panics
///
/// When the rule is broken.
pub async fn update_after_deletion_is_a_conflict(lock: &dyn LeaseLock, delete: impl AsyncFn()) {
    const RULE: &str = "update of a deleted record is Conflict and recreates nothing";
    let v = expect_ok(
        lock,
        RULE,
        call(lock, "create", lock.create(&record("a", 0))).await,
    );
    delete().await;
    let after = call(lock, "update", lock.update(&record("a", 0), &v)).await;
    expect_conflict(lock, RULE, "after the record was deleted", after);
    let got = call(lock, "get", lock.get()).await;
    check(lock, RULE, || match &got {
        Ok(None) => Ok(()),
        other => Err(format!("after the refused update get returned {other:?}")),
    });
}

/// A watch ([`LeaseLock::watch`], when the lock has one) reports the writes made
/// after it was opened as [`LockEvent::Changed`], in the order they were made, ending
/// with the latest. A watch may first report the state it opened on; one that polls
/// may skip a state overwritten before it looked; one over several objects (a
/// `MultiLock`) may report the states between the writes of its objects; none goes
/// back to an earlier write.
///
/// Does nothing when `lock.watch()` is `None`. `lock` must be on a record that does
/// not exist; `writer` is a second handle on it.
///
/// # Panics
///
/// When the rule is broken.
pub async fn watch_reports_changes_in_order(lock: &dyn LeaseLock, writer: &dyn LeaseLock) {
    const RULE: &str = "watch reports the changes written after it opened, in order";
    let Some(mut watch) = lock.watch() else {
        return;
    };
    let first = record("a", 0);
    let v1 = expect_ok(
        lock,
        RULE,
        call(lock, "create", writer.create(&first)).await,
    );
    // Until the create shows, the watch may report the absent record it opened on.
    loop {
        match next_event(lock, &mut watch).await {
            Ok(LockEvent::Deleted) => {}
            Ok(LockEvent::Changed(got)) if got.version == v1 && got.record == first => break,
            other => fail(
                lock,
                RULE,
                format!("expected the create at {v1}, got {other:?}"),
            ),
        }
    }
    let second = record("b", 1);
    let v2 = expect_ok(
        lock,
        RULE,
        call(lock, "update", writer.update(&second, &v1)).await,
    );
    let third = record("c", 2);
    let v3 = expect_ok(
        lock,
        RULE,
        call(lock, "update", writer.update(&third, &v2)).await,
    );
    let written = [(v1, first), (v2, second), (v3.clone(), third)];
    let mut at = 0;
    while at < written.len() - 1 {
        let got = match next_event(lock, &mut watch).await {
            Ok(LockEvent::Changed(got)) => got,
            other => fail(
                lock,
                RULE,
                format!("expected the updates up to {v3}, got {other:?}"),
            ),
        };
        // A state between the writes (one object of several written) is not a write.
        let Some(i) = written.iter().position(|(v, _)| *v == got.version) else {
            continue;
        };
        check(lock, RULE, || {
            if i < at {
                Err(format!(
                    "went back to {got:?} after the write at {}",
                    written[at].0
                ))
            } else if got.record != written[i].1 {
                Err(format!(
                    "reported {got:?} for the write of {:?}",
                    written[i].1
                ))
            } else {
                Ok(())
            }
        });
        at = i;
    }
}

/// A watch reports the deletion of the record as [`LockEvent::Deleted`] (after the
/// states in between, for a lock over several objects).
///
/// Does nothing when `lock.watch()` is `None`. `lock` must be on a record that does
/// not exist; `delete` deletes it behind the lock's back.
///
/// # Panics
///
/// When the rule is broken.
pub async fn watch_reports_deletion(lock: &dyn LeaseLock, delete: impl AsyncFn()) {
    const RULE: &str = "watch reports a deletion as LockEvent::Deleted";
    let Some(mut watch) = lock.watch() else {
        return;
    };
    let v = expect_ok(
        lock,
        RULE,
        call(lock, "create", lock.create(&record("a", 0))).await,
    );
    loop {
        match next_event(lock, &mut watch).await {
            Ok(LockEvent::Deleted) => {}
            Ok(LockEvent::Changed(got)) if got.version == v => break,
            other => fail(
                lock,
                RULE,
                format!("expected the create at {v}, got {other:?}"),
            ),
        }
    }
    delete().await;
    loop {
        match next_event(lock, &mut watch).await {
            Ok(LockEvent::Deleted) => return,
            // A lock over several objects sees them go one at a time.
            Ok(LockEvent::Changed(got)) if got.version != v => {}
            other => fail(
                lock,
                RULE,
                format!("after the deletion the watch reported {other:?}"),
            ),
        }
    }
}

/// A stored record the lock cannot parse is a [`LockError::InvalidRecord`] carrying
/// the stored version, from `get` and from a watch; the object still exists, so
/// `create` is [`LockError::AlreadyExists`]; and `update` with the carried version
/// overwrites it (the elector's way out once the lease has surely run out).
///
/// `lock` must be on a record that does not exist; `corrupt` replaces the stored
/// record with an unreadable one.
///
/// # Panics
///
/// When the rule is broken.
pub async fn invalid_record_carries_its_version_and_update_overwrites_it(
    lock: &dyn LeaseLock,
    corrupt: impl AsyncFn(),
) {
    const RULE: &str = "an unreadable record is InvalidRecord with its version, and update with that version overwrites it";
    // Opened first: a watch need not report the state it opened on.
    let mut watch = lock.watch();
    let before = expect_ok(
        lock,
        RULE,
        call(lock, "create", lock.create(&record("a", 0))).await,
    );
    if let Some(watch) = &mut watch {
        // Opened for sure once it reported the record as it was.
        loop {
            match next_event(lock, watch).await {
                Ok(LockEvent::Deleted) => {}
                Ok(LockEvent::Changed(got)) if got.version == before => break,
                other => fail(
                    lock,
                    RULE,
                    format!("expected the create at {before}, got {other:?}"),
                ),
            }
        }
    }
    corrupt().await;
    let got = call(lock, "get", lock.get()).await;
    let bad = match got {
        Err(LockError::InvalidRecord {
            version: Some(v), ..
        }) => v,
        other => fail(
            lock,
            RULE,
            format!("get of the garbled record returned {other:?}"),
        ),
    };
    if let Some(watch) = &mut watch {
        // A watch may report a state again (a MultiLock when its other object's watch
        // catches up, a relist): only a change after the create counts.
        let event = loop {
            match next_event(lock, watch).await {
                Ok(LockEvent::Changed(got)) if got.version == before => continue,
                other => break other,
            }
        };
        check(lock, RULE, || match &event {
            Err(LockError::InvalidRecord {
                version: Some(v), ..
            }) if *v == bad => Ok(()),
            other => Err(format!(
                "the watch reported the garbled record at {bad} as {other:?}"
            )),
        });
    }
    let created = call(lock, "create", lock.create(&record("b", 1))).await;
    check(lock, RULE, || match &created {
        Err(LockError::AlreadyExists) => Ok(()),
        other => Err(format!("create over the garbled record returned {other:?}")),
    });
    let repaired = record("b", 1);
    let v = expect_ok(
        lock,
        RULE,
        call(lock, "update", lock.update(&repaired, &bad)).await,
    );
    let got = expect_ok(lock, RULE, call(lock, "get", lock.get()).await);
    check(lock, RULE, || match &got {
        Some(got) if got.record == repaired && got.version == v => Ok(()),
        other => Err(format!("after the overwrite at {v} get returned {other:?}")),
    });
}

/// The fencing tokens ([`LeaseLock::fencing_token`]) of successive acquisitions by
/// different holders strictly grow, whichever handle wrote them.
///
/// `lock` must be on a record that does not exist; `other` is a second handle on it.
///
/// # Panics
///
/// When the rule is broken.
pub async fn fencing_tokens_grow_with_every_new_holder(
    lock: &dyn LeaseLock,
    other: &dyn LeaseLock,
) {
    const RULE: &str = "the fencing tokens of successive holders strictly grow";
    let a = record("a", 0);
    let v = expect_ok(lock, RULE, call(lock, "create", lock.create(&a)).await);
    let mut tokens = vec![("a", lock.fencing_token(&a, &v))];
    // Renewals between takeovers, as a leader makes them.
    let v = expect_ok(
        lock,
        RULE,
        call(lock, "update", lock.update(&record("a", 0), &v)).await,
    );
    let mut last = v;
    for (n, (holder, handle)) in [("b", other), ("a", lock), ("c", other)]
        .into_iter()
        .enumerate()
    {
        // A takeover, as an elector makes it: read, then swap from what was read.
        let seen = expect_ok(lock, RULE, call(lock, "get", handle.get()).await);
        let seen = present(lock, RULE, seen);
        check(lock, RULE, || {
            (seen.version == last)
                .then_some(())
                .ok_or(format!("read {seen:?} after a write at {last}"))
        });
        let taken = record(holder, n as i32 + 1);
        let v = expect_ok(
            lock,
            RULE,
            call(lock, "update", handle.update(&taken, &seen.version)).await,
        );
        tokens.push((holder, handle.fencing_token(&taken, &v)));
        last = expect_ok(
            lock,
            RULE,
            call(
                lock,
                "update",
                handle.update(&record(holder, n as i32 + 1), &v),
            )
            .await,
        );
    }
    check(lock, RULE, || {
        tokens
            .windows(2)
            .all(|w| w[0].1 < w[1].1)
            .then_some(())
            .ok_or(format!("holders and their tokens: {tokens:?}"))
    });
}

/// A holder that acquires a record created again after a deletion gets a fencing
/// token greater than every holder's before the deletion: a token never repeats.
///
/// `lock` must be on a record that does not exist; `delete` deletes it behind the
/// lock's back.
///
/// # Panics
///
/// When the rule is broken.
pub async fn fencing_tokens_grow_across_deletion(lock: &dyn LeaseLock, delete: impl AsyncFn()) {
    const RULE: &str = "a fencing token after a deletion is greater than every one before";
    let a = record("a", 0);
    let v1 = expect_ok(lock, RULE, call(lock, "create", lock.create(&a)).await);
    let b = record("b", 1);
    let v2 = expect_ok(lock, RULE, call(lock, "update", lock.update(&b, &v1)).await);
    let before = lock.fencing_token(&a, &v1).max(lock.fencing_token(&b, &v2));
    delete().await;
    // Whoever creates it again starts the count again, as a fresh record.
    let c = record("c", 0);
    let v3 = expect_ok(lock, RULE, call(lock, "create", lock.create(&c)).await);
    let after = lock.fencing_token(&c, &v3);
    check(lock, RULE, || {
        (after > before).then_some(()).ok_or(format!(
            "tokens up to {before} before the deletion, {after} after"
        ))
    });
}

// ---- helpers ------------------------------------------------------------------

/// A record as an elector writes it, each one unlike every other: a write of an
/// unchanged object is a no-op on Kubernetes (no new resourceVersion), while an
/// elector's renewal always moves `renewTime`. Times are whole seconds, since Endpoints
/// and ConfigMap annotations keep no more.
fn record(holder: &str, transitions: i32) -> LeaderElectionRecord {
    static WRITES: AtomicI64 = AtomicI64::new(0);
    let now = jiff::Timestamp::now().as_second();
    let renewed = now + WRITES.fetch_add(1, Ordering::Relaxed);
    let second = |s| jiff::Timestamp::from_second(s).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    LeaderElectionRecord {
        holder_identity: holder.into(),
        lease_duration_seconds: 15,
        acquire_time: Some(second(now)),
        renew_time: Some(second(renewed)),
        leader_transitions: transitions,
        ..Default::default()
    }
}

async fn call<T>(lock: &dyn LeaseLock, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(CALL_LIMIT, f).await {
        Ok(out) => out,
        Err(_) => panic!(
            "lock contract broken by {}: {what} did not return within {CALL_LIMIT:?}",
            lock.describe()
        ),
    }
}

async fn next_event(lock: &dyn LeaseLock, watch: &mut WatchStream) -> Result<LockEvent, LockError> {
    match call(lock, "the next watch event", watch.next()).await {
        Some(event) => event,
        None => fail(lock, "a watch reports changes", "the watch stream ended"),
    }
}

#[track_caller]
fn fail(lock: &dyn LeaseLock, rule: &str, detail: impl fmt::Display) -> ! {
    panic!(
        "lock contract broken by {}: {rule}: {detail}",
        lock.describe()
    )
}

#[track_caller]
fn check(lock: &dyn LeaseLock, rule: &str, result: impl FnOnce() -> Result<(), String>) {
    if let Err(detail) = result() {
        fail(lock, rule, detail);
    }
}

#[track_caller]
fn expect_ok<T>(lock: &dyn LeaseLock, rule: &str, result: Result<T, LockError>) -> T {
    result.unwrap_or_else(|e| {
        fail(
            lock,
            rule,
            format!("a call that must succeed failed: {e:?}"),
        )
    })
}

#[track_caller]
fn expect_conflict(
    lock: &dyn LeaseLock,
    rule: &str,
    when: &str,
    result: Result<Version, LockError>,
) {
    match result {
        Err(e @ LockError::Conflict) if e.is_contention() => {}
        other => fail(lock, rule, format!("update {when} returned {other:?}")),
    }
}

#[track_caller]
fn present(
    lock: &dyn LeaseLock,
    rule: &str,
    got: Option<leaderelection::Versioned>,
) -> leaderelection::Versioned {
    got.unwrap_or_else(|| fail(lock, rule, "get returned None for a record just written"))
}
