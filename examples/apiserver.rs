//! The Kubernetes API test server on its own, for kubectl and the example scheduler.
//!
//! ```text
//! cargo run -p leaderelection-examples --bin apiserver --features testkit -- [--port 6443] [--auth] [--tls]
//!     [--kubeconfig /tmp/apiserver.kubeconfig] [--etcd http://127.0.0.1:2379,... [--prefix /registry]]
//!     [--feature-gates CoordinatedLeaderElection=true]
//! ```
//!
//! It prints its URL and the path of a kubeconfig for it, then serves until Ctrl-C:
//!
//! ```text
//! kubectl --kubeconfig /tmp/apiserver.kubeconfig get leases -A
//! ```
//!
//! With `--auth`, only the admin token of the kubeconfig is let in; kubectl sends it
//! only over TLS, so add `--tls` (a fixed test certificate, which the kubeconfig
//! trusts). `--etcd` needs the `etcd` feature; with it, several of these servers over one etcd
//! cluster serve the same objects, active/active. `--feature-gates
//! CoordinatedLeaderElection=true`, kube-apiserver's flag, runs its coordinated leader
//! election controller, which picks the holder of a Lease among its LeaseCandidates.

use std::path::PathBuf;

use leaderelection_testkit::apiserver::{ApiServer, ApiServerOptions};

fn usage(problem: &str) -> ! {
    eprintln!("{problem}");
    eprintln!(
        "usage: apiserver [--port PORT] [--auth] [--tls] [--kubeconfig PATH] [--etcd URL,URL,... [--prefix PREFIX]] [--feature-gates CoordinatedLeaderElection=true]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut options = ApiServerOptions::new();
    let mut kubeconfig =
        std::env::temp_dir().join(format!("apiserver-{}.kubeconfig", std::process::id()));
    let mut etcd: Option<String> = None;
    let mut prefix = "/registry".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--port" => {
                let port = value("--port");
                options =
                    options.port(port.parse().unwrap_or_else(|_| {
                        usage(&format!("--port {port:?} is not a port number"))
                    }));
            }
            "--auth" => options = options.auth(),
            "--tls" => options = options.tls(),
            "--kubeconfig" => kubeconfig = PathBuf::from(value("--kubeconfig")),
            "--etcd" => etcd = Some(value("--etcd")),
            "--prefix" => prefix = value("--prefix"),
            "--feature-gates" => {
                for gate in value("--feature-gates").split(',') {
                    match gate.trim() {
                        "CoordinatedLeaderElection=true" => {
                            options = options.coordinated_leader_election();
                        }
                        "CoordinatedLeaderElection=false" => {}
                        other => usage(&format!(
                            "--feature-gates: unknown gate {other:?}; this server knows CoordinatedLeaderElection=true|false"
                        )),
                    }
                }
            }
            "-h" | "--help" => usage("serves the Kubernetes API for tests"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if let Some(endpoints) = etcd {
        options = with_etcd(options, endpoints, prefix);
    }

    let server = ApiServer::start_with(options).await?;
    server.write_kubeconfig(&kubeconfig)?;
    println!("{}", server.url());
    println!("{}", kubeconfig.display());
    eprintln!(
        "serving the Kubernetes API at {}; try: kubectl --kubeconfig {} get leases -A",
        server.url(),
        kubeconfig.display()
    );
    tokio::signal::ctrl_c().await?;
    server.stop().await;
    Ok(())
}

#[cfg(feature = "etcd")]
fn with_etcd(options: ApiServerOptions, endpoints: String, prefix: String) -> ApiServerOptions {
    let endpoints = endpoints.split(',').map(str::to_string).collect();
    options.etcd(endpoints, prefix)
}

#[cfg(not(feature = "etcd"))]
fn with_etcd(_: ApiServerOptions, _: String, _: String) -> ApiServerOptions {
    usage("--etcd needs the example built with --features etcd")
}
