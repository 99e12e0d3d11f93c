//! The lock contract suite against the in-memory lock, the one the elector's own tests
//! run on, bare and behind the test kit's fault wrapper (with no fault on). The other
//! backends run it from their own test files.

use async_trait::async_trait;
use leaderelection::{LeaseLock, MemoryStore};
use leaderelection_testkit::contract::{self, Backend};
use leaderelection_testkit::faults::FaultyLock;

struct Memory {
    store: MemoryStore,
    faulty: bool,
}

#[async_trait]
impl Backend for Memory {
    async fn lock(&self, name: &str) -> Box<dyn LeaseLock> {
        let lock = self.store.lock(name);
        if self.faulty {
            Box::new(FaultyLock::new(lock))
        } else {
            Box::new(lock)
        }
    }

    fn can_delete(&self) -> bool {
        true
    }

    async fn delete(&self, name: &str) {
        self.store.delete(name);
    }

    fn can_corrupt(&self) -> bool {
        true
    }

    async fn corrupt(&self, name: &str) {
        self.store.put_raw(name, "{\"holderIdentity\": 42");
    }
}

#[tokio::test]
async fn memory_lock_keeps_the_contract() {
    let (store, faulty) = (MemoryStore::new(), false);
    contract::run_all(&Memory { store, faulty }).await;
}

#[tokio::test]
async fn fault_wrapper_without_faults_keeps_the_contract() {
    let (store, faulty) = (MemoryStore::new(), true);
    contract::run_all(&Memory { store, faulty }).await;
}
