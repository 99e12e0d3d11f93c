//! Requests of an etcd election: each bounded by the renew deadline, its error
//! saying what was being done.

use std::future::Future;

use etcd_client::Client;

use super::EtcdElection;
use crate::error::LockError;
use crate::lock::etcd::{is_lease_gone, map_error};

impl EtcdElection {
    /// One request, bounded by the renew deadline, its error saying what was done.
    pub(super) async fn request<T, Fut>(
        &self,
        op: &str,
        send: impl FnOnce(Client) -> Fut,
    ) -> Result<T, LockError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let sent = send(self.shared.client.clone());
        self.shared
            .core
            .call(async { sent.await.map_err(|e| self.err(op, e)) })
            .await
    }

    /// [`request`](Self::request) on a lease: `None` when etcd no longer has it.
    pub(super) async fn lease_request<T, Fut>(
        &self,
        op: &str,
        send: impl FnOnce(Client) -> Fut,
    ) -> Result<Option<T>, LockError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let sent = send(self.shared.client.clone());
        self.shared
            .core
            .call(async {
                match sent.await {
                    Ok(v) => Ok(Some(v)),
                    Err(e) if is_lease_gone(&e) => Ok(None),
                    Err(e) => Err(self.err(op, e)),
                }
            })
            .await
    }

    pub(super) fn err(&self, op: &str, e: etcd_client::Error) -> LockError {
        map_error(
            format!("failed to {op} etcd election {}", self.shared.name),
            e,
        )
    }
}
