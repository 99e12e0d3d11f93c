//! Endpoints, TLS and credentials.

use super::*;

#[tokio::test]
async fn unreachable_and_malformed_endpoints_are_named() {
    let cluster = start(1);
    let dead = format!(
        "http://{}",
        leaderelection_testkit::etcd::free_port().unwrap()
    );
    let err = EtcdLock::connect(&[dead.as_str()], EtcdOptions::new(), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains(&dead), "{err}");
    eprintln!("unreachable: {err}");

    // One dead endpoint among live ones: connects, and works.
    let endpoints = [dead.clone(), cluster.endpoint(0)];
    let lock = EtcdLock::connect(&endpoints, EtcdOptions::new(), "x")
        .await
        .unwrap();
    for _ in 0..4 {
        let _ = lock.get().await;
    }
    lock.create(&record("a")).await.unwrap();
    lock.get().await.unwrap().unwrap();

    for bad in [
        "ftp://127.0.0.1:2379",
        "http://127.0.0.1",
        "127.0.0.1:notaport",
    ] {
        let err = EtcdLock::connect(&[bad], EtcdOptions::new(), "x")
            .await
            .unwrap_err();
        assert!(err.to_string().contains(bad), "{bad}: {err}");
    }
    let err = EtcdLock::connect(&[] as &[&str], EtcdOptions::new(), "x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no etcd endpoint"), "{err}");
}

#[cfg(feature = "etcd-tls")]
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("leaderelection-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[cfg(feature = "etcd-tls")]
#[tokio::test]
async fn tls_with_client_certificates() {
    init_logs();
    let dir = temp_dir("tls");
    let certs = TestCerts::generate(&dir).expect("generate certificates with openssl");
    let other = TestCerts::generate(&dir.join("other")).unwrap();
    let cluster = EtcdCluster::start_with(1, EtcdClusterOptions::new().tls(&certs)).unwrap();
    let endpoint = cluster.endpoint(0);
    assert!(endpoint.starts_with("https://"));
    let good = || {
        EtcdOptions::new()
            .ca_file(&certs.ca_file)
            .cert_file(&certs.client_cert)
            .key_file(&certs.client_key)
    };

    let lock = EtcdLock::connect(&[endpoint.as_str()], good(), "tls")
        .await
        .unwrap();
    let replica = elector("a", lock, fast("a"));
    wait_until("it leads over TLS", Duration::from_secs(20), || {
        replica.is_leader()
    })
    .await;
    replica.stop().await;

    // A server certificate from another CA: the endpoint is named.
    let wrong_ca = good().ca_file(&other.ca_file);
    let err = EtcdLock::connect(&[endpoint.as_str()], wrong_ca, "tls")
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains(&endpoint), "{err}");
    eprintln!("wrong CA: {err}");
    // No client certificate: etcd refuses the handshake.
    let no_cert = EtcdOptions::new().ca_file(&certs.ca_file);
    let err = EtcdLock::connect(&[endpoint.as_str()], no_cert, "tls")
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&endpoint), "{err}");
    // Settings that cannot work say which.
    let plain = endpoint.replace("https://", "http://");
    let err = EtcdLock::connect(&[plain.as_str()], good(), "tls")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("use https://"), "{err}");
    let err = EtcdLock::connect(&[endpoint.as_str()], EtcdOptions::new(), "tls")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--etcd-cafile"), "{err}");
    let missing = good().key_file(dir.join("missing.key"));
    let err = EtcdLock::connect(&[endpoint.as_str()], missing, "tls")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing.key"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn user_and_password_with_expiring_tokens() {
    init_logs();
    // Tokens expire every second: renewals must outlive many of them.
    let cluster =
        EtcdCluster::start_with(1, EtcdClusterOptions::new().arg("--auth-token-ttl=1")).unwrap();
    let mut admin = raw(&cluster).await;
    admin.user_add("root", "rootpw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("elector").await.unwrap();
    admin
        .role_grant_permission(
            "elector",
            leaderelection::lock::etcd::etcd_client::Permission::read_write("/leaderelection/")
                .with_prefix(),
        )
        .await
        .unwrap();
    admin.user_add("scheduler", "s3cret", None).await.unwrap();
    admin.user_grant_role("scheduler", "elector").await.unwrap();
    admin.auth_enable().await.unwrap();
    let endpoints = cluster.endpoints();

    let err = EtcdLock::connect(
        &endpoints,
        EtcdOptions::new().user("scheduler", "wrong"),
        "auth",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, LockError::Forbidden { .. }), "{err}");
    assert!(err.to_string().contains("\"scheduler\""), "{err}");
    eprintln!("wrong password: {err}");
    let err = EtcdLock::connect(&endpoints, EtcdOptions::new().user("nobody", "x"), "auth")
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Forbidden { .. }), "{err}");
    // Without credentials the connection works, every request is refused.
    let anonymous = EtcdLock::connect(&endpoints, EtcdOptions::new(), "auth")
        .await
        .unwrap();
    let err = anonymous.get().await.unwrap_err();
    assert!(matches!(err, LockError::Forbidden { .. }), "{err}");

    let options = || {
        EtcdOptions::new()
            .user("scheduler", "s3cret")
            .native_lease(true)
    };
    let mut replicas = Vec::new();
    for id in ["a", "b"] {
        let l = EtcdLock::connect(&endpoints, options(), "auth")
            .await
            .unwrap();
        replicas.push(elector(id, l, fast(id)));
    }
    let leader = one_leader(&replicas, Duration::from_secs(20)).await;
    for r in &mut replicas {
        r.drain_events();
    }
    sleep(Duration::from_secs(4)).await;
    assert!(
        replicas[leader].is_leader(),
        "renewals failed once tokens expired"
    );
    for r in &mut replicas {
        let events = r.drain_events();
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, ElectionEvent::StoppedLeading)),
            "{}: {events:?}",
            r.id
        );
    }
    for r in replicas {
        r.stop().await;
    }
    let mut root = Client::connect(
        &endpoints,
        Some(
            leaderelection::lock::etcd::etcd_client::ConnectOptions::new()
                .with_user("root", "rootpw"),
        ),
    )
    .await
    .unwrap();
    assert!(
        root.leases().await.unwrap().leases().is_empty(),
        "a lease was left behind"
    );
}
