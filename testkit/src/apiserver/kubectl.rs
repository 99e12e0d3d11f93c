//! Runs the real `kubectl` against a test server.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::ApiServer;

/// The real `kubectl`, aimed at one [`ApiServer`] through a kubeconfig of its own
/// (written by [`ApiServer::write_kubeconfig`]) and a discovery cache of its own, in a
/// directory removed on drop.
///
/// # Examples
///
/// ```no_run
/// use leaderelection_testkit::apiserver::{ApiServer, ApiServerOptions, Kubectl};
///
/// # async fn f() -> std::io::Result<()> {
/// // kubectl sends credentials only over TLS.
/// let server = ApiServer::start_with(ApiServerOptions::new().tls().auth()).await?;
/// let kubectl = Kubectl::new(&server)?;
/// let created = kubectl.ok(&["create", "configmap", "x", "--from-literal=a=b"]).await;
/// assert_eq!(created.trim(), "configmap/x created");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Kubectl {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

/// What one kubectl run printed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KubectlOutput {
    /// Whether kubectl exited with 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error: errors, warnings, and with `-v=8` every request's headers.
    pub stderr: String,
}

impl Kubectl {
    /// Writes a kubeconfig for `server` into a new temporary directory.
    ///
    /// # Errors
    ///
    /// When the directory or the file cannot be written.
    pub fn new(server: &ApiServer) -> io::Result<Kubectl> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "leaderelection-testkit-kubectl-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        server.write_kubeconfig(&kubeconfig)?;
        Ok(Kubectl { dir, kubeconfig })
    }

    /// The kubeconfig kubectl is given.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The temporary directory, where tests may put manifests; removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `kubectl --kubeconfig <file> args...`.
    ///
    /// # Errors
    ///
    /// When kubectl cannot be started (not on `PATH`).
    pub async fn run(&self, args: &[&str]) -> io::Result<KubectlOutput> {
        let output = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            // kubectl's discovery cache lives under $HOME; keep it out of the user's.
            .env("KUBECACHEDIR", self.dir.join("cache"))
            .output()
            .await?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Ok(KubectlOutput {
            success: output.status.success(),
            stdout: text(&output.stdout),
            stderr: text(&output.stderr),
        })
    }

    /// Runs kubectl and returns its standard output.
    ///
    /// # Panics
    ///
    /// When kubectl cannot be started or fails, with its standard error: this is for
    /// tests.
    pub async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await.unwrap_or_else(|e| {
            panic!("kubectl must be on PATH for this test (it is in the Kubernetes apt repository): {e}")
        });
        assert!(
            output.success,
            "kubectl {args:?} failed: {}{}",
            output.stderr, output.stdout
        );
        output.stdout
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        // What is left in a temporary directory is no test's failure.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
