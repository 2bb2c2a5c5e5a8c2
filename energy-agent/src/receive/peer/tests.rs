use super::*;

#[test]
fn parses_proc_net_addresses() {
    assert_eq!(
        parse_proc_addr("0100007F:1F90"),
        Some("127.0.0.1:8080".parse().unwrap())
    );
    assert_eq!(
        parse_proc_addr("00000000000000000000000001000000:10E1"),
        Some("[::1]:4321".parse().unwrap())
    );
    assert_eq!(
        parse_proc_addr("0000000000000000FFFF00000100007F:0050"),
        Some("[::ffff:127.0.0.1]:80".parse().unwrap())
    );
    assert_eq!(parse_proc_addr("zz:1"), None);
    assert_eq!(parse_proc_addr("é0000000000000000000000000000000:1"), None);
}

fn connect(server: SocketAddr) -> (std::net::TcpStream, SocketAddr) {
    let client = std::net::TcpStream::connect(server).unwrap();
    let local = client.local_addr().unwrap();
    (client, local)
}

#[tokio::test]
async fn finds_this_process_from_its_own_connections_walking_once_per_connection() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let peers = Peers::new(PathBuf::from("/proc")).unwrap();
    let (_a, a) = connect(server);
    let origin = peers.origin(Some(a), server).await;
    assert_eq!(origin.pid, Some(std::process::id()));
    let ns = origin.namespace.expect("this process's namespace");
    assert!(ns.is_agents, "the test runs in the namespace of its procfs");
    assert_eq!(peers.walks(), 1);
    for _ in 0..10 {
        assert_eq!(
            peers.origin(Some(a), server).await.pid,
            Some(std::process::id())
        );
    }
    assert_eq!(peers.walks(), 1, "cached by connection");
    std::thread::sleep(RECHECK);
    assert_eq!(
        peers.origin(Some(a), server).await.pid,
        Some(std::process::id())
    );
    assert_eq!(peers.walks(), 1, "the same socket inode: not walked again");
    let (_b, b) = connect(server);
    assert_eq!(
        peers.origin(Some(b), server).await.pid,
        Some(std::process::id())
    );
    assert_eq!(peers.walks(), 2, "a new connection is walked for");
    let gone: SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert_eq!(peers.origin(Some(gone), server).await, Origin::default());
}

#[tokio::test]
async fn remote_peers_are_not_resolved() {
    let peers = Peers::new(PathBuf::from("/proc")).unwrap();
    let peer: SocketAddr = "192.0.2.7:5555".parse().unwrap();
    let ours = "127.0.0.1:4317".parse().unwrap();
    assert_eq!(peers.origin(Some(peer), ours).await, Origin::default());
    assert_eq!(peers.origin(None, ours).await, Origin::default());
    assert_eq!(peers.walks(), 0);
}

#[tokio::test]
async fn a_sender_in_a_container_is_found_with_its_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("net")).unwrap();
    // 127.0.0.1:4321 → 127.0.0.1:4317, socket inode 777, held by 5000 (1 in its
    // namespace, with a thread 5001, 2 there).
    std::fs::write(
        root.join("net/tcp"),
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:10E1 0100007F:10DD 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 20 4 30 10 -1\n",
    )
    .unwrap();
    namespace::tests::fake_process(
        root,
        5000,
        "pid:[91]",
        &[(5000, "5000\t1"), (5001, "5001\t2")],
    );
    namespace::tests::fake_process(root, 300, "pid:[1]", &[(300, "300")]);
    std::fs::create_dir_all(root.join("5000/fd")).unwrap();
    std::os::unix::fs::symlink("socket:[777]", root.join("5000/fd/3")).unwrap();
    std::fs::create_dir_all(root.join("300/fd")).unwrap();
    std::os::unix::fs::symlink("socket:[778]", root.join("300/fd/3")).unwrap();
    let peers = Peers::new(root.to_path_buf()).unwrap();
    let origin = peers
        .origin(
            Some("127.0.0.1:4321".parse().unwrap()),
            "[::ffff:127.0.0.1]:4317".parse().unwrap(),
        )
        .await;
    assert_eq!(origin.pid, Some(5000));
    let ns = origin.namespace.expect("its namespace");
    assert!(!ns.is_agents);
    assert_eq!((ns.to_agents(1), ns.to_agents(2)), (Some(5000), Some(5001)));
    assert_eq!(ns.to_agents(300), None);
}
