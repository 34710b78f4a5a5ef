//! nginx >= 1.27.3 fails a request ("no live upstreams", 502) when the upstream's configuration
//! counter moved between the request's start and its next try. The module moves it only when a
//! request's view of the lists could become unsafe; these tests hold a request between two tries
//! and make each kind of change meanwhile:
//! - changes that need no move (down/up, options, weights of round robin, removing a peer, adding
//!   peers past 64 and 128 within the capacity) leave the held request to finish on its retry;
//! - changes that do need one (any list or weight change of consistent hash and random, whose
//!   per-worker tables must be rebuilt) fail it, as nginx's own resolver does;
//! - `dynamic_config_counter every_change` moves it on every change and fails it too, which is
//!   what the default avoids.
//!
//! A "silent" backend accepts connections and never answers: the held request waits there for
//! `proxy_read_timeout`, then tries the next peer, a healthy one.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use integration_tests::{eval_server, get, modern, Backend, Config, Nginx, Response};

/// A backend that accepts connections, reports each, and never answers (until dropped).
struct Silent {
    addr: String,
    accepted: mpsc::Receiver<TcpStream>,
}

impl Silent {
    fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the silent backend");
        let addr = listener.local_addr().expect("its address").to_string();
        let (tx, accepted) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if tx.send(stream).is_err() {
                    return;
                }
            }
        });
        Silent { addr, accepted }
    }

    /// Waits for nginx to connect, and keeps the connection open without answering.
    fn wait_for_request(&self) -> TcpStream {
        let mut stream = self
            .accepted
            .recv_timeout(Duration::from_secs(10))
            .expect("nginx never connected to the silent backend");
        // Read the request, so that nginx is waiting for the answer.
        stream.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf);
        stream
    }
}

/// An upstream of the balancer given whose first choice is the silent peer (by a far larger
/// weight), the healthy backend behind it, and a spare peer to change.
fn start(balancer: &str, weight: u32, extra: &str, silent: &Silent, healthy: &Backend) -> Nginx {
    Config::new()
        .http(&format!(
            "upstream u {{
    zone u 1m;
    {balancer}
    {extra}
    server {} weight={weight} max_fails=0;
    server {} max_fails=0;
    server 127.0.0.1:9 down;
}}
server {{
    listen 127.0.0.1:%%PORT_1%%;
    location / {{
        proxy_pass http://u;
        proxy_read_timeout 1s;
        proxy_next_upstream error timeout;
    }}
}}",
            silent.addr,
            healthy.addr()
        ))
        .http(&eval_server())
        .start()
}

/// Sends a request, waits until the silent peer holds it, runs `changes` (Lua) meanwhile, and
/// returns the request's answer once it was retried.
fn held_request(nginx: &Nginx, silent: &Silent, changes: &str) -> Response {
    let port = nginx.ports()[1];
    let request = thread::spawn(move || get(port, "/?k=1"));
    let _held = silent.wait_for_request();
    let result = nginx.eval(changes);
    assert_eq!(result, "", "the changes failed: {result}");
    request.join().expect("the request thread")
}

/// Lua that runs each call and prints the error of any that fails.
fn calls(calls: &[String]) -> String {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!("do local ok, err = {c}; if not ok then ngx.say('call {i}: ', err) end end\n")
        })
        .collect()
}

/// Adds `n` peers on 127.0.3.x (never chosen: they are down), crossing 64 and 128 peers.
fn add_many(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("dynamic.add_peer('u', '127.0.3.{i}:80', {{ down = true }})")).collect()
}

fn skip_on_legacy(test: &str) -> bool {
    if !modern() {
        println!("skipped {test}: nginx < 1.27.3 has no configuration counter");
    }
    !modern()
}

#[test]
fn changes_that_need_no_counter_move_leave_a_held_request_alone() {
    if skip_on_legacy("changes_that_need_no_counter_move_leave_a_held_request_alone") {
        return;
    }
    let (silent, healthy) = (Silent::start(), Backend::start());
    let nginx = start("", 1000, "", &silent, &healthy);
    let h = healthy.addr();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("down and up", vec![
            "dynamic.set_peer_down('u', '127.0.0.1:9', false)".into(),
            "dynamic.set_peer_down('u', '127.0.0.1:9', true)".into(),
        ]),
        ("options and weight", vec![format!(
            "dynamic.update_peer('u', '{h}', {{ weight = 3, max_fails = 0, fail_timeout = 5, max_conns = 50 }})"
        )]),
        ("a peer added and removed", vec![
            "dynamic.add_peer('u', '127.0.0.1:10', { down = true, backup = true })".into(),
            "dynamic.remove_peer('u', '127.0.0.1:10')".into(),
            "dynamic.remove_peer('u', '127.0.0.1:9')".into(),
            "dynamic.add_peer('u', '127.0.0.1:9', { down = true })".into(),
        ]),
        ("the list grown past 64 and 128 peers", add_many(140)),
    ];
    for (what, changes) in cases {
        let response = held_request(&nginx, &silent, &calls(&changes));
        assert_eq!(
            (response.status, response.body.as_str()),
            (200, healthy.body().as_str()),
            "{what}: the held request was retried on the healthy peer"
        );
    }
    assert_eq!(nginx.error_log().matches("no live upstreams").count(), 0);
    nginx.stop();
}

#[test]
fn moving_the_counter_on_every_change_fails_a_held_request() {
    if skip_on_legacy("moving_the_counter_on_every_change_fails_a_held_request") {
        return;
    }
    let (silent, healthy) = (Silent::start(), Backend::start());
    let nginx = start("", 1000, "dynamic_config_counter every_change;", &silent, &healthy);
    let response = held_request(
        &nginx,
        &silent,
        &calls(&["dynamic.set_peer_down('u', '127.0.0.1:9', true)".into()]),
    );
    assert_eq!(response.status, 502, "{response:?}");
    assert_eq!(nginx.error_log().matches("no live upstreams").count(), 1);
    nginx.stop();
}

/// Consistent hash and random keep per-worker tables of the peers, rebuilt only when the counter
/// moves: their list and weight changes move it, at the cost of requests held between tries.
#[test]
fn table_balancers_move_the_counter_for_list_and_weight_changes() {
    if skip_on_legacy("table_balancers_move_the_counter_for_list_and_weight_changes") {
        return;
    }
    // The silent peer's weight makes it the first choice: all but 160 of the consistent hash's
    // points, or all but 1 in 100,001 random draws.
    for (balancer, weight) in [("hash $arg_k consistent;", 1000), ("random;", 100_000)] {
        let (silent, healthy) = (Silent::start(), Backend::start());
        let nginx = start(balancer, weight, "", &silent, &healthy);
        let cases = [
            // Down/up moves nothing: the tables hold every peer, down or not.
            ("dynamic.set_peer_down('u', '127.0.0.1:9', false)", 200),
            ("dynamic.add_peer('u', '127.0.0.1:10', { down = true })", 502),
            ("dynamic.update_peer('u', '127.0.0.1:10', { weight = 2 })", 502),
            ("dynamic.remove_peer('u', '127.0.0.1:10')", 502),
        ];
        for (change, status) in cases {
            let response = held_request(&nginx, &silent, &calls(&[change.to_owned()]));
            assert_eq!(response.status, status, "{balancer} {change}: {response:?}");
        }
        assert_eq!(nginx.error_log().matches("no live upstreams").count(), 3, "{balancer}");
        nginx.stop();
    }
}

#[test]
fn dynamic_config_counter_is_checked_at_startup() {
    let (ok, output) = Config::new()
        .http("upstream u { zone u 64k; server 127.0.0.1:9; dynamic_config_counter sometimes; }")
        .check();
    assert!(!ok, "{output}");
    if modern() {
        assert!(
            output.contains(
                "invalid value \"sometimes\" in \"dynamic_config_counter\": use when_needed or \
                 every_change"
            ),
            "{output}"
        );
        let (ok, output) = Config::new()
            .http("upstream u { zone u 64k; server 127.0.0.1:9; dynamic_config_counter every_change; }")
            .check();
        assert!(ok, "{output}");
    } else {
        assert!(
            output.contains("\"dynamic_config_counter\" needs nginx 1.27.3 or newer"),
            "{output}"
        );
    }
}
