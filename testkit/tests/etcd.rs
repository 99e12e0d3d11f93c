//! The etcd test helper starts real clusters that survive losing a minority.

use leaderelection_testkit::etcd::EtcdCluster;

#[test]
fn three_members_keep_quorum_with_one_down_and_rejoin() {
    let mut cluster = EtcdCluster::start(3).expect("start etcd (is etcd-server installed?)");
    assert_eq!(cluster.endpoints().len(), 3);
    cluster.kill(0).unwrap();
    cluster.wait_healthy(1).unwrap();
    cluster.restart(0).unwrap();
    cluster.wait_healthy(0).unwrap();
}
