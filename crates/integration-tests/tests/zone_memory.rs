//! Zone memory: a full zone refuses an add cleanly (`no memory in upstream zone "<zone>"`,
//! nothing half-done), room comes back when peers go, and removed peers' memory returns to the
//! zone, also when a request was still using the peer at the time.

use std::thread;

use integration_tests::{eval_server, get, parse_show, Backend, Config, Nginx};

/// The zone's free bytes, from `zone_usage`.
fn free(nginx: &Nginx, target: &str) -> u64 {
    let usage = parse_show(&nginx.eval(&format!("show(dynamic.zone_usage('{target}'))")));
    usage["free"].strip_prefix("number ").and_then(|n| n.parse().ok()).expect("a number")
}

/// How many more peers fit in `target`'s zone: adds peers until one fails with `no memory`, then
/// removes them all. A finer measure of the zone's room than its free pages.
fn room(nginx: &Nginx, target: &str) -> u64 {
    let body = nginx.eval(&format!(
        r#"
        local n = 0
        while n < 100000 do
            local ok, err = dynamic.add_peer("{target}", "127.0.9." .. (n % 250 + 1) .. ":" .. (30000 + n))
            if not ok then
                if not err:find("^no memory in upstream zone") then
                    ngx.say(err)
                    return
                end
                break
            end
            n = n + 1
        end
        for i = 0, n - 1 do
            local ok, err = dynamic.remove_peer("{target}", "127.0.9." .. (i % 250 + 1) .. ":" .. (30000 + i))
            if not ok then
                ngx.say(err)
                return
            end
        end
        ngx.say(n)
        "#
    ));
    body.trim_end().parse().unwrap_or_else(|_| panic!("{body}"))
}

/// Adds peers `127.0.2.<i>:<port>` (i = 1, 2, ...) until one fails; prints how many were added
/// and the error.
const FILL: &str = r#"
local n = 0
while true do
    local ok, err = dynamic.add_peer("small", "127.0.2." .. (n % 250 + 1) .. ":" .. (20000 + n))
    if not ok then
        ngx.say(n, " ", err)
        return
    end
    n = n + 1
    if n > 100000 then
        ngx.say("never full")
        return
    end
end
"#;

#[test]
fn a_full_zone_refuses_adds_cleanly_and_recovers() {
    let nginx = Config::new()
        .http(
            "upstream small {
    zone small_zone 32k;
    server 127.0.0.1:9000;
    server 127.0.0.1:9001;
}",
        )
        .http(&eval_server())
        .start();
    let workers = nginx.worker_pids();
    let initial = nginx.eval("state('small')");
    let start_free = free(&nginx, "small");

    let filled = nginx.eval(FILL);
    let (added, error) = filled.trim_end().split_once(' ').expect("count and error");
    let added: u32 = added.parse().unwrap_or_else(|_| panic!("{filled}"));
    assert_eq!(error, "no memory in upstream zone \"small_zone\"", "after {added} peers");
    assert!(added >= 5, "a 32k zone holds a few peers: {added}");

    // Full: every kind of add is refused the same way and changes nothing.
    let full = nginx.eval("state('small')");
    let no_memory = "nil, string no memory in upstream zone \"small_zone\"\n";
    for call in [
        "dynamic.add_peer('small', '127.0.3.1:1')",
        "dynamic.add_peer('small_zone', '[2001:db8::1]:80', { weight = 5 })",
        "dynamic.add_peer('small', 'unix:/a/rather/long/path/to/a/socket/of/a/backend/that/will/never/fit.sock')",
        // The backup list does not exist yet: it would need room too.
        "dynamic.add_peer('small', '127.0.3.2:1', { backup = true })",
        "dynamic.add_peer('small', '127.0.3.3:1', 2, 1, 10, false)",
    ] {
        let body = nginx.eval(&format!("local function call() local v, e = {call}; return v, e end\nsay(call)"));
        assert_eq!(body, no_memory, "{call}");
        assert_eq!(nginx.eval("state('small')"), full, "{call} changed the zone");
        assert_eq!(nginx.worker_pids(), workers, "{call}");
    }
    // Changes that need no memory still work on a full zone.
    let body = nginx.eval(
        r#"
        say(dynamic.update_peer, "small", "127.0.0.1:9001", { weight = 3, max_conns = 2 })
        say(dynamic.set_peer_down, "small", "127.0.0.1:9001")
        say(dynamic.set_peer_down, "small", "127.0.0.1:9001", false)
        say(dynamic.update_peer, "small", "127.0.0.1:9001", { weight = 1, max_conns = 0 })
        "#,
    );
    assert_eq!(body, "boolean true\n".repeat(4));
    assert_eq!(nginx.eval("state('small')"), full);

    // Removing peers makes room again.
    let body = nginx.eval(
        r#"
        for n = 0, 4 do
            say(dynamic.remove_peer, "small", "127.0.2." .. (n % 250 + 1) .. ":" .. (20000 + n))
        end
        for n = 0, 4 do
            say(dynamic.add_peer, "small", "127.0.4." .. (n + 1) .. ":30000")
        end
        "#,
    );
    assert_eq!(body, "boolean true\n".repeat(10));

    // Removing all of them gives every byte back.
    let body = nginx.eval(&format!(
        r#"
        for n = 5, {last} do
            say(dynamic.remove_peer, "small", "127.0.2." .. (n % 250 + 1) .. ":" .. (20000 + n))
        end
        for n = 0, 4 do
            say(dynamic.remove_peer, "small", "127.0.4." .. (n + 1) .. ":30000")
        end
        "#,
        last = added - 1
    ));
    assert_eq!(body, "boolean true\n".repeat(added as usize));
    assert_eq!(nginx.eval("state('small')"), initial);
    assert_eq!(free(&nginx, "small"), start_free);

    // And the zone fills up to the same point again.
    assert_eq!(nginx.eval(FILL), filled, "the same number of peers fit the second time");
    assert_eq!(nginx.worker_pids(), workers);
    nginx.stop();
}

/// Adding a peer that already exists is refused as such, whether or not the zone has room for
/// the copy that would never be linked.
#[test]
fn a_full_zone_still_says_already_exists_for_a_duplicate() {
    let nginx = Config::new()
        .http("upstream small { zone small_zone 32k; server 127.0.0.1:9000; }")
        .http(&eval_server())
        .start();
    let filled = nginx.eval(FILL);
    assert!(filled.ends_with(" no memory in upstream zone \"small_zone\"\n"), "{filled}");
    let full = nginx.eval("state('small')");
    let body = nginx.eval(
        r#"
        say(dynamic.add_peer, "small", "127.0.0.1:9000")
        say(dynamic.add_peer, "small", "127.0.2.1:20000")
        "#,
    );
    assert_eq!(nginx.eval("state('small')"), full);
    assert_eq!(
        body,
        "nil, string peer \"127.0.0.1:9000\" already exists in upstream \"small\"\n\
         nil, string peer \"127.0.2.1:20000\" already exists in upstream \"small\"\n"
    );
    nginx.stop();
}

#[test]
fn a_backup_list_that_does_not_fit_leaves_nothing_behind() {
    let nginx = Config::new()
        .http("upstream small { zone small_zone 32k; server 127.0.0.1:9000; }")
        .http(&eval_server())
        .start();
    let start_free = free(&nginx, "small");
    // Fill with backups this time: the first one creates the backup list.
    let body = nginx.eval(
        r#"
        local n = 0
        while true do
            local ok, err = dynamic.add_peer("small", "127.0.2.1:" .. (20000 + n), { backup = true })
            if not ok then
                ngx.say(n, " ", err)
                break
            end
            n = n + 1
        end
        local peers = dynamic.describe_zone("small")
        local backups = 0
        for _, p in ipairs(peers) do
            if p.backup then backups = backups + 1 end
        end
        ngx.say(#peers, " ", backups)
        for i = 0, n - 1 do
            local ok, err = dynamic.remove_peer("small", "127.0.2.1:" .. (20000 + i))
            if not ok then ngx.say(err) end
        end
        ngx.say(#dynamic.describe_zone("small"))
        "#,
    );
    let mut lines = body.lines();
    let first = lines.next().expect("a first line");
    let (added, error) = first.split_once(' ').expect("count and error");
    let added: usize = added.parse().expect("a count");
    assert_eq!(error, "no memory in upstream zone \"small_zone\"");
    assert!(added > 0);
    assert_eq!(lines.next(), Some(format!("{} {added}", added + 1).as_str()));
    assert_eq!(lines.next(), Some("1"), "{body}");
    // The backup list itself stays (it is never freed), so compare after a second round.
    let after_first = free(&nginx, "small");
    assert!(after_first <= start_free);
    let again = nginx.eval(
        r#"
        for i = 1, 300 do
            local server = "127.0.2.2:" .. (20000 + i)
            local ok, err = dynamic.add_peer("small", server, { backup = true })
            if not ok then ngx.say("add ", i, ": ", err) return end
            ok, err = dynamic.remove_peer("small", server)
            if not ok then ngx.say("remove ", i, ": ", err) return end
        end
        ngx.say("done")
        "#,
    );
    assert_eq!(again, "done\n");
    assert_eq!(free(&nginx, "small"), after_first);
    nginx.stop();
}

#[test]
fn two_thousand_add_remove_pairs_of_every_kind_leak_nothing() {
    let nginx = Config::new()
        .http("upstream small { zone small_zone 32k; server 127.0.0.1:9000; server 127.0.0.1:9001 backup; }")
        .http(&eval_server())
        .start();
    let initial = nginx.eval("state('small')");
    let body = nginx.eval(
        r#"
        local kinds = {
            function(i) return "127.0.5." .. (i % 200 + 1) .. ":" .. (10000 + i), {} end,
            function(i) return "[2001:db8::" .. string.format("%x", i) .. "]:443", { weight = 3 } end,
            function(i) return "unix:/run/dynup/backend-" .. i .. ".sock", { down = true } end,
            function(i) return "127.0.6.1:" .. (10000 + i), { backup = true } end,
            function(i) return "127.0.6.2:" .. (10000 + i), { max_conns = i } end,
        }
        for i = 1, 2000 do
            local server, opts = kinds[i % #kinds + 1](i)
            local ok, err = dynamic.add_peer("small", server, opts)
            if not ok then ngx.say("add ", i, " ", server, ": ", err) return end
            ok, err = dynamic.update_peer("small", server, { weight = 2 })
            if not ok then ngx.say("update ", i, " ", server, ": ", err) return end
            ok, err = dynamic.remove_peer("small", server)
            if not ok then ngx.say("remove ", i, " ", server, ": ", err) return end
        end
        ngx.say("2000 pairs")
        "#,
    );
    assert_eq!(body, "2000 pairs\n");
    assert_eq!(nginx.eval("state('small')"), initial);
    nginx.stop();
}

#[test]
fn add_remove_pairs_with_traffic_in_between_leak_nothing() {
    let backends = Backend::start_many(2);
    let nginx = Config::new()
        .http(&format!("upstream small {{ zone small_zone 32k; server {}; }}", backends[0].addr()))
        .http(
            "server {
    listen 127.0.0.1:%%PORT_1%%;
    location / { proxy_pass http://small; }
}",
        )
        .http(&eval_server())
        .start();
    let proxy = nginx.ports()[1];
    let initial_free = free(&nginx, "small");
    let added = backends[1].addr();
    for round in 0..50 {
        assert_eq!(
            nginx.eval(&format!("say(dynamic.add_peer, 'small', '{added}')")),
            "boolean true\n"
        );
        for _ in 0..4 {
            assert_eq!(get(proxy, "/").status, 200);
        }
        assert_eq!(
            nginx.eval(&format!("say(dynamic.remove_peer, 'small', '{added}')")),
            "boolean true\n",
            "round {round}"
        );
    }
    assert_eq!(backends[1].requests(), 100, "the added peer served half of every round");
    assert_eq!(free(&nginx, "small"), initial_free);
    nginx.stop();
}

/// A peer removed while a request is connected to it: the request completes normally, and the
/// peer's memory goes back to the zone once it is over.
#[test]
fn a_peer_removed_during_a_request_is_freed_after_it() {
    let backend = Backend::start();
    let nginx = Config::new()
        .http("lua_shared_dict gate 1m;")
        .http("log_format upstream '$request_uri $upstream_addr $upstream_status';")
        .http(&format!(
            "upstream u {{ zone z 32k; server {}; server 127.0.0.1:%%PORT_2%% down; }}",
            backend.addr()
        ))
        .http(
            "server {
    listen 127.0.0.1:%%PORT_1%%;
    access_log logs/upstream.log upstream;
    location / { proxy_pass http://u; }
}
server {
    listen 127.0.0.1:%%PORT_2%%;
    location / {
        content_by_lua_block {
            -- Held until the test opens the gate (bounded, so nothing hangs for ever).
            for _ = 1, 3000 do
                if ngx.shared.gate:get('open') then
                    break
                end
                ngx.sleep(0.01)
            end
            ngx.say('slow backend')
        }
    }
}",
        )
        .http(&eval_server())
        .start();
    let (proxy, slow) = (nginx.ports()[1], nginx.ports()[2]);
    let slow_peer = format!("127.0.0.1:{slow}");
    let start_free = free(&nginx, "u");
    let start_room = room(&nginx, "u");
    assert!(start_room > 3, "{start_room}");

    for round in 0..5 {
        let close = nginx.eval(&format!(
            "ngx.shared.gate:delete('open')\n\
             say(dynamic.add_peer, 'u', '127.0.0.1:{}', {{ down = true }})\n\
             say(dynamic.set_peer_down, 'u', '{}')\n\
             say(dynamic.set_peer_down, 'u', '{slow_peer}', false)",
            slow + 1000 + round,
            backend.addr()
        ));
        assert_eq!(close, "boolean true\n".repeat(3), "round {round}");
        thread::scope(|s| {
            let request = s.spawn(|| get(proxy, &format!("/?round={round}")));
            // Wait until the request is connected to the slow peer.
            let mut connected = false;
            for _ in 0..3000 {
                let conns = nginx.eval(&format!(
                    "for _, p in ipairs(dynamic.describe_zone('u')) do\n\
                         if p.name == '{slow_peer}' then ngx.say(p.conns) end\n\
                     end"
                ));
                if conns == "1\n" {
                    connected = true;
                    break;
                }
                thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(connected, "the request never reached the slow peer");
            // Removed under the request's feet; the zone forgets it at once.
            let body = nginx.eval(&format!(
                "say(dynamic.remove_peer, 'u', '{slow_peer}')\n\
                 say(dynamic.remove_peer, 'u', '127.0.0.1:{}')\n\
                 say(dynamic.set_peer_down, 'u', '{}', false)\n\
                 ngx.say(#dynamic.describe_zone('u'))\n\
                 ngx.shared.gate:set('open', true)",
                slow + 1000 + round,
                backend.addr()
            ));
            assert_eq!(body, "boolean true\nboolean true\nboolean true\n1\n");
            let response = request.join().expect("the request thread");
            assert_eq!((response.status, response.body.as_str()), (200, "slow backend\n"));
        });
        // Put the slow peer back for the next round, as it was configured.
        assert_eq!(
            nginx.eval(&format!("say(dynamic.add_peer, 'u', '{slow_peer}', {{ down = true }})")),
            "boolean true\n"
        );
    }
    assert_eq!(free(&nginx, "u"), start_free, "every removed peer's memory came back");
    assert_eq!(room(&nginx, "u"), start_room, "as many peers fit as before");
    // The log names the removed peer each request used (nginx logs after releasing the peer).
    let log = std::fs::read_to_string(nginx.prefix().join("logs/upstream.log")).expect("the log");
    for round in 0..5 {
        let line = format!("/?round={round} {slow_peer} 200\n");
        assert!(log.contains(&line), "{line:?} not in:\n{log}");
    }
    // The backend still serves through the upstream.
    assert_eq!(get(proxy, "/").body, backend.body());
    nginx.stop();
}

/// Each list holds at most the number of peers its per-request bookkeeping was sized for at
/// startup (from the zone size): past that, adds to it are refused cleanly, while the other
/// list still takes peers.
#[test]
fn a_list_at_capacity_refuses_adds_cleanly() {
    let nginx = Config::new()
        .http("upstream big { zone big_zone 1m; server 127.0.0.1:9000; }")
        .http(&eval_server())
        .start();
    let workers = nginx.worker_pids();
    let initial = nginx.eval("state('big')");
    let filled = nginx.eval(
        r#"
        local n = 0
        while n < 100000 do
            local ok, err = dynamic.add_peer("big", "127.0.7." .. (n % 250 + 1) .. ":" .. (20000 + n))
            if not ok then
                ngx.say(n, " ", err)
                return
            end
            n = n + 1
        end
        "#,
    );
    let (added, error) = filled.trim_end().split_once(' ').expect("count and error");
    let added: usize = added.parse().expect("a count");
    let capacity = added + 1;
    assert_eq!(capacity % 64, 0, "capacity is a multiple of 64: {capacity}");
    assert_eq!(
        error,
        format!(
            "upstream \"big\" is full: it can hold {capacity} peers (a larger zone gives more room)"
        )
    );
    let full = nginx.eval("state('big')");
    let body = nginx.eval(
        r#"
        say(dynamic.add_peer, "big", "[::1]:1")
        say(dynamic.add_peer, "big", "127.0.8.1:1", 3, 1, 10, true)
        "#,
    );
    let refusal = format!("nil, string {error}\n");
    assert_eq!(body, refusal.repeat(2));
    assert_eq!(nginx.eval("state('big')"), full, "refused adds change nothing");

    // The capacity counts both lists: a backup peer is refused too, and a removal makes room
    // for exactly one peer of either list.
    let body = nginx.eval(
        r#"
        say(dynamic.add_peer, "big", "127.0.8.2:1", { backup = true })
        say(dynamic.remove_peer, "big", "127.0.7.1:20000")
        say(dynamic.add_peer, "big", "127.0.8.2:1", { backup = true })
        say(dynamic.add_peer, "big", "127.0.8.3:1")
        "#,
    );
    assert_eq!(body, format!("{refusal}boolean true\nboolean true\n{refusal}"));

    let body = nginx.eval(&format!(
        r#"
        for n = 1, {last} do
            local ok, err = dynamic.remove_peer("big", "127.0.7." .. (n % 250 + 1) .. ":" .. (20000 + n))
            if not ok then ngx.say(n, " ", err) return end
        end
        say(dynamic.remove_peer, "big", "127.0.8.2:1")
        "#,
        last = added - 1
    ));
    assert_eq!(body, "boolean true\n");
    let after = nginx.eval("state('big')");
    let (peers_before, peers_after) = (
        initial.split("big usage").next().unwrap_or_default(),
        after.split("big usage").next().unwrap_or_default(),
    );
    assert_eq!(peers_after, peers_before);
    assert_eq!(nginx.worker_pids(), workers);
    nginx.stop();
}
