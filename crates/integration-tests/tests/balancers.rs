//! Which changes each load balancer takes on the nginx under test, and that the ones it takes
//! steer real traffic: an added peer gets requests, a down or removed one gets none. Refused
//! changes name the balancer and change nothing. On nginx < 1.27.3 consistent hash and random
//! refuse what their per-worker tables cannot see; newer nginx rebuilds those tables when the
//! module moves the configuration counter, so there they take every change (and an added peer
//! must then get hashed or random traffic, which only a rebuilt table gives it).
//!
//! Every balancer runs the same script over an upstream of two backends (B0, B1), with B2 to add
//! and B3 to add as a backup: add, weight, in-place changes and down, remove, backup.

use integration_tests::{eval_server, get, modern, Backend, Config, Nginx};

/// What a balancer must do with each change: `None` if it takes it, else the exact error.
struct Expect {
    add: Option<String>,
    weight: Option<String>,
    remove: Option<String>,
    backup: Option<String>,
    /// Whether requests with different `?x=` keys spread over the peers (not so for ip_hash,
    /// where every loopback client hashes alike).
    spreads: bool,
}

fn refused(call: &str, balancer: &str, reason: &str) -> Option<String> {
    Some(format!("{call} is not supported for upstream \"u\": its balancer ({balancer}) {reason}"))
}

fn no_backup(balancer: &str) -> Option<String> {
    Some(format!(
        "backup peers are not supported for upstream \"u\": its balancer ({balancer}) has no backup list"
    ))
}

fn takes_everything() -> Expect {
    Expect { add: None, weight: None, remove: None, backup: None, spreads: true }
}

struct Run<'a> {
    nginx: &'a Nginx,
    backends: &'a [Backend],
    proxy: u16,
}

impl Run<'_> {
    fn counts(&self) -> Vec<u64> {
        self.backends.iter().map(Backend::requests).collect()
    }

    /// `n` proxied requests with keys `?x=0..n`; every one must succeed. Returns how many each
    /// backend got.
    fn traffic(&self, n: u64) -> Vec<u64> {
        let before = self.counts();
        for i in 0..n {
            let response = get(self.proxy, &format!("/?x={i}"));
            assert_eq!(response.status, 200, "request {i}: {response:?}");
        }
        let got: Vec<u64> = self.counts().iter().zip(&before).map(|(a, b)| a - b).collect();
        assert_eq!(got.iter().sum::<u64>(), n, "every request reached one backend: {got:?}");
        got
    }

    fn addr(&self, i: usize) -> String {
        self.backends[i].addr()
    }

    fn state(&self) -> String {
        self.nginx.eval("state('u')")
    }

    /// Runs `call`; it must succeed, or be refused with `refusal` and change nothing. Returns
    /// whether it succeeded.
    fn change(&self, call: &str, refusal: &Option<String>) -> bool {
        let before = self.state();
        let body = self.nginx.eval(&format!("say(function() return {call} end)"));
        match refusal {
            None => {
                assert_eq!(body, "boolean true\n", "{call}");
                true
            }
            Some(text) => {
                assert_eq!(body, format!("nil, string {text}\n"), "{call}");
                assert_eq!(self.state(), before, "refused {call} changed the zone");
                false
            }
        }
    }
}

fn exercise(directives: &str, location: &str, expect: Expect) {
    let backends = Backend::start_many(4);
    let nginx = Config::new()
        .http(&format!(
            "upstream u {{
    zone z 64k;
    {directives}
    server {};
    server {};
}}
server {{
    listen 127.0.0.1:%%PORT_1%%;
    location / {{
        proxy_pass http://u;
        {location}
    }}
}}",
            backends[0].addr(),
            backends[1].addr()
        ))
        .http(&eval_server())
        .start();
    let run = Run { nginx: &nginx, backends: &backends, proxy: nginx.ports()[1] };
    let workers = nginx.worker_pids();

    let got = run.traffic(60);
    if expect.spreads {
        assert!(got[0] > 0 && got[1] > 0, "both configured peers serve: {got:?}");
    }

    // Add B2.
    let added = run.change(&format!("dynamic.add_peer('u', '{}')", run.addr(2)), &expect.add);
    let got = run.traffic(60);
    if !added {
        assert_eq!(got[2], 0, "B2 was never added: {got:?}");
    } else if expect.spreads {
        assert!(got[2] > 0, "the added peer serves: {got:?}");
    }

    // A new weight for B1.
    run.change(
        &format!("dynamic.update_peer('u', '{}', {{ weight = 2 }})", run.addr(1)),
        &expect.weight,
    );
    run.traffic(30);

    // In-place changes work everywhere; a down peer gets nothing.
    let in_place = [
        format!("dynamic.update_peer('u', '{}', {{ max_fails = 3, fail_timeout = 5, max_conns = 100 }})", run.addr(1)),
        format!("dynamic.set_peer_down('u', '{}')", run.addr(0)),
    ];
    for call in &in_place {
        assert!(run.change(call, &None));
    }
    let got = run.traffic(60);
    assert_eq!(got[0], 0, "B0 is down: {got:?}");
    assert!(run.change(&format!("dynamic.set_peer_down('u', '{}', false)", run.addr(0)), &None));
    let got = run.traffic(60);
    if expect.spreads {
        assert!(got[0] > 0, "B0 is up again: {got:?}");
    }

    // Remove the added peer, or else B1.
    let gone = if added { 2 } else { 1 };
    let removed =
        run.change(&format!("dynamic.remove_peer('u', '{}')", run.addr(gone)), &expect.remove);
    let got = run.traffic(60);
    if removed {
        assert_eq!(got[gone], 0, "B{gone} was removed: {got:?}");
    }

    // A backup peer: it serves when every primary is down.
    let backup = run.change(
        &format!("dynamic.add_peer('u', '{}', {{ backup = true }})", run.addr(3)),
        &expect.backup,
    );
    if backup {
        let mut primaries = vec![0, 1];
        if added {
            primaries.push(2);
        }
        if removed {
            primaries.retain(|&i| i != gone);
        }
        for &i in &primaries {
            assert!(run.change(&format!("dynamic.set_peer_down('u', '{}')", run.addr(i)), &None));
        }
        let got = run.traffic(20);
        assert_eq!(got[3], 20, "only the backup is up: {got:?}");
        for &i in &primaries {
            assert!(
                run.change(&format!("dynamic.set_peer_down('u', '{}', false)", run.addr(i)), &None)
            );
        }
        let got = run.traffic(20);
        assert_eq!(got[3], 0, "primaries up again: {got:?}");
    } else {
        assert_eq!(run.counts()[3], 0);
    }

    assert_eq!(nginx.worker_pids(), workers, "no worker crashed");
    nginx.stop();
}

#[test]
fn round_robin() {
    exercise("", "", takes_everything());
}

#[test]
fn least_conn() {
    exercise("least_conn;", "", takes_everything());
}

#[test]
fn hash() {
    exercise("hash $arg_x;", "", Expect { backup: no_backup("hash"), ..takes_everything() });
}

#[test]
fn ip_hash() {
    exercise(
        "ip_hash;",
        "",
        Expect { backup: no_backup("ip_hash"), spreads: false, ..takes_everything() },
    );
}

#[test]
fn consistent_hash() {
    if modern() {
        let backup = no_backup("hash ... consistent");
        exercise("hash $arg_x consistent;", "", Expect { backup, ..takes_everything() });
        return;
    }
    let add = refused(
        "add_peer",
        "hash ... consistent",
        "hashes its servers once at startup and cannot see new peers on nginx < 1.27.3",
    );
    exercise(
        "hash $arg_x consistent;",
        "",
        Expect {
            add: add.clone(),
            weight: refused(
                "changing the weight",
                "hash ... consistent",
                "ignores weight changes on nginx < 1.27.3",
            ),
            remove: None,
            // The add is refused before its backup option is looked at.
            backup: add,
            spreads: true,
        },
    );
}

#[test]
fn random() {
    if modern() {
        exercise("random;", "", Expect { backup: no_backup("random"), ..takes_everything() });
        return;
    }
    let add = refused(
        "add_peer",
        "random",
        "keeps a per-worker peer table and cannot see new peers on nginx < 1.27.3",
    );
    exercise(
        "random;",
        "",
        Expect {
            add: add.clone(),
            weight: refused(
                "changing the weight",
                "random",
                "keeps per-worker weight ranges and ignores weight changes on nginx < 1.27.3",
            ),
            remove: refused(
                "remove_peer",
                "random",
                "keeps per-worker pointers to its peers on nginx < 1.27.3; mark the peer down instead",
            ),
            backup: add,
            spreads: true,
        },
    );
}

#[test]
fn round_robin_with_keepalive() {
    exercise(
        "keepalive 8;",
        "proxy_http_version 1.1;\n        proxy_set_header Connection \"\";",
        takes_everything(),
    );
}

#[test]
fn least_conn_with_keepalive() {
    exercise(
        "least_conn;\n    keepalive 8;",
        "proxy_http_version 1.1;\n        proxy_set_header Connection \"\";",
        takes_everything(),
    );
}

#[test]
fn consistent_hash_with_keepalive() {
    if !modern() {
        return;
    }
    exercise(
        "hash $arg_x consistent;\n    keepalive 8;",
        "proxy_http_version 1.1;\n        proxy_set_header Connection \"\";",
        Expect { backup: no_backup("hash ... consistent"), ..takes_everything() },
    );
}

#[test]
fn hash_with_keepalive() {
    exercise(
        "hash $arg_x;\n    keepalive 8;",
        "proxy_http_version 1.1;\n        proxy_set_header Connection \"\";",
        Expect { backup: no_backup("hash"), ..takes_everything() },
    );
}

/// balancer_by_lua picks peers itself; here it picks among the zone's peers that are up (by
/// `describe_zone`, in the balancer phase), so in-place changes steer it while changes to the
/// lists and weights are refused.
#[test]
fn balancer_by_lua() {
    let unknown = |call: &str| {
        refused(
            call,
            "balancer_by_lua or a third-party balancer",
            "is unknown to this module, which cannot tell what it keeps; only down/up, max_fails, \
             fail_timeout and max_conns can be changed",
        )
    };
    exercise(
        r#"balancer_by_lua_block {
        local balancer = require "ngx.balancer"
        local dynamic = require "ngx.dynamic"
        local up = {}
        for _, peer in ipairs(assert(dynamic.describe_zone("u"))) do
            if not peer.down and not peer.backup then
                up[#up + 1] = peer
            end
        end
        local peer = up[(tonumber(ngx.var.arg_x) or 0) % #up + 1]
        local host, port = peer.name:match("^(.+):(%d+)$")
        assert(balancer.set_current_peer(host, tonumber(port)))
    }"#,
        "",
        Expect {
            add: unknown("add_peer"),
            weight: unknown("changing the weight"),
            remove: unknown("remove_peer"),
            backup: unknown("add_peer"),
            spreads: true,
        },
    );
}
