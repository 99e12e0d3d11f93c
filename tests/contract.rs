//! The lock contract suite against the in-memory lock, the one the elector's own tests
//! run on. The other backends run it from their own test files.

use async_trait::async_trait;
use leaderelection::{LeaseLock, MemoryStore};
use leaderelection_testkit::contract::{self, Backend};

struct Memory(MemoryStore);

#[async_trait]
impl Backend for Memory {
    async fn lock(&self, name: &str) -> Box<dyn LeaseLock> {
        Box::new(self.0.lock(name))
    }

    fn can_delete(&self) -> bool {
        true
    }

    async fn delete(&self, name: &str) {
        self.0.delete(name);
    }

    fn can_corrupt(&self) -> bool {
        true
    }

    async fn corrupt(&self, name: &str) {
        self.0.put_raw(name, "{\"holderIdentity\": 42");
    }
}

#[tokio::test]
async fn memory_lock_keeps_the_contract() {
    contract::run_all(&Memory(MemoryStore::new())).await;
}
