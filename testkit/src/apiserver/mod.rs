//! A Kubernetes API server for tests: the real REST paths for Leases, LeaseCandidates,
//! Endpoints, ConfigMaps and Events, served over HTTP on a loopback port, so that
//! `kube::Client` and `kubectl` work against it unchanged. It presents itself as
//! Kubernetes 1.33.
//!
//! What it serves, as kube-apiserver does:
//!
//! - discovery: `/api`, `/api/v1`, `/apis`, `/apis/<group>`, `/apis/<group>/<version>`,
//!   `/version` (aggregated discovery is not offered; clients fall back);
//! - OpenAPI v3: `/openapi/v3` and a document per group version (`/openapi/v3/api/v1`,
//!   `/openapi/v3/apis/coordination.k8s.io/v1`, `.../coordination.k8s.io/v1beta1`,
//!   `/openapi/v3/apis/events.k8s.io/v1`)
//!   with the kinds' schemas and operations, so `kubectl create -f` and `kubectl apply
//!   -f` run with no flags;
//! - JSON and protobuf (`application/vnd.kubernetes.protobuf`, as kubectl's typed
//!   client sends `kubectl create configmap`) request bodies, and protobuf responses
//!   (objects, lists, Status) to clients whose `Accept` puts protobuf first;
//! - field validation (`fieldValidation=Strict|Warn|Ignore`): unknown fields of a
//!   JSON body or merge patch are a 400 (`strict decoding error: unknown field
//!   "..."`), a `Warning` header (the default) or dropped, and are not stored (a JSON
//!   patch is not checked);
//! - `coordination.k8s.io/v1` leases, `coordination.k8s.io/v1beta1` leasecandidates,
//!   `v1` endpoints, configmaps and events, and
//!   `events.k8s.io/v1` events (stored as core events, as kube-apiserver stores
//!   them), in any namespace: get, list, watch, create, update (PUT), patch (merge,
//!   strategic merge, JSON patch, server-side apply) and delete, with `dryRun`;
//! - server-side apply (`application/apply-patch+yaml`, YAML or JSON, `fieldManager`
//!   required, `force`): creates the object when absent (201), owns the applied
//!   fields, removes fields a manager stops applying when no other manager owns them,
//!   and answers a change to another manager's field with 409 Conflict and
//!   `FieldManagerConflict` causes;
//! - `metadata.managedFields` (`FieldsV1`) on every write: `Apply` entries per
//!   manager, `Update` entries per manager and API version for other writes (the
//!   manager from `fieldManager` or the User-Agent up to its first `/`); a request
//!   carrying invalid managed fields keeps the stored ones, an empty list resets them;
//! - strategic merge patch with the Go types' lists: `metadata.ownerReferences`
//!   merged by `uid`, `metadata.finalizers` as a set, other lists replaced, and the
//!   `$patch`, `$retainKeys`, `$deleteFromPrimitiveList/` and `$setElementOrder/`
//!   directives;
//! - `metadata.resourceVersion` from one counter that grows on every write (the etcd
//!   revision with etcd storage); `uid` and `creationTimestamp` set on create and kept;
//!   a stale PUT is a 409 Conflict; a write that changes nothing is not made;
//! - metav1.Status failures worded like kube-apiserver's: 404 NotFound, 409 Conflict
//!   and AlreadyExists, 422 Invalid (names, Lease, LeaseCandidate and ConfigMap
//!   validation), 400
//!   BadRequest for fields of the wrong type, 401, 403;
//! - watches from a resourceVersion with field and label selectors, bookmarks,
//!   `timeoutSeconds`, and 410 Expired (an ERROR event) past the kept history;
//! - server-side printing (the Table `kubectl get` asks for);
//! - optionally coordinated leader election (KEP-4355): the controller kube-apiserver
//!   runs with the `CoordinatedLeaderElection` gate, which elects the holder of each
//!   Lease from its LeaseCandidates (see
//!   [`ApiServerOptions::coordinated_leader_election`]);
//! - optionally bearer tokens with RBAC-like rules, HTTPS with a fixed test
//!   certificate, and storage in etcd shared by several servers.
//!
//! Tests steer it with [`ApiServer::faults`] (latency, injected errors),
//! [`ApiServer::restart`] and [`ApiServer::requests`] (request counts), and drive the
//! real kubectl against it with [`Kubectl`].
//!
//! Not served: other kinds, namespaces as objects (every namespace exists),
//! `deletecollection`, list paging (`limit` is ignored: lists are whole), the cap of ten
//! `Update` managers (older ones are never merged into `ancient-changes`), the upgrade
//! from client-side apply's `last-applied-configuration`, `/openapi/v2` (kubectl reads
//! v3), watches in protobuf (watches are JSON; kubectl asks for them in JSON), and
//! duplicate-field detection.
//!
//! # Examples
//!
//! ```no_run
//! use k8s_openapi::api::coordination::v1::Lease;
//! use kube::api::{Api, PostParams};
//! use leaderelection_testkit::apiserver::ApiServer;
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let server = ApiServer::start().await?;
//! let leases: Api<Lease> = Api::namespaced(server.client(), "kube-system");
//! let mut lease = Lease::default();
//! lease.metadata.name = Some("kube-scheduler".into());
//! let created = leases.create(&PostParams::default(), &lease).await?;
//! assert!(created.metadata.resource_version.is_some());
//! server.stop().await;
//! # Ok(()) }
//! ```
//!
//! Server-side apply, and the conflict a second manager gets:
//!
//! ```no_run
//! use k8s_openapi::api::coordination::v1::Lease;
//! use kube::api::{Api, Patch, PatchParams};
//! use leaderelection_testkit::apiserver::ApiServer;
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let server = ApiServer::start().await?;
//! let leases: Api<Lease> = Api::namespaced(server.client(), "kube-system");
//! let config = |holder: &str| {
//!     serde_json::json!({
//!         "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
//!         "metadata": {"name": "kube-scheduler"},
//!         "spec": {"holderIdentity": holder},
//!     })
//! };
//! leases
//!     .patch("kube-scheduler", &PatchParams::apply("a"), &Patch::Apply(config("a")))
//!     .await?;
//! let err = leases
//!     .patch("kube-scheduler", &PatchParams::apply("b"), &Patch::Apply(config("b")))
//!     .await
//!     .unwrap_err();
//! assert!(err.to_string().contains("conflict with \"a\": .spec.holderIdentity"));
//! leases
//!     .patch("kube-scheduler", &PatchParams::apply("b").force(), &Patch::Apply(config("b")))
//!     .await?;
//! # Ok(()) }
//! ```

mod apply;
mod auth;
mod coordination;
mod discovery;
#[cfg(feature = "etcd")]
mod etcd_storage;
mod faults;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod kubectl;
mod openapi;
mod patch;
mod protobuf;
mod resources;
mod rest;
mod schema;
mod selector;
mod semver;
mod stats;
mod status;
mod storage;
mod table;
mod tls;
mod validation;
mod watch;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use auth::{PolicyRule, User};
pub use faults::{Fault, Faults};
pub use kubectl::{Kubectl, KubectlOutput};
pub use stats::{RequestKey, RequestStats};

use http::State;
use stats::Counter;
use storage::{MemoryStorage, Storage};

/// The token of the administrator, accepted whenever authentication is on; the
/// clients of [`ApiServer::client`] and the kubeconfig of
/// [`ApiServer::write_kubeconfig`] use it.
pub const ADMIN_TOKEN: &str = "leaderelection-testkit-admin";

/// The user [`ADMIN_TOKEN`] authenticates as.
pub const ADMIN_USER: &str = "kubernetes-admin";

/// Where the server keeps objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageOptions {
    /// In process memory, lost when the server is dropped.
    #[default]
    Memory,
    /// In etcd, one key per object as kube-apiserver keeps them
    /// (`<prefix>/leases/<namespace>/<name>`, `<prefix>/configmaps/...`,
    /// `<prefix>/services/endpoints/...`, `<prefix>/events/...`), as JSON.
    /// resourceVersions are etcd revisions, so several servers over one etcd cluster
    /// serve the same objects, versions and watch events.
    #[cfg(feature = "etcd")]
    #[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
    Etcd {
        /// Client URLs of the etcd members.
        endpoints: Vec<String>,
        /// Key prefix, `/registry` in kube-apiserver.
        prefix: String,
    },
}

/// How to start an [`ApiServer`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use leaderelection_testkit::apiserver::{ApiServerOptions, PolicyRule, User};
///
/// let options = ApiServerOptions::new()
///     .token("scheduler-token", User::new("scheduler").allow(
///         PolicyRule::new(["get", "update", "watch"], ["leases"]).in_namespace("kube-system"),
///     ))
///     .watch_history(100)
///     .bookmark_interval(Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct ApiServerOptions {
    storage: StorageOptions,
    tokens: Option<HashMap<String, User>>,
    port: Option<u16>,
    watch_history: usize,
    bookmark_interval: Duration,
    tls: bool,
    coordinated: Option<coordination::Timing>,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        Self {
            storage: StorageOptions::Memory,
            tokens: None,
            port: None,
            watch_history: 1000,
            bookmark_interval: Duration::from_secs(60),
            tls: false,
            coordinated: None,
        }
    }
}

impl ApiServerOptions {
    /// Memory storage, no authentication, a free port.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where objects are kept (default: memory).
    #[must_use]
    pub fn storage(mut self, storage: StorageOptions) -> Self {
        self.storage = storage;
        self
    }

    /// Keeps objects in etcd at `endpoints`, under `prefix` (`/registry` in
    /// kube-apiserver); see [`StorageOptions::Etcd`].
    #[cfg(feature = "etcd")]
    #[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
    #[must_use]
    pub fn etcd(self, endpoints: Vec<String>, prefix: impl Into<String>) -> Self {
        self.storage(StorageOptions::Etcd {
            endpoints,
            prefix: prefix.into(),
        })
    }

    /// Turns bearer-token authentication on (with [`ADMIN_TOKEN`] accepted) and lets
    /// `token` in as `user`. Without any call to this or [`auth`](Self::auth), every
    /// request is served.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>, user: User) -> Self {
        self.tokens
            .get_or_insert_with(HashMap::new)
            .insert(token.into(), user);
        self
    }

    /// Turns bearer-token authentication on, with only [`ADMIN_TOKEN`] accepted until
    /// [`token`](Self::token) adds more.
    #[must_use]
    pub fn auth(mut self) -> Self {
        self.tokens.get_or_insert_with(HashMap::new);
        self
    }

    /// Listens on `port` of 127.0.0.1 (default: a free port).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// How many changes memory storage keeps for watches that resume from a
    /// resourceVersion (default 1000); older ones get 410 Gone. Etcd storage keeps
    /// etcd's history, until etcd is compacted.
    #[must_use]
    pub fn watch_history(mut self, changes: usize) -> Self {
        self.watch_history = changes.max(1);
        self
    }

    /// Serves HTTPS instead of HTTP, with a fixed test certificate for 127.0.0.1
    /// signed by the CA of [`ApiServer::ca_certificate_pem`]. The server's clients and
    /// kubeconfigs trust that CA. Needed for kubectl with authentication on: kubectl
    /// sends credentials only over TLS.
    #[must_use]
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// How often watches that allow bookmarks get one (default 60 seconds, about
    /// kube-apiserver's pace).
    #[must_use]
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Runs coordinated leader election (KEP-4355), as kube-apiserver does with the
    /// `CoordinatedLeaderElection` feature gate on (default: off, as the gate): for
    /// each Lease that `coordination.k8s.io/v1beta1` LeaseCandidates name, the server
    /// pings the candidates, waits 5 seconds for their acks, and writes the best one
    /// (strategy `OldestEmulationVersion`: lowest emulation version, then lowest
    /// binary version, then oldest) as the Lease's holder, or as its
    /// `preferredHolder` while another holds it unexpired. The Leases it writes last
    /// 5 seconds (`leaseDurationSeconds: 5`), as kube-apiserver's; Leases are looked
    /// at again every 5 seconds, and candidates that have not renewed for 30 minutes
    /// are deleted.
    ///
    /// The controller runs while the server serves (a [`restart`](ApiServer::restart)
    /// restarts it), writes through the server's own handlers (watches see its
    /// writes as any client's; [`ApiServer::requests`] does not count them), and is
    /// not leader-elected: over shared etcd storage, turn it on in one server only.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use leaderelection_testkit::apiserver::ApiServerOptions;
    ///
    /// let options = ApiServerOptions::new()
    ///     .coordinated_leader_election()
    ///     .coordinated_election_duration(Duration::from_millis(500));
    /// ```
    #[must_use]
    pub fn coordinated_leader_election(mut self) -> Self {
        self.coordinated
            .get_or_insert_with(coordination::Timing::default);
        self
    }

    /// Shortens (or lengthens) how long a coordinated election waits for candidates
    /// to ack a ping, and how often the controller looks at each Lease again (both 5
    /// seconds in kube-apiserver, the default), for tests that cannot wait. The Leases
    /// written still last 5 seconds. Turns coordinated leader election on, as
    /// [`coordinated_leader_election`](Self::coordinated_leader_election).
    #[must_use]
    pub fn coordinated_election_duration(mut self, duration: Duration) -> Self {
        let duration = duration.max(Duration::from_millis(10));
        self.coordinated = Some(coordination::Timing {
            election: duration,
            requeue: duration,
        });
        self
    }
}

/// A running test API server; see the [module docs](self).
///
/// Dropping it stops serving (without waiting; [`stop`](Self::stop) waits).
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<State>,
    auth: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
    coordinated: Option<coordination::Timing>,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// The coordinated leader election controller, when turned on.
    controller: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("url", &self.url())
            .field("auth", &self.auth)
            .field("serving", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Starts a server with memory storage and no authentication on a free port of
    /// 127.0.0.1.
    ///
    /// # Errors
    ///
    /// When no port can be bound.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> std::io::Result<()> {
    /// let server = leaderelection_testkit::apiserver::ApiServer::start().await?;
    /// println!("serving at {}", server.url());
    /// # Ok(()) }
    /// ```
    pub async fn start() -> io::Result<ApiServer> {
        Self::start_with(ApiServerOptions::default()).await
    }

    /// Starts a server as `options` say.
    ///
    /// # Errors
    ///
    /// When the port cannot be bound, or etcd storage cannot reach etcd.
    pub async fn start_with(options: ApiServerOptions) -> io::Result<ApiServer> {
        let storage: Arc<dyn Storage> = match options.storage {
            StorageOptions::Memory => Arc::new(MemoryStorage::new(options.watch_history)),
            #[cfg(feature = "etcd")]
            StorageOptions::Etcd { endpoints, prefix } => {
                Arc::new(etcd_storage::EtcdStorage::connect(&endpoints, &prefix).await?)
            }
        };
        let auth = options.tokens.is_some();
        let tokens = options.tokens.map(|mut tokens| {
            tokens.insert(ADMIN_TOKEN.to_string(), User::admin(ADMIN_USER));
            tokens
        });
        let tls = if options.tls {
            Some(tls::acceptor()?)
        } else {
            None
        };
        let listener = bind(options.port.unwrap_or(0))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            storage,
            auth: auth::Auth { tokens },
            faults: Arc::default(),
            counter: Arc::new(Counter::default()),
            addr,
            bookmark_interval: options.bookmark_interval,
        });
        let mut server = ApiServer {
            addr,
            state,
            auth,
            tls,
            coordinated: options.coordinated,
            running: None,
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(http::serve(
            listener,
            self.state.clone(),
            self.tls.clone(),
            stop.clone(),
        ));
        let controller = self.coordinated.map(|timing| {
            tokio::spawn(coordination::run(
                self.state.storage.clone(),
                timing,
                stop.clone(),
            ))
        });
        self.running = Some(Running {
            stop,
            task,
            controller,
        });
    }

    /// `http://127.0.0.1:PORT`, or `https://` with [`ApiServerOptions::tls`].
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The PEM of the CA that signs the certificate of servers started with
    /// [`ApiServerOptions::tls`], for clients other than the ones made here.
    pub fn ca_certificate_pem() -> &'static str {
        tls::CA_PEM
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether bearer-token authentication is on.
    pub fn auth_enabled(&self) -> bool {
        self.auth
    }

    /// A `kube::Config` aimed at the server, with [`ADMIN_TOKEN`] when authentication
    /// is on. kube's defaults are kept, including its retries of 429, 503 and 504.
    pub fn config(&self) -> kube::Config {
        let token = self.auth.then_some(ADMIN_TOKEN);
        self.config_for(token)
    }

    /// A `kube::Config` aimed at the server that sends `token`.
    pub fn config_with_token(&self, token: &str) -> kube::Config {
        self.config_for(Some(token))
    }

    fn config_for(&self, token: Option<&str>) -> kube::Config {
        let uri = self
            .url()
            .parse()
            .expect("http://127.0.0.1:PORT is a valid URI");
        let mut config = kube::Config::new(uri);
        config.auth_info.token = token.map(|t| t.to_string().into());
        if self.tls.is_some() {
            config.root_cert = Some(vec![tls::ca_der()]);
        }
        config
    }

    /// A `kube::Client` aimed at the server (as the administrator when authentication
    /// is on).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the client spawns its buffer task).
    pub fn client(&self) -> kube::Client {
        client(self.config())
    }

    /// A `kube::Client` aimed at the server that sends `token`.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn client_with_token(&self, token: &str) -> kube::Client {
        client(self.config_with_token(token))
    }

    /// Writes a kubeconfig for `kubectl --kubeconfig <path>`: the server, the admin
    /// token when authentication is on, namespace `default`.
    ///
    /// With [`ApiServerOptions::tls`], the kubeconfig trusts the test CA. kubectl
    /// (client-go) sends credentials only over TLS: with authentication on and plain
    /// HTTP, kubectl is refused with 401 (`kube::Config::from_custom_kubeconfig` does
    /// send the token over HTTP).
    ///
    /// `kubectl create -f` and `kubectl apply -f` need no `--validate=false`: kubectl
    /// finds `fieldValidation` in the server's OpenAPI v3 documents and leaves
    /// validation to the server.
    ///
    /// # Errors
    ///
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        let user_block = if self.auth {
            format!("  user:\n    token: {ADMIN_TOKEN}\n")
        } else {
            "  user: {}\n".to_string()
        };
        let ca = match self.tls {
            Some(_) => format!("    certificate-authority-data: {}\n", tls::ca_base64()),
            None => String::new(),
        };
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: leaderelection-testkit\n  cluster:\n    server: {url}\n{ca}\
             users:\n\
             - name: {ADMIN_USER}\n{user_block}\
             contexts:\n\
             - name: leaderelection-testkit\n  context:\n    cluster: leaderelection-testkit\n    user: {ADMIN_USER}\n    namespace: default\n\
             current-context: leaderelection-testkit\n",
            url = self.url(),
        );
        std::fs::write(path, text)
    }

    /// The fault hooks: latency and injected errors.
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// A snapshot of the requests served so far, by verb, path and user.
    pub fn requests(&self) -> RequestStats {
        self.state.counter.snapshot()
    }

    /// Forgets the requests counted so far.
    pub fn reset_requests(&self) {
        self.state.counter.reset();
    }

    /// Stops serving: the port is closed and every connection, watches included, is
    /// dropped at once. Storage is kept. Does nothing when not serving.
    pub async fn stop_serving(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.cancel();
            // The tasks only end by that cancel; a panic in them has been logged.
            let _ = running.task.await;
            if let Some(controller) = running.controller {
                let _ = controller.await;
            }
        }
    }

    /// Serves again on the same port, with the same storage. Does nothing when
    /// serving.
    ///
    /// # Errors
    ///
    /// When the port has been taken meanwhile.
    pub async fn resume_serving(&mut self) -> io::Result<()> {
        if self.running.is_none() {
            let listener = bind(self.addr.port())?;
            self.serve(listener);
        }
        Ok(())
    }

    /// Whether the server is serving (not between [`stop_serving`](Self::stop_serving)
    /// and [`resume_serving`](Self::resume_serving)).
    pub fn is_serving(&self) -> bool {
        self.running.is_some()
    }

    /// A restart: [`stop_serving`](Self::stop_serving) then
    /// [`resume_serving`](Self::resume_serving). Clients see their connections
    /// dropped, then find the same objects and resourceVersions.
    ///
    /// # Panics
    ///
    /// When the port cannot be bound again (another process took it in between).
    pub async fn restart(&mut self) {
        self.stop_serving().await;
        if let Err(e) = self.resume_serving().await {
            panic!("test API server could not bind {} again: {e}", self.addr);
        }
    }

    /// Stops serving and waits until every connection is closed.
    pub async fn stop(mut self) {
        self.stop_serving().await;
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.stop.cancel();
        }
    }
}

fn client(config: kube::Config) -> kube::Client {
    kube::Client::try_from(config).expect("a kube client for a plain http URL needs no TLS setup")
}

fn bind(port: u16) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Restarts bind the port again while the old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    socket.listen(1024)
}
