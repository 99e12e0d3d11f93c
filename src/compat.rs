//! Deprecated entry points that join two layers, kept so that users' code compiles
//! while it moves to the new ones. They live here, above both layers, so that no
//! backend imports an election type.

#[cfg(feature = "kube")]
use tokio::task::JoinHandle;

#[cfg(feature = "kube")]
use crate::elector::LeaderElector;
#[cfg(feature = "kube")]
use crate::lock::kube::EventRecorder;

#[cfg(feature = "kube")]
impl EventRecorder {
    /// Posts `became leader` and `stopped leading` as `elector` reports them, until
    /// the elector is dropped. Failures are logged.
    ///
    /// Call it before [`LeaderElector::run`]: it reports the changes from the moment
    /// it is called.
    #[deprecated(
        since = "0.2.0",
        note = "use tokio::spawn(recorder.run(elector.events())), which serves every election type"
    )]
    pub fn spawn(self, elector: &LeaderElector) -> JoinHandle<()> {
        tokio::spawn(self.run(elector.events()))
    }
}
