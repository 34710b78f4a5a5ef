//! `server name:port resolve;` in a zoned upstream (nginx >= 1.27.3): nginx's resolver adds and
//! removes peers at runtime from what a DNS server of the test ([`Dns`]) answers.
//! `describe_zone` shows those peers, proxied requests reach them, and `ngx.dynamic` leaves them
//! to the resolver while it goes on changing the peers of its own.
//!
//! On older nginx, which has no `resolve` in upstream `server`, each test says it was skipped
//! and passes.

use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::{
    eval_server, get, modern, settings, Backend, Config, Dns, ExpectedPeer, Nginx,
};

/// The name the upstream resolves.
const NAME: &str = "backends.test";
/// The TTL of the test's answers; `valid=1s` in the configuration says the same to nginx.
const TTL: u32 = 1;
/// How long nginx gets to pick up changed DNS answers: far more than the 2-3 s it takes with
/// `valid=1s`, but tests share 2 cores with each other.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(15);
/// Poll interval while waiting for nginx's resolver.
const POLL: Duration = Duration::from_millis(50);
/// Proxied requests sent to see which peers they reach.
const REQUESTS: usize = 40;

const IP_2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const IP_3: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const IP_4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// True (after saying so) when the nginx under test is too old for `server ... resolve` in an
/// upstream: the test then returns and passes.
fn skipped(test: &str) -> bool {
    if modern() {
        return false;
    }
    println!(
        "skipped {test}: nginx {} has no `server ... resolve` in a zoned upstream \
         (nginx >= 1.27.3 has)",
        settings().nginx_version
    );
    true
}

/// A test's nginx with upstream `u` (zone `u`): a static peer, then `backends.test:<port>
/// resolve`, asked of the test's DNS server with `valid=1s`; `/eval` on `%%PORT%%`, `u` proxied
/// on `%%PORT_1%%`.
struct Setup {
    dns: Dns,
    nginx: Nginx,
    /// The static peer of the configuration, on 127.0.0.1.
    static_backend: Backend,
    /// Listening on 127.0.0.2, .3 and .4, on one port: what `backends.test` may resolve to.
    named: Vec<Backend>,
}

impl Setup {
    /// Starts DNS (answering `answers` for `backends.test`), the backends and nginx.
    fn start(answers: &[Ipv4Addr]) -> Setup {
        Setup::start_with(answers, "")
    }

    /// [`Setup::start`] with `extra` directives in the upstream.
    fn start_with(answers: &[Ipv4Addr], extra: &str) -> Setup {
        let dns = Dns::start();
        dns.set(NAME, answers, TTL);
        let static_backend = Backend::start();
        let named = Backend::start_sharing_port(&[IP_2, IP_3, IP_4]);
        let nginx = Config::new()
            .http(&format!(
                "upstream u {{
    zone u 1m;
    resolver {dns} valid=1s ipv6=off;
    resolver_timeout 1s;
    server {static_peer};
    server {NAME}:{port} resolve;
    {extra}
}}
server {{
    listen 127.0.0.1:%%PORT_1%%;
    location / {{ proxy_pass http://u; }}
}}",
                dns = dns.addr(),
                static_peer = static_backend.addr(),
                port = named[0].port(),
            ))
            .http(&eval_server())
            .start();
        Setup { dns, nginx, static_backend, named }
    }

    /// The port every address of `backends.test` is proxied to.
    fn port(&self) -> u16 {
        self.named[0].port()
    }

    /// `<ip>:<port>` of the backend on `ip`: the name nginx gives the peer it resolved.
    fn peer(&self, ip: Ipv4Addr) -> String {
        format!("{ip}:{}", self.port())
    }

    fn backend(&self, ip: Ipv4Addr) -> &Backend {
        self.named.iter().find(|b| b.ip() == ip).expect("a backend on that address")
    }

    /// `<name> <server>` of each peer of `u` (with ` backup` for a backup one), sorted: the
    /// resolver's peers come in the order of its answers, which it rotates.
    fn peers(&self) -> Vec<String> {
        let body = self.nginx.eval(
            r#"
            local peers, err = dynamic.describe_zone("u")
            if not peers then
                ngx.say("nil, ", tostring(err))
                return
            end
            for _, peer in ipairs(peers) do
                ngx.say(peer.name, " ", peer.server, peer.backup and " backup" or "")
            end
            "#,
        );
        let mut peers: Vec<String> = body.lines().map(str::to_owned).collect();
        peers.sort();
        peers
    }

    /// What [`Setup::peers`] shows once the resolver has `ips` and the static peers are
    /// `statics` (`127.0.0.1:<port>`).
    fn expected(&self, statics: &[String], ips: &[Ipv4Addr]) -> Vec<String> {
        let resolved = ips.iter().map(|&ip| format!("{} {NAME}:{}", self.peer(ip), self.port()));
        let mut peers: Vec<String> =
            statics.iter().map(|addr| format!("{addr} {addr}")).chain(resolved).collect();
        peers.sort();
        peers
    }

    /// Waits (bounded) until `describe_zone("u")` shows exactly `expected`; returns how long it
    /// took.
    fn wait_for_peers(&self, expected: &[String], what: &str) -> Duration {
        let start = Instant::now();
        loop {
            let peers = self.peers();
            if peers == expected {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < RESOLVE_TIMEOUT,
                "{what}: after {RESOLVE_TIMEOUT:?} ({} DNS queries answered) describe_zone \
                 shows\n{peers:#?}\ninstead of\n{expected:#?}\nerror log:\n{}",
                self.dns.queries(),
                self.nginx.error_log()
            );
            thread::sleep(POLL);
        }
    }

    /// Sends [`REQUESTS`] proxied requests, each of which must succeed, and returns how many
    /// each of `backends` answered.
    fn traffic(&self, backends: &[&Backend]) -> Vec<u64> {
        let before: Vec<u64> = backends.iter().map(|b| b.requests()).collect();
        for i in 0..REQUESTS {
            let response = get(self.nginx.ports()[1], &format!("/?x={i}"));
            assert_eq!(
                response.status,
                200,
                "proxied request {i}: {response:?}\nerror log:\n{}",
                self.nginx.error_log()
            );
        }
        backends.iter().zip(before).map(|(b, before)| b.requests() - before).collect()
    }

    fn stop(self) {
        self.nginx.stop();
    }
}

/// The error of a call refused because `peer` belongs to nginx's resolver.
fn managed_by_resolver(peer: &str) -> String {
    format!(
        "peer \"{peer}\" of upstream \"u\" is managed by nginx's resolver (server ... resolve) \
         and cannot be changed through ngx.dynamic"
    )
}

#[test]
fn resolved_peers_are_described_and_proxied_to() {
    if skipped("resolved_peers_are_described_and_proxied_to") {
        return;
    }
    let setup = Setup::start(&[IP_2, IP_3]);
    let statics = [setup.static_backend.addr()];
    let expected = setup.expected(&statics, &[IP_2, IP_3]);
    setup.wait_for_peers(&expected, "first resolution");
    assert!(setup.dns.queries() >= 1, "nginx asked the test's DNS server");

    // Every field of a resolved peer but its name comes from its `server` line: defaults here.
    let body = setup.nginx.eval(&format!(
        r#"
        for _, peer in ipairs(dynamic.describe_zone("u")) do
            if peer.name == "{peer}" then
                show({{ peer }})
            end
        end
        "#,
        peer = setup.peer(IP_2)
    ));
    let expected_peer = ExpectedPeer::named(&setup.peer(IP_2), &format!("{NAME}:{}", setup.port()));
    assert_eq!(body, ExpectedPeer::show(&[expected_peer]), "describe_zone of a resolved peer");

    let served = setup.traffic(&[
        &setup.static_backend,
        setup.backend(IP_2),
        setup.backend(IP_3),
        setup.backend(IP_4),
    ]);
    for (i, what) in ["the static peer", "127.0.0.2", "127.0.0.3"].iter().enumerate() {
        assert!(served[i] > 0, "{what} got no request: {served:?} (static, .2, .3, .4)");
    }
    assert_eq!(served[3], 0, "127.0.0.4 is not resolved yet: {served:?} (static, .2, .3, .4)");
    setup.stop();
}

/// A change of DNS answers and what follows from it.
struct Step {
    what: &'static str,
    /// What the DNS server answers from now on.
    answers: &'static [Ipv4Addr],
    /// The addresses the resolver's peers then have.
    resolved: &'static [Ipv4Addr],
    /// Which of the static peer, .2, .3 and .4 proxied requests then reach.
    reached: [bool; 4],
}

#[test]
fn changed_answers_add_and_remove_peers() {
    if skipped("changed_answers_add_and_remove_peers") {
        return;
    }
    let setup = Setup::start(&[IP_2, IP_3]);
    let statics = [setup.static_backend.addr()];
    let all =
        [&setup.static_backend, setup.backend(IP_2), setup.backend(IP_3), setup.backend(IP_4)];
    setup.wait_for_peers(&setup.expected(&statics, &[IP_2, IP_3]), "first resolution");

    for step in [
        Step {
            what: "drop .3, add .4",
            answers: &[IP_2, IP_4],
            resolved: &[IP_2, IP_4],
            reached: [true, true, false, true],
        },
        Step {
            what: "no A record (NOERROR, no answer)",
            answers: &[],
            resolved: &[],
            reached: [true, false, false, false],
        },
        Step {
            what: "all three",
            answers: &[IP_4, IP_3, IP_2],
            resolved: &[IP_2, IP_3, IP_4],
            reached: [true, true, true, true],
        },
        Step {
            what: "only .3",
            answers: &[IP_3],
            resolved: &[IP_3],
            reached: [true, false, true, false],
        },
    ] {
        setup.dns.set(NAME, step.answers, TTL);
        let took = setup.wait_for_peers(&setup.expected(&statics, step.resolved), step.what);
        println!("{}: describe_zone showed the new peers after {took:?}", step.what);
        let served = setup.traffic(&all);
        let got: Vec<bool> = served.iter().map(|&n| n > 0).collect();
        assert_eq!(got, step.reached, "{}: requests per static, .2, .3, .4: {served:?}", step.what);
    }

    // An unknown name (NXDOMAIN) leaves the static peer alone.
    setup.dns.remove(NAME);
    setup.wait_for_peers(&setup.expected(&statics, &[]), "NXDOMAIN");
    let served = setup.traffic(&all);
    assert_eq!(served, [REQUESTS as u64, 0, 0, 0], "NXDOMAIN: requests per static, .2, .3, .4");
    setup.stop();
}

#[test]
fn resolver_owned_peers_cannot_be_changed_through_the_api() {
    if skipped("resolver_owned_peers_cannot_be_changed_through_the_api") {
        return;
    }
    let setup = Setup::start(&[IP_2, IP_3]);
    let mut statics = vec![setup.static_backend.addr()];
    setup.wait_for_peers(&setup.expected(&statics, &[IP_2, IP_3]), "first resolution");
    let describe = || setup.nginx.eval(r#"show_result(dynamic.describe_zone("u"))"#);
    let before = describe();

    let peer = setup.peer(IP_2);
    let refused = format!("nil, string {}", managed_by_resolver(&peer));
    // (call, Lua arguments after the upstream and the peer)
    let calls =
        [("set_peer_down", ", true"), ("update_peer", ", { weight = 2 }"), ("remove_peer", "")];
    for (call, args) in calls {
        let body = setup.nginx.eval(&format!(r#"say(dynamic.{call}, "u", "{peer}"{args})"#));
        assert_eq!(body.trim_end(), refused, "{call}(\"u\", \"{peer}\"{args})");
    }
    let body = setup.nginx.eval(&format!(r#"say(dynamic.add_peer, "u", "{peer}")"#));
    assert!(
        body.starts_with("nil, string ") && body.contains("managed by nginx's resolver"),
        "add_peer of a resolved peer's address: {body}"
    );
    assert_eq!(describe(), before, "refused calls changed nothing");

    // A peer of its own: added, and kept when the resolver changes its peers.
    let other = Backend::start();
    let body = setup.nginx.eval(&format!(r#"say(dynamic.add_peer, "u", "{}")"#, other.addr()));
    assert_eq!(body, "boolean true\n", "add_peer of a static peer");
    statics.push(other.addr());
    setup.wait_for_peers(&setup.expected(&statics, &[IP_2, IP_3]), "after add_peer");

    setup.dns.set(NAME, &[IP_2, IP_4], TTL);
    setup.wait_for_peers(&setup.expected(&statics, &[IP_2, IP_4]), "re-resolved after add_peer");
    let served = setup.traffic(&[
        &setup.static_backend,
        &other,
        setup.backend(IP_2),
        setup.backend(IP_3),
        setup.backend(IP_4),
    ]);
    let got: Vec<bool> = served.iter().map(|&n| n > 0).collect();
    assert_eq!(
        got,
        [true, true, true, false, true],
        "requests per static, added, .2, .3, .4: {served:?}"
    );

    // Its own peer stays its own to change.
    let body = setup.nginx.eval(&format!(
        r#"
        say(dynamic.update_peer, "u", "{other}", {{ weight = 2 }})
        say(dynamic.remove_peer, "u", "{other}")
        "#,
        other = other.addr()
    ));
    assert_eq!(body, "boolean true\nboolean true\n", "changing the added peer");
    statics.pop();
    setup.wait_for_peers(&setup.expected(&statics, &[IP_2, IP_4]), "after remove_peer");
    setup.stop();
}

/// A state file keeps the API's peers, never the resolver's, and a reload that reads it keeps
/// the `server ... resolve` line: its peers come back from DNS beside the saved ones.
#[test]
fn a_state_file_keeps_api_peers_and_leaves_resolved_ones_to_dns() {
    if skipped("a_state_file_keeps_api_peers_and_leaves_resolved_ones_to_dns") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("dynup-resolve-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("state dir");
    // The workers (nobody) write the file.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod the state dir");
    let path = dir.join("u.state");
    let mut setup = Setup::start_with(&[IP_2], &format!("dynamic_state_file {};", path.display()));
    let statics = vec![setup.static_backend.addr()];
    setup.wait_for_peers(&setup.expected(&statics, &[IP_2]), "start");

    let extra = Backend::start();
    let added = setup.nginx.eval(&format!("say(dynamic.add_peer, 'u', '{}')", extra.addr()));
    assert_eq!(added, "boolean true\n");
    let saved = std::fs::read_to_string(&path).expect("the state file");
    assert!(saved.contains(&extra.addr()), "{saved}");
    assert!(!saved.contains(&setup.peer(IP_2)), "a resolved peer was saved:\n{saved}");

    setup.nginx.reload();
    let statics = vec![setup.static_backend.addr(), extra.addr()];
    setup.wait_for_peers(&setup.expected(&statics, &[IP_2]), "after the reload");
    let got = setup.traffic(&[&setup.static_backend, &extra, setup.backend(IP_2)]);
    assert!(got.iter().all(|&n| n > 0), "every peer serves after the reload: {got:?}");
    setup.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
