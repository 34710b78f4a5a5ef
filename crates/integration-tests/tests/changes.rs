//! The write API against real nginx and real traffic: `add_peer` (table and positional forms),
//! `remove_peer`, `set_peer_down`, `update_peer` and `zone_usage`, each checked through
//! `describe_zone` and through which backends proxied requests reach.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use integration_tests::{eval_server, free_ports, get, parse_show, Backend, Config, ExpectedPeer};

/// A server on `%%PORT_1%%` proxying everything to upstream `u`.
const PROXY_U: &str = "server {
    listen 127.0.0.1:%%PORT_1%%;
    location / { proxy_pass http://u; }
}";

/// What `describe_zone(target)` prints through `show_result`.
fn describe(nginx: &integration_tests::Nginx, target: &str) -> String {
    nginx.eval(&format!("show_result(dynamic.describe_zone({target:?}))"))
}

/// Sends `n` proxied requests to `port`, each of which must succeed.
fn traffic(port: u16, n: usize) {
    for i in 0..n {
        let response = get(port, &format!("/?x={i}"));
        assert_eq!(response.status, 200, "proxied request {i}: {response:?}");
    }
}

fn counts(backends: &[&Backend]) -> Vec<u64> {
    backends.iter().map(|b| b.requests()).collect()
}

/// A fresh unix socket path, unused by any other test, removed on drop (nginx removes it when
/// it stops, but not when a failed test kills it).
struct SocketPath(PathBuf);

impl SocketPath {
    fn new(tag: &str) -> SocketPath {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("dynup-it-{}-{tag}-{n}.sock", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_file(&path);
        SocketPath(path)
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn added_peers_are_described_with_exactly_the_given_settings() {
    let nginx = Config::new()
        .http("upstream u { zone z 64k; server 127.0.0.1:9000; }")
        .http(&eval_server())
        .start();
    let body = nginx.eval(
        r#"
        say(dynamic.add_peer, "u", "127.0.0.1:9001")
        say(dynamic.add_peer, "u", "127.0.0.1:9002",
            { weight = 7, max_fails = 3, fail_timeout = 20, max_conns = 5, down = true })
        -- Positional (the original module's form), and by zone name.
        say(dynamic.add_peer, "z", "127.0.0.1:9003", 4, 2, 30, true)
        say(dynamic.add_peer, "u", "127.0.0.1:9004", 3)
        say(dynamic.add_peer, "u", "127.0.0.1:9005", nil, nil, nil, false)
        say(dynamic.add_peer, "u", "127.0.0.1:9006", {})
        say(dynamic.add_peer, "u", "127.0.0.1:9007", { weight = 1000000, max_fails = 0,
            fail_timeout = 0, max_conns = 0, down = false, backup = false })
        say(dynamic.add_peer, "u", "127.0.0.1:9008",
            { fail_timeout = 31536000, max_fails = 1000000, max_conns = 1000000 })
        say(dynamic.add_peer, "u", "127.0.0.1:9009", 2, 0)
        "#,
    );
    assert_eq!(body, "boolean true\n".repeat(9));

    let expected = [
        ExpectedPeer::new("127.0.0.1:9000"),
        ExpectedPeer::new("127.0.0.1:9001"),
        ExpectedPeer::new("127.0.0.1:9002")
            .set("weight", 7)
            .set("max_fails", 3)
            .set("fail_timeout", 20)
            .set("max_conns", 5)
            .down(true),
        ExpectedPeer::new("127.0.0.1:9003")
            .set("weight", 4)
            .set("max_fails", 2)
            .set("fail_timeout", 30)
            .down(true),
        ExpectedPeer::new("127.0.0.1:9004").set("weight", 3),
        ExpectedPeer::new("127.0.0.1:9005"),
        ExpectedPeer::new("127.0.0.1:9006"),
        ExpectedPeer::new("127.0.0.1:9007")
            .set("weight", 1_000_000)
            .set("max_fails", 0)
            .set("fail_timeout", 0),
        ExpectedPeer::new("127.0.0.1:9008")
            .set("fail_timeout", 31_536_000)
            .set("max_fails", 1_000_000)
            .set("max_conns", 1_000_000),
        ExpectedPeer::new("127.0.0.1:9009").set("weight", 2).set("max_fails", 0),
    ];
    assert_eq!(describe(&nginx, "u"), ExpectedPeer::show(&expected));
    assert_eq!(describe(&nginx, "z"), ExpectedPeer::show(&expected), "by zone name");
    nginx.stop();
}

#[test]
fn backup_peers_go_to_the_backup_list() {
    let nginx = Config::new()
        .http(
            "upstream u { zone z 64k; server 127.0.0.1:9000; server 127.0.0.1:9001; }
upstream lc {
    zone lc 64k;
    least_conn;
    server 127.0.0.1:9100;
    server 127.0.0.1:9101 backup;
}",
        )
        .http(&eval_server())
        .start();

    // `u` has no backup list until the first backup peer is added.
    let body = nginx.eval(
        r#"
        say(dynamic.add_peer, "u", "127.0.0.1:9002", { backup = true, weight = 3 })
        say(dynamic.add_peer, "u", "127.0.0.1:9003")
        say(dynamic.add_peer, "u", "127.0.0.1:9004", { backup = true, down = true })
        say(dynamic.add_peer, "lc", "127.0.0.1:9102", { backup = true })
        say(dynamic.add_peer, "lc", "127.0.0.1:9103", { backup = false })
        "#,
    );
    assert_eq!(body, "boolean true\n".repeat(5));
    assert_eq!(
        describe(&nginx, "u"),
        ExpectedPeer::show(&[
            ExpectedPeer::new("127.0.0.1:9000"),
            ExpectedPeer::new("127.0.0.1:9001"),
            ExpectedPeer::new("127.0.0.1:9003"),
            ExpectedPeer::new("127.0.0.1:9002").set("weight", 3).backup(),
            ExpectedPeer::new("127.0.0.1:9004").down(true).backup(),
        ])
    );
    assert_eq!(
        describe(&nginx, "lc"),
        ExpectedPeer::show(&[
            ExpectedPeer::new("127.0.0.1:9100"),
            ExpectedPeer::new("127.0.0.1:9103"),
            ExpectedPeer::new("127.0.0.1:9101").backup(),
            ExpectedPeer::new("127.0.0.1:9102").backup(),
        ])
    );

    // A peer's name is unique across both lists; backups can be changed and removed, the last
    // one included.
    let body = nginx.eval(
        r#"
        say(dynamic.add_peer, "u", "127.0.0.1:9002")
        say(dynamic.add_peer, "u", "127.0.0.1:9000", { backup = true })
        say(dynamic.update_peer, "u", "127.0.0.1:9002", { weight = 2, max_conns = 4 })
        say(dynamic.set_peer_down, "u", "127.0.0.1:9004", false)
        say(dynamic.remove_peer, "lc", "127.0.0.1:9101")
        say(dynamic.remove_peer, "lc", "127.0.0.1:9102")
        say(dynamic.remove_peer, "lc", "127.0.0.1:9102")
        "#,
    );
    assert_eq!(
        body,
        "nil, string peer \"127.0.0.1:9002\" already exists in upstream \"u\"\n\
         nil, string peer \"127.0.0.1:9000\" already exists in upstream \"u\"\n\
         boolean true\n\
         boolean true\n\
         boolean true\n\
         boolean true\n\
         nil, string peer \"127.0.0.1:9102\" not found in upstream \"lc\"\n"
    );
    assert_eq!(
        describe(&nginx, "u"),
        ExpectedPeer::show(&[
            ExpectedPeer::new("127.0.0.1:9000"),
            ExpectedPeer::new("127.0.0.1:9001"),
            ExpectedPeer::new("127.0.0.1:9003"),
            ExpectedPeer::new("127.0.0.1:9002").set("weight", 2).set("max_conns", 4).backup(),
            ExpectedPeer::new("127.0.0.1:9004").backup(),
        ])
    );
    assert_eq!(
        describe(&nginx, "lc"),
        ExpectedPeer::show(&[
            ExpectedPeer::new("127.0.0.1:9100"),
            ExpectedPeer::new("127.0.0.1:9103"),
        ])
    );
    nginx.stop();
}

#[test]
fn a_backup_peer_added_at_runtime_serves_when_the_primaries_are_down() {
    let (primary, backup) = (Backend::start(), Backend::start());
    let nginx = Config::new()
        .http(&format!("upstream u {{ zone z 64k; server {}; }}", primary.addr()))
        .http(PROXY_U)
        .http(&eval_server())
        .start();
    let proxy = nginx.ports()[1];
    let added = nginx
        .eval(&format!("say(dynamic.add_peer, 'u', '{}', {{ backup = true }})", backup.addr()));
    assert_eq!(added, "boolean true\n");

    traffic(proxy, 10);
    assert_eq!(counts(&[&primary, &backup]), [10, 0], "a backup is not used while a primary is up");

    let down = nginx.eval(&format!("say(dynamic.set_peer_down, 'u', '{}')", primary.addr()));
    assert_eq!(down, "boolean true\n");
    traffic(proxy, 10);
    assert_eq!(counts(&[&primary, &backup]), [10, 10], "all primaries down: the backup serves");

    let up = nginx.eval(&format!("say(dynamic.set_peer_down, 'u', '{}', false)", primary.addr()));
    assert_eq!(up, "boolean true\n");
    traffic(proxy, 10);
    assert_eq!(counts(&[&primary, &backup]), [20, 10]);
    nginx.stop();
}

#[test]
fn ipv6_and_unix_peers_are_added_described_and_served() {
    let v4 = Backend::start();
    let socket = SocketPath::new("changes");
    let socket_text = socket.0.display().to_string();
    let nginx = Config::new()
        .http(&format!("upstream u {{ zone z 64k; server {}; }}", v4.addr()))
        .http(PROXY_U)
        .http(&format!(
            "server {{
    listen [::1]:%%PORT_2%%;
    location / {{ return 200 \"ipv6 backend\\n\"; }}
}}
server {{
    listen unix:{socket_text};
    location / {{ return 200 \"unix backend\\n\"; }}
}}"
        ))
        .http(&eval_server())
        .start();
    let (proxy, v6_port) = (nginx.ports()[1], nginx.ports()[2]);
    let unused = free_ports(1)[0];

    let body = nginx.eval(&format!(
        r#"
        say(dynamic.add_peer, "u", "[::1]:{v6_port}")
        say(dynamic.add_peer, "u", "unix:{socket_text}")
        -- Other spellings: the name is nginx's text of the address, the server as written.
        say(dynamic.add_peer, "u", "[0:0::0:1]:{unused}", {{ down = true }})
        say(dynamic.add_peer, "u", "UNIX:/nonexistent/dynup.sock", {{ down = true, weight = 2 }})
        say(dynamic.add_peer, "u", "[::ffff:127.0.0.1]:{unused}", {{ down = true }})
        -- The same peers again, spelled differently.
        say(dynamic.add_peer, "u", "[::0:1]:{v6_port}")
        say(dynamic.add_peer, "u", "unix:/nonexistent/dynup.sock")
        "#
    ));
    assert_eq!(
        body,
        format!(
            "boolean true\nboolean true\nboolean true\nboolean true\nboolean true\n\
             nil, string peer \"[::1]:{v6_port}\" already exists in upstream \"u\"\n\
             nil, string peer \"unix:/nonexistent/dynup.sock\" already exists in upstream \"u\"\n"
        )
    );
    assert_eq!(
        describe(&nginx, "u"),
        ExpectedPeer::show(&[
            ExpectedPeer::new(&v4.addr()),
            ExpectedPeer::new(&format!("[::1]:{v6_port}")),
            ExpectedPeer::new(&format!("unix:{socket_text}")),
            ExpectedPeer::named(&format!("[::1]:{unused}"), &format!("[0:0::0:1]:{unused}"))
                .down(true),
            ExpectedPeer::named("unix:/nonexistent/dynup.sock", "UNIX:/nonexistent/dynup.sock")
                .set("weight", 2)
                .down(true),
            ExpectedPeer::new(&format!("[::ffff:127.0.0.1]:{unused}")).down(true),
        ])
    );

    // With the IPv4 peer down, the IPv6 and unix peers carry the traffic.
    let down = nginx.eval(&format!("say(dynamic.set_peer_down, 'u', '{}')", v4.addr()));
    assert_eq!(down, "boolean true\n");
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..20 {
        let response = get(proxy, "/");
        assert_eq!(response.status, 200, "{response:?}");
        *served.entry(response.body).or_default() += 1;
    }
    assert_eq!(
        served,
        BTreeMap::from([("ipv6 backend\n".to_owned(), 10), ("unix backend\n".to_owned(), 10)]),
        "round robin over the two peers up"
    );

    // Removed by another spelling of its address: the IPv6 peer gets nothing more.
    let body = nginx.eval(&format!(
        r#"
        say(dynamic.remove_peer, "u", "[0::1]:{v6_port}")
        say(dynamic.remove_peer, "u", "unix:/nonexistent/dynup.sock")
        say(dynamic.remove_peer, "u", "[::1]:{unused}")
        "#
    ));
    assert_eq!(body, "boolean true\n".repeat(3));
    for _ in 0..10 {
        let response = get(proxy, "/");
        assert_eq!((response.status, response.body.as_str()), (200, "unix backend\n"));
    }
    assert_eq!(v4.requests(), 0);
    nginx.stop();
    assert!(!socket.0.exists(), "nginx removes its unix socket on exit");
}

#[test]
fn repeated_calls_are_idempotent_or_refused_without_change() {
    let nginx = Config::new()
        .http("upstream u { zone z 64k; server 127.0.0.1:9000; }")
        .http(&eval_server())
        .start();
    let state = || nginx.eval("state('u')");

    assert_eq!(
        nginx.eval("say(dynamic.add_peer, 'u', '127.0.0.1:9001', { weight = 2 })"),
        "boolean true\n"
    );
    let after_add = state();
    // Again, with the same or other settings, or another spelling of the address.
    let body = nginx.eval(
        r#"
        say(dynamic.add_peer, "u", "127.0.0.1:9001", { weight = 2 })
        say(dynamic.add_peer, "u", "127.0.0.1:9001", { weight = 5, down = true })
        say(dynamic.add_peer, "u", "127.0.0.1:09001")
        say(dynamic.add_peer, "u", "127.0.0.1:9001", { backup = true })
        say(dynamic.add_peer, "u", "127.0.0.1:9000")
        "#,
    );
    let exists =
        |peer: &str| format!("nil, string peer \"{peer}\" already exists in upstream \"u\"\n");
    assert_eq!(body, [exists("127.0.0.1:9001").repeat(4), exists("127.0.0.1:9000")].concat());
    assert_eq!(state(), after_add, "a refused add changes nothing");

    let body = nginx.eval(
        r#"
        say(dynamic.set_peer_down, "u", "127.0.0.1:9001")
        say(dynamic.set_peer_down, "u", "127.0.0.1:9001", true)
        "#,
    );
    assert_eq!(body, "boolean true\nboolean true\n");
    let down_twice = state();
    assert_eq!(nginx.eval("say(dynamic.set_peer_down, 'u', '127.0.0.1:9001')"), "boolean true\n");
    assert_eq!(state(), down_twice, "down is down");
    assert_eq!(
        describe(&nginx, "u"),
        ExpectedPeer::show(&[
            ExpectedPeer::new("127.0.0.1:9000"),
            ExpectedPeer::new("127.0.0.1:9001").set("weight", 2).down(true),
        ])
    );
    let body = nginx.eval(
        r#"
        say(dynamic.set_peer_down, "u", "127.0.0.1:9001", false)
        say(dynamic.set_peer_down, "u", "127.0.0.1:9001", false)
        "#,
    );
    assert_eq!(body, "boolean true\nboolean true\n");
    assert_eq!(state(), after_add, "up again: as added");

    let body = nginx.eval(
        r#"
        say(dynamic.remove_peer, "u", "127.0.0.1:9001")
        say(dynamic.remove_peer, "u", "127.0.0.1:9001")
        say(dynamic.set_peer_down, "u", "127.0.0.1:9001")
        say(dynamic.update_peer, "u", "127.0.0.1:9001", { weight = 3 })
        "#,
    );
    let not_found = "nil, string peer \"127.0.0.1:9001\" not found in upstream \"u\"\n";
    assert_eq!(body, ["boolean true\n", &not_found.repeat(3)].concat());
    assert_eq!(describe(&nginx, "u"), ExpectedPeer::show(&[ExpectedPeer::new("127.0.0.1:9000")]));

    // And it can come back.
    assert_eq!(nginx.eval("say(dynamic.add_peer, 'u', '127.0.0.1:9001', 2)"), "boolean true\n");
    assert_eq!(state(), after_add);
    nginx.stop();
}

/// A configuration with a live backend and a peer that refuses connections, and a proxy.
fn with_a_refusing_peer(backend: &Backend, refusing: u16) -> integration_tests::Nginx {
    Config::new()
        .http(&format!(
            "upstream u {{ zone z 64k; server {}; server 127.0.0.1:{refusing} max_fails=5; }}",
            backend.addr()
        ))
        .http(PROXY_U)
        .http(&eval_server())
        .start()
}

/// Proxies until the refusing peer has failed `n` times; returns its `fails`.
fn fail_refusing_peer(nginx: &integration_tests::Nginx, n: u32) -> String {
    let proxy = nginx.ports()[1];
    for _ in 0..2 * n {
        assert_eq!(get(proxy, "/").status, 200, "the live peer answers every request");
    }
    let peers = parse_show(&describe(nginx, "u"));
    let fails = peers["2.fails"].clone();
    assert_eq!(fails, format!("number {n}"), "{peers:?}");
    fails
}

#[test]
fn set_peer_down_false_after_down_resets_fails() {
    let backend = Backend::start();
    let refusing = free_ports(1)[0];
    let nginx = with_a_refusing_peer(&backend, refusing);
    fail_refusing_peer(&nginx, 2);
    let peer = format!("127.0.0.1:{refusing}");

    assert_eq!(nginx.eval(&format!("say(dynamic.set_peer_down, 'u', '{peer}')")), "boolean true\n");
    let peers = parse_show(&describe(&nginx, "u"));
    assert_eq!(
        (peers["2.down"].as_str(), peers["2.fails"].as_str()),
        ("boolean true", "number 2"),
        "down keeps the failure count: {peers:?}"
    );
    assert_eq!(
        nginx.eval(&format!("say(dynamic.set_peer_down, 'u', '{peer}', false)")),
        "boolean true\n"
    );
    let peers = parse_show(&describe(&nginx, "u"));
    assert_eq!(peers["2.fails"], "number 0", "up again, failures forgotten: {peers:?}");
    assert!(!peers.contains_key("2.down"), "{peers:?}");
    nginx.stop();
}

/// The contract: `set_peer_down(target, server, false)` "brings it up and resets fails", also
/// for a peer nginx itself took out of rotation after `max_fails` failures (never marked down).
#[test]
fn set_peer_down_false_resets_fails_of_a_failed_peer() {
    let backend = Backend::start();
    let refusing = free_ports(1)[0];
    let nginx = with_a_refusing_peer(&backend, refusing);
    fail_refusing_peer(&nginx, 2);
    let peer = format!("127.0.0.1:{refusing}");
    assert_eq!(
        nginx.eval(&format!("say(dynamic.set_peer_down, 'u', '{peer}', false)")),
        "boolean true\n"
    );
    let peers = parse_show(&describe(&nginx, "u"));
    assert_eq!(peers["2.fails"], "number 0", "set_peer_down(false) resets fails: {peers:?}");
    assert!(!peers.contains_key("2.down"), "{peers:?}");
    nginx.stop();
}

#[test]
fn update_peer_changes_only_what_it_is_given() {
    let nginx = Config::new()
        .http("upstream u { zone z 64k; server 127.0.0.1:9000 weight=2 max_fails=4; }")
        .http(&eval_server())
        .start();
    let added = nginx.eval(
        "say(dynamic.add_peer, 'u', '127.0.0.1:9001', \
         { weight = 2, max_fails = 2, fail_timeout = 2, max_conns = 2 })",
    );
    assert_eq!(added, "boolean true\n");
    let configured = ExpectedPeer::new("127.0.0.1:9000").set("weight", 2).set("max_fails", 4);
    let mut runtime = ExpectedPeer::new("127.0.0.1:9001")
        .set("weight", 2)
        .set("max_fails", 2)
        .set("fail_timeout", 2)
        .set("max_conns", 2);
    assert_eq!(describe(&nginx, "u"), ExpectedPeer::show(&[configured.clone(), runtime.clone()]));

    type Change = fn(ExpectedPeer) -> ExpectedPeer;
    let steps: [(&str, Change); 9] = [
        ("{ weight = 9 }", |p| p.set("weight", 9)),
        ("{ max_fails = 0 }", |p| p.set("max_fails", 0)),
        ("{ fail_timeout = 60 }", |p| p.set("fail_timeout", 60)),
        ("{ max_conns = 3 }", |p| p.set("max_conns", 3)),
        ("{ down = true }", |p| p.down(true)),
        ("{}", |p| p),
        ("{ down = false }", |p| p.down(false)),
        ("{ weight = 1, max_conns = 0 }", |p| p.set("weight", 1).set("max_conns", 0)),
        (
            "{ weight = 1000000, max_fails = 1000000, fail_timeout = 31536000, \
             max_conns = 1000000, down = true }",
            |p| {
                p.set("weight", 1_000_000)
                    .set("max_fails", 1_000_000)
                    .set("fail_timeout", 31_536_000)
                    .set("max_conns", 1_000_000)
                    .down(true)
            },
        ),
    ];
    for (options, change) in steps {
        let body =
            nginx.eval(&format!("say(dynamic.update_peer, 'u', '127.0.0.1:9001', {options})"));
        assert_eq!(body, "boolean true\n", "update_peer {options}");
        runtime = change(runtime);
        assert_eq!(
            describe(&nginx, "u"),
            ExpectedPeer::show(&[configured.clone(), runtime.clone()]),
            "after update_peer {options}"
        );
    }

    // A configured peer, by zone name.
    let body = nginx.eval("say(dynamic.update_peer, 'z', '127.0.0.1:9000', { fail_timeout = 1 })");
    assert_eq!(body, "boolean true\n");
    assert_eq!(
        describe(&nginx, "u"),
        ExpectedPeer::show(&[configured.set("fail_timeout", 1), runtime])
    );
    nginx.stop();
}

#[test]
fn the_last_primary_peer_cannot_be_removed() {
    let nginx = Config::new()
        .http(
            "upstream one {
    zone one 64k;
    server 127.0.0.1:9000;
    server 127.0.0.1:9001 backup;
}",
        )
        .http(&eval_server())
        .start();
    let state = || nginx.eval("state('one')");
    let before = state();
    let last = "nil, string cannot remove the last primary peer of upstream \"one\" \
                (mark it down instead)\n";
    assert_eq!(nginx.eval("say(dynamic.remove_peer, 'one', '127.0.0.1:9000')"), last);
    assert_eq!(state(), before, "refused: nothing changed");

    let body = nginx.eval(
        r#"
        -- The backup list may become empty.
        say(dynamic.remove_peer, "one", "127.0.0.1:9001")
        say(dynamic.remove_peer, "one", "127.0.0.1:9000")
        -- Marking it down is the way.
        say(dynamic.set_peer_down, "one", "127.0.0.1:9000")
        say(dynamic.add_peer, "one", "127.0.0.1:9002")
        say(dynamic.remove_peer, "one", "127.0.0.1:9000")
        say(dynamic.remove_peer, "one", "127.0.0.1:9002")
        "#,
    );
    assert_eq!(
        body,
        format!("boolean true\n{last}boolean true\nboolean true\nboolean true\n{last}")
    );
    assert_eq!(describe(&nginx, "one"), ExpectedPeer::show(&[ExpectedPeer::new("127.0.0.1:9002")]));
    nginx.stop();
}

#[test]
fn traffic_follows_adds_downs_weights_and_removes() {
    let (a, b, c) = (Backend::start(), Backend::start(), Backend::start());
    let nginx = Config::new()
        .http(&format!("upstream u {{ zone z 64k; server {}; }}", a.addr()))
        .http(PROXY_U)
        .http(&eval_server())
        .start();
    let proxy = nginx.ports()[1];
    let call = |lua: String| assert_eq!(nginx.eval(&lua), "boolean true\n", "{lua}");

    traffic(proxy, 10);
    assert_eq!(counts(&[&a, &b, &c]), [10, 0, 0]);

    call(format!("say(dynamic.add_peer, 'u', '{}')", b.addr()));
    traffic(proxy, 20);
    assert_eq!(counts(&[&a, &b, &c]), [20, 10, 0], "round robin over both, as configured peers");

    call(format!("say(dynamic.set_peer_down, 'u', '{}')", b.addr()));
    traffic(proxy, 10);
    assert_eq!(counts(&[&a, &b, &c]), [30, 10, 0], "down: no more requests");

    call(format!("say(dynamic.set_peer_down, 'u', '{}', false)", b.addr()));
    call(format!("say(dynamic.update_peer, 'u', '{}', {{ weight = 3 }})", b.addr()));
    traffic(proxy, 40);
    let [a_n, b_n, _] = counts(&[&a, &b, &c])[..] else { unreachable!() };
    let (a_got, b_got) = (a_n - 30, b_n - 10);
    assert_eq!(a_got + b_got, 40);
    assert!(b_got > 2 * a_got && a_got > 0, "weight 3 against 1: {b_got} against {a_got}");

    call(format!("say(dynamic.add_peer, 'u', '{}', {{ down = true }})", c.addr()));
    call(format!("say(dynamic.remove_peer, 'u', '{}')", b.addr()));
    let before = counts(&[&a, &b, &c]);
    traffic(proxy, 20);
    assert_eq!(
        counts(&[&a, &b, &c]),
        [before[0] + 20, before[1], 0],
        "removed and added-down peers get nothing"
    );

    call(format!("say(dynamic.update_peer, 'u', '{}', {{ down = false }})", c.addr()));
    traffic(proxy, 20);
    let after = counts(&[&a, &b, &c]);
    assert_eq!(after[1], before[1], "removed stays removed");
    assert_eq!(after[0] + after[2], before[0] + 40);
    assert!(after[2] > 0 && after[0] > before[0] + 20, "both up peers serve: {after:?}");
    nginx.stop();
}

#[test]
fn upstreams_sharing_a_zone_are_changed_through_their_own_names() {
    let nginx = Config::new()
        .http(
            "upstream a { zone shared 64k; server 127.0.0.1:9000; }
upstream b { zone shared 64k; server 127.0.0.1:9100; }",
        )
        .http(&eval_server())
        .start();
    let body = nginx.eval(
        r#"
        say(dynamic.add_peer, "a", "127.0.0.1:9001")
        say(dynamic.add_peer, "b", "127.0.0.1:9001", { weight = 4 })
        say(dynamic.add_peer, "shared", "127.0.0.1:9002")
        say(dynamic.remove_peer, "b", "127.0.0.1:9000")
        local a, b = dynamic.zone_usage("a"), dynamic.zone_usage("b")
        ngx.say(a.size == b.size and a.free == b.free and a.size == 65536)
        say(dynamic.zone_usage, "shared")
        "#,
    );
    let ambiguous = "zone \"shared\" is shared by upstreams a, b: name the upstream";
    assert_eq!(
        body,
        format!(
            "boolean true\nboolean true\nnil, string {ambiguous}\n\
             nil, string peer \"127.0.0.1:9000\" not found in upstream \"b\"\ntrue\n\
             nil, string {ambiguous}\n"
        )
    );
    assert_eq!(
        describe(&nginx, "a"),
        ExpectedPeer::show(&[
            ExpectedPeer::new("127.0.0.1:9000"),
            ExpectedPeer::new("127.0.0.1:9001"),
        ])
    );
    assert_eq!(
        describe(&nginx, "b"),
        ExpectedPeer::show(&[
            ExpectedPeer::new("127.0.0.1:9100"),
            ExpectedPeer::new("127.0.0.1:9001").set("weight", 4),
        ])
    );
    nginx.stop();
}

#[test]
fn zone_usage_reports_the_zone_and_what_peers_take() {
    let nginx = Config::new()
        .http("upstream u { zone z 128k; server 127.0.0.1:9000; }")
        .http(&eval_server())
        .start();
    let usage = |nginx: &integration_tests::Nginx| {
        let fields = parse_show(&nginx.eval("show(dynamic.zone_usage('u'))"));
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["free", "size"], "{fields:?}");
        assert_eq!(fields["size"], "number 131072");
        let free: u64 = fields["free"].strip_prefix("number ").unwrap().parse().unwrap();
        assert!(free > 0 && free < 131_072, "{fields:?}");
        free
    };
    let start = usage(&nginx);
    let body = nginx.eval(
        r#"
        for i = 1, 100 do
            local ok, err = dynamic.add_peer("u", "127.0.0.1:" .. (10000 + i))
            if not ok then ngx.say(err) return end
        end
        ngx.say("added")
        "#,
    );
    assert_eq!(body, "added\n");
    let full = usage(&nginx);
    assert!(full < start, "100 peers take room: {full} < {start}");
    let body = nginx.eval(
        r#"
        for i = 1, 100 do
            local ok, err = dynamic.remove_peer("u", "127.0.0.1:" .. (10000 + i))
            if not ok then ngx.say(err) return end
        end
        ngx.say("removed")
        "#,
    );
    assert_eq!(body, "removed\n");
    assert_eq!(usage(&nginx), start, "all of it comes back");
    nginx.stop();
}

/// Without a state file, a reload starts every upstream from its configuration again, in new
/// zones; the old workers finish and the new ones take changes as usual.
#[test]
fn a_reload_starts_from_the_configuration() {
    let backend = Backend::start();
    let mut nginx = Config::new()
        .http(&format!("upstream u {{ zone z 64k; server {}; }}", backend.addr()))
        .http(PROXY_U)
        .http(&eval_server())
        .start();
    let configured = describe(&nginx, "u");
    let body = nginx.eval(
        r#"
        say(dynamic.add_peer, "u", "127.0.0.1:9001", { weight = 3 })
        say(dynamic.add_peer, "u", "127.0.0.1:9002", { backup = true })
        "#,
    );
    assert_eq!(body, "boolean true\nboolean true\n");
    let old_workers = nginx.worker_pids();
    nginx.reload();
    assert!(nginx.worker_pids().iter().all(|pid| !old_workers.contains(pid)));
    assert_eq!(describe(&nginx, "u"), configured);
    assert_eq!(
        nginx.eval("say(dynamic.add_peer, 'u', '127.0.0.1:9001')\nsay(dynamic.remove_peer, 'u', '127.0.0.1:9001')"),
        "boolean true\nboolean true\n"
    );
    traffic(nginx.ports()[1], 5);
    assert_eq!(backend.requests(), 5);
    nginx.stop();
}

/// Configured peers are found by their address, whatever its spelling in the configuration or
/// in the call.
#[test]
fn configured_ipv6_and_unix_peers_are_found_by_any_spelling() {
    let nginx = Config::new()
        .http(
            "upstream u {
    zone z 64k;
    server 127.0.0.1:9000;
    server [0::1]:9001;
    server UNIX:/nonexistent/dynup-a.sock;
    server 127.0.0.1:09002;
}",
        )
        .http(&eval_server())
        .start();
    assert_eq!(
        describe(&nginx, "u"),
        ExpectedPeer::show(&[
            ExpectedPeer::new("127.0.0.1:9000"),
            ExpectedPeer::named("[::1]:9001", "[0::1]:9001"),
            ExpectedPeer::new("UNIX:/nonexistent/dynup-a.sock"),
            ExpectedPeer::named("127.0.0.1:9002", "127.0.0.1:09002"),
        ])
    );
    let body = nginx.eval(
        r#"
        say(dynamic.add_peer, "u", "[::1]:9001")
        say(dynamic.add_peer, "u", "unix:/nonexistent/dynup-a.sock")
        say(dynamic.add_peer, "u", "127.0.0.1:9002")
        say(dynamic.update_peer, "u", "[::0:1]:9001", { weight = 2 })
        say(dynamic.set_peer_down, "u", "unix:/nonexistent/dynup-a.sock")
        say(dynamic.update_peer, "u", "127.0.0.1:9002", { max_conns = 9 })
        "#,
    );
    assert_eq!(
        body,
        "nil, string peer \"[::1]:9001\" already exists in upstream \"u\"\n\
         nil, string peer \"unix:/nonexistent/dynup-a.sock\" already exists in upstream \"u\"\n\
         nil, string peer \"127.0.0.1:9002\" already exists in upstream \"u\"\n\
         boolean true\nboolean true\nboolean true\n"
    );
    assert_eq!(
        describe(&nginx, "u"),
        ExpectedPeer::show(&[
            ExpectedPeer::new("127.0.0.1:9000"),
            ExpectedPeer::named("[::1]:9001", "[0::1]:9001").set("weight", 2),
            ExpectedPeer::new("UNIX:/nonexistent/dynup-a.sock").down(true),
            ExpectedPeer::named("127.0.0.1:9002", "127.0.0.1:09002").set("max_conns", 9),
        ])
    );
    let body = nginx.eval(
        r#"
        say(dynamic.remove_peer, "u", "[0:0:0:0:0:0:0:1]:9001")
        say(dynamic.remove_peer, "u", "unix:/nonexistent/dynup-a.sock")
        say(dynamic.remove_peer, "u", "127.0.0.1:9002")
        "#,
    );
    assert_eq!(body, "boolean true\n".repeat(3));
    assert_eq!(describe(&nginx, "u"), ExpectedPeer::show(&[ExpectedPeer::new("127.0.0.1:9000")]));
    nginx.stop();
}
