//! Changes live in the shared zone: one made through either worker is what the other worker
//! sees and proxies by on its very next request, and changes can be made from
//! `init_worker_by_lua*` and `ngx.timer` callbacks too.
//!
//! Every request is a new connection (`Connection: close`) that either worker may accept; the
//! tests tell them apart by the pid each response carries, and retry until the other worker
//! answers (each try has even odds, so a few hundred never all miss).

use std::collections::BTreeSet;

use integration_tests::{eval_server, get, Backend, Config, ExpectedPeer, Response};

/// How many requests may go to the same worker before the test gives up on reaching the other.
const TRIES: usize = 500;

/// Sends `request` until a worker other than `worker` answers. Returns the other worker's
/// answer; every answer from `worker` on the way is checked with `check` too.
fn first_answer_from_the_other_worker<T>(
    worker: i32,
    mut request: impl FnMut() -> (i32, T),
    check: impl Fn(&T),
) -> T {
    for _ in 0..TRIES {
        let (pid, answer) = request();
        check(&answer);
        if pid != worker {
            return answer;
        }
    }
    panic!("{TRIES} requests in a row went to worker {worker}")
}

#[test]
fn a_change_made_through_one_worker_is_described_by_the_other_at_once() {
    let nginx = Config::new()
        .http("upstream u { zone z 64k; server 127.0.0.1:9000; }")
        .http(&eval_server())
        .start();
    let workers = nginx.worker_pids();
    assert_eq!(workers.len(), 2);

    let p0 = ExpectedPeer::new("127.0.0.1:9000");
    let p1 = ExpectedPeer::new("127.0.0.1:9001");
    let p2 = ExpectedPeer::new("[::1]:9002");
    let steps: Vec<(&str, Vec<ExpectedPeer>)> = vec![
        ("dynamic.add_peer('u', '127.0.0.1:9001', { weight = 2 })", vec![p0.clone(), p1.clone().set("weight", 2)]),
        (
            "dynamic.set_peer_down('u', '127.0.0.1:9001')",
            vec![p0.clone(), p1.clone().set("weight", 2).down(true)],
        ),
        (
            "dynamic.update_peer('u', '127.0.0.1:9001', { down = false, weight = 5, max_conns = 3 })",
            vec![p0.clone(), p1.clone().set("weight", 5).set("max_conns", 3)],
        ),
        (
            "dynamic.add_peer('u', '[::1]:9002', { backup = true })",
            vec![p0.clone(), p1.clone().set("weight", 5).set("max_conns", 3), p2.clone().backup()],
        ),
        ("dynamic.remove_peer('u', '127.0.0.1:9001')", vec![p0.clone(), p2.clone().backup()]),
        ("dynamic.update_peer('u', '[::1]:9002', { fail_timeout = 1 })", vec![p0.clone(), p2.set("fail_timeout", 1).backup()]),
        ("dynamic.remove_peer('u', '[::1]:9002')", vec![p0]),
    ];
    let mut changed_by = BTreeSet::new();
    for (call, peers) in steps {
        let change = nginx.eval_on_worker(&format!(
            "local function call() return {call} end\nsay(call)\nstate('u')"
        ));
        let (outcome, state_after) = change.body.split_once('\n').expect("two parts");
        assert_eq!(outcome, "boolean true", "{call}");
        let expected_peers = ExpectedPeer::show(&peers);
        assert!(
            state_after.starts_with(&format!("u peers\n{expected_peers}u usage\n")),
            "{call}:\n{state_after}"
        );
        changed_by.insert(change.worker);

        let seen = first_answer_from_the_other_worker(
            change.worker,
            || {
                let seen = nginx.eval_on_worker("state('u')");
                (seen.worker, seen.body)
            },
            |state| assert_eq!(state, state_after, "after {call}, by worker {}", change.worker),
        );
        assert_eq!(seen, state_after);
    }
    assert!(changed_by.iter().all(|pid| workers.contains(pid)), "{changed_by:?} {workers:?}");
    assert_eq!(nginx.worker_pids(), workers);
    nginx.stop();
}

#[test]
fn a_change_made_through_one_worker_routes_the_other_workers_next_request() {
    let backends = Backend::start_many(2);
    let nginx = Config::new()
        .http(&format!("upstream u {{ zone z 64k; server {}; }}", backends[0].addr()))
        .http(
            "server {
    listen 127.0.0.1:%%PORT_1%%;
    location / {
        proxy_pass http://u;
        add_header X-Worker-Pid $pid;
    }
}",
        )
        .http(&eval_server())
        .start();
    let proxy = nginx.ports()[1];
    let proxied = || {
        let response: Response = get(proxy, "/");
        assert_eq!(response.status, 200, "{response:?}");
        let pid = response.header("x-worker-pid").and_then(|p| p.parse().ok()).expect("a pid");
        (pid, response.body)
    };
    let (b0, b1) = (backends[0].addr(), backends[1].addr());

    for round in 0..3 {
        // Move all traffic to the second backend, through whichever worker answers...
        let change = nginx.eval_on_worker(&format!(
            "say(dynamic.add_peer, 'u', '{b1}')\nsay(dynamic.set_peer_down, 'u', '{b0}')"
        ));
        assert_eq!(change.body, "boolean true\nboolean true\n", "round {round}");
        // ... and the other worker proxies there on its first request.
        let body = first_answer_from_the_other_worker(change.worker, proxied, |body| {
            assert_eq!(body, &backends[1].body(), "round {round}, after the move")
        });
        assert_eq!(body, backends[1].body());

        // And back: the added peer removed, the first one up again.
        let change = nginx.eval_on_worker(&format!(
            "say(dynamic.set_peer_down, 'u', '{b0}', false)\nsay(dynamic.remove_peer, 'u', '{b1}')"
        ));
        assert_eq!(change.body, "boolean true\nboolean true\n", "round {round}");
        let body = first_answer_from_the_other_worker(change.worker, proxied, |body| {
            assert_eq!(body, &backends[0].body(), "round {round}, after the move back")
        });
        assert_eq!(body, backends[0].body());
    }
    nginx.stop();
}

/// Logs `<label> <ok> <err>` for a call made in Lua code outside any request.
const LOG_RESULT: &str = r#"
local function log_result(label, ok, err)
    ngx.log(ngx.NOTICE, label, " <", tostring(ok), " ", tostring(err), ">")
end
"#;

#[test]
fn init_worker_by_lua_can_add_peers_and_only_one_worker_adds_the_same_one() {
    let backend = Backend::start();
    let init_worker = format!(
        r#"
init_worker_by_lua_block {{
    {LOG_RESULT}
    local dynamic = require "ngx.dynamic"
    log_result("init_worker add_peer", dynamic.add_peer("u", "{addr}", {{ weight = 2 }}))
    -- One peer of its own per worker: both must land.
    log_result("init_worker own peer", dynamic.add_peer("u", "127.0.0.1:" .. (9100 + ngx.worker.id()), {{ down = true }}))
}}"#,
        addr = backend.addr()
    );
    let nginx = Config::new()
        .http("upstream u { zone z 64k; server 127.0.0.1:9000 down; }")
        .http(&init_worker)
        .http(
            "server {
    listen 127.0.0.1:%%PORT_1%%;
    location / { proxy_pass http://u; }
}",
        )
        .http(&eval_server())
        .start();
    nginx.wait_for_log("init_worker own peer <", 2);
    nginx.wait_for_log("init_worker add_peer <", 2);
    let log = nginx.error_log();
    let added = log.matches("init_worker add_peer <true nil>").count();
    let exists = format!(
        "init_worker add_peer <nil peer \"{}\" already exists in upstream \"u\">",
        backend.addr()
    );
    assert_eq!(
        (added, log.matches(&exists).count()),
        (1, 1),
        "one adds, the other is told:\n{log}"
    );
    assert_eq!(log.matches("init_worker own peer <true nil>").count(), 2, "{log}");

    // Described once, the same by both workers (the order of the two own peers is a race, so
    // peers are sorted by name: the backend's ephemeral port sorts before 9000).
    let expected = ExpectedPeer::show(&[
        ExpectedPeer::new(&backend.addr()).set("weight", 2),
        ExpectedPeer::new("127.0.0.1:9000").down(true),
        ExpectedPeer::new("127.0.0.1:9100").down(true),
        ExpectedPeer::new("127.0.0.1:9101").down(true),
    ]);
    let mut seen = BTreeSet::new();
    for _ in 0..TRIES {
        let described = nginx.eval_on_worker(
            "local peers = dynamic.describe_zone('u')\n\
             table.sort(peers, function(a, b) return a.name < b.name end)\n\
             show(peers)",
        );
        assert_eq!(described.body, expected);
        seen.insert(described.worker);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "both workers described the zone");

    // The peer added during init_worker takes the traffic.
    for _ in 0..10 {
        assert_eq!(get(nginx.ports()[1], "/").body, backend.body());
    }
    assert_eq!(backend.requests(), 10);
    nginx.stop();
}

#[test]
fn timers_can_change_peers() {
    let nginx = Config::new()
        .http("upstream u { zone z 64k; server 127.0.0.1:9000; }")
        .http(&format!(
            r#"
init_worker_by_lua_block {{
    {LOG_RESULT}
    local dynamic = require "ngx.dynamic"
    local ok, err = ngx.timer.at(0, function(premature)
        local me = "127.0.0.1:" .. (9100 + ngx.worker.id())
        log_result("timer add_peer", dynamic.add_peer("u", me, {{ max_fails = 7 }}))
        log_result("timer update_peer", dynamic.update_peer("u", me, {{ weight = 3 }}))
        log_result("timer set_peer_down", dynamic.set_peer_down("u", me))
        log_result("timer usage", dynamic.zone_usage("u") ~= nil)
    end)
    if not ok then
        ngx.log(ngx.ERR, "cannot start the timer: ", err)
    end
}}"#
        ))
        .http(&eval_server())
        .start();
    for call in ["add_peer", "update_peer", "set_peer_down", "usage"] {
        let log = nginx.wait_for_log(&format!("timer {call} <"), 2);
        assert_eq!(log.matches(&format!("timer {call} <true nil>")).count(), 2, "{log}");
    }
    let own = |id: u32| {
        ExpectedPeer::new(&format!("127.0.0.1:{}", 9100 + id))
            .set("max_fails", 7)
            .set("weight", 3)
            .down(true)
    };
    let body = nginx.eval(
        "local peers = dynamic.describe_zone('u')\n\
         table.sort(peers, function(a, b) return a.name < b.name end)\n\
         show(peers)",
    );
    assert_eq!(body, ExpectedPeer::show(&[ExpectedPeer::new("127.0.0.1:9000"), own(0), own(1)]));

    // A timer started by a request, in whichever worker served it.
    let body = nginx.eval(&format!(
        r#"
        {LOG_RESULT}
        local ok, err = ngx.timer.at(0, function(premature)
            log_result("request timer remove_peer", dynamic.remove_peer("u", "127.0.0.1:9100"))
            log_result("request timer remove_peer", dynamic.remove_peer("u", "127.0.0.1:9100"))
        end)
        say(function() return ok ~= nil, err end)
        "#
    ));
    assert_eq!(body, "boolean true\n");
    let log = nginx.wait_for_log("request timer remove_peer <", 2);
    assert!(log.contains("request timer remove_peer <true nil>"), "{log}");
    assert!(
        log.contains(
            "request timer remove_peer <nil peer \"127.0.0.1:9100\" not found in upstream \"u\">"
        ),
        "{log}"
    );
    let body = nginx.eval(
        "local peers = dynamic.describe_zone('u')\n\
         table.sort(peers, function(a, b) return a.name < b.name end)\n\
         show(peers)",
    );
    assert_eq!(body, ExpectedPeer::show(&[ExpectedPeer::new("127.0.0.1:9000"), own(1)]));
    nginx.stop();
}

/// Both workers change the same upstream at once, many times: every change lands exactly once
/// and the zone ends as it started.
#[test]
fn both_workers_changing_at_once_lose_nothing() {
    let nginx = Config::new()
        .http("upstream u { zone z 256k; server 127.0.0.1:9000; }")
        .http(&eval_server())
        .start();
    let start = nginx.eval("state('u')");
    let snippet = |offset: u32| {
        format!(
            r#"
            local failures = 0
            for i = 1, 300 do
                local server = "127.0.1." .. ({offset} + i % 100) .. ":" .. (10000 + i)
                if not dynamic.add_peer("u", server) then failures = failures + 1 end
                if not dynamic.update_peer("u", server, {{ weight = 2 }}) then failures = failures + 1 end
                if not dynamic.remove_peer("u", server) then failures = failures + 1 end
            end
            ngx.say(failures)
            "#
        )
    };
    let workers: BTreeSet<i32> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (nginx, snippet) = (&nginx, snippet(t * 50));
                s.spawn(move || {
                    (0..5)
                        .map(|_| {
                            let ran = nginx.eval_on_worker(&snippet);
                            assert_eq!(ran.body, "0\n", "every change succeeded");
                            ran.worker
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().expect("a client thread")).collect()
    });
    assert!(!workers.is_empty());
    assert_eq!(nginx.eval("state('u')"), start, "every peer removed, every byte back");
    nginx.stop();
}
