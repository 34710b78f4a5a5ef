//! What the original lua-dynamic-upstream module was measured to get wrong, one test each: every
//! one must pass now. The configuration is the original README's (`upstream foo`, zone
//! `dynamic_foo`, 32k); each test also checks that the refused call changed nothing and that
//! nginx kept its workers.

use integration_tests::{eval_server, Config, ExpectedPeer, Nginx, EVAL_CHUNK};

const FOO: &str = "upstream foo {
    zone dynamic_foo 32k;
    server 127.0.0.1:8030;
    server 127.0.0.1:8031;
}";

fn start() -> Nginx {
    Config::new().http(FOO).http(&eval_server()).start()
}

fn state(nginx: &Nginx) -> String {
    nginx.eval("state('dynamic_foo')")
}

fn configured() -> String {
    ExpectedPeer::show(&[ExpectedPeer::new("127.0.0.1:8030"), ExpectedPeer::new("127.0.0.1:8031")])
}

/// Runs `call` (a Lua expression) and returns its outcome line; asserts that nothing changed
/// and that the workers are the same ones.
fn refused_without_change(nginx: &Nginx, call: &str) -> String {
    let before = state(nginx);
    let workers = nginx.worker_pids();
    let body = nginx
        .eval(&format!("local function call() local v, e = {call}; return v, e end\nsay(call)"));
    assert_eq!(state(nginx), before, "{call} changed the zone");
    assert_eq!(nginx.worker_pids(), workers, "{call}: a worker died");
    body.trim_end().to_owned()
}

/// The message of a Lua error raised at line 1 of the snippet.
fn raised(outcome: &str) -> &str {
    outcome
        .strip_prefix("raised: ")
        .and_then(|m| m.strip_prefix(EVAL_CHUNK))
        .and_then(|m| m.strip_prefix(":1: "))
        .unwrap_or_else(|| panic!("a Lua error at the caller's line expected, got {outcome:?}"))
}

fn describe(nginx: &Nginx) -> String {
    nginx.eval("show_result(dynamic.describe_zone('dynamic_foo'))")
}

#[test]
fn a_host_name_is_refused_with_a_clear_error() {
    let nginx = start();
    for (server, expected) in [
        ("localhost:8080", "host names are not supported: \"localhost:8080\""),
        ("example.com:80", "host names are not supported: \"example.com:80\""),
        ("backend.internal.:8080", "host names are not supported: \"backend.internal.:8080\""),
    ] {
        let outcome =
            refused_without_change(&nginx, &format!("dynamic.add_peer('dynamic_foo', '{server}')"));
        assert_eq!(outcome, format!("nil, string {expected}"));
    }
    assert_eq!(describe(&nginx), configured());
    nginx.stop();
}

#[test]
fn an_ipv6_address_is_added() {
    let nginx = start();
    let body = nginx.eval(
        r#"
        say(dynamic.add_peer, "dynamic_foo", "[::1]:8032")
        say(dynamic.add_peer, "dynamic_foo", "[2001:db8::10]:80", { down = true })
        "#,
    );
    assert_eq!(body, "boolean true\nboolean true\n");
    assert_eq!(
        describe(&nginx),
        ExpectedPeer::show(&[
            ExpectedPeer::new("127.0.0.1:8030"),
            ExpectedPeer::new("127.0.0.1:8031"),
            ExpectedPeer::new("[::1]:8032"),
            ExpectedPeer::new("[2001:db8::10]:80").down(true),
        ])
    );
    let body = nginx.eval(
        r#"
        say(dynamic.remove_peer, "dynamic_foo", "[::1]:8032")
        say(dynamic.remove_peer, "dynamic_foo", "[2001:DB8:0::10]:80")
        "#,
    );
    assert_eq!(body, "boolean true\nboolean true\n");
    assert_eq!(describe(&nginx), configured());
    nginx.stop();
}

#[test]
fn a_number_as_the_server_is_an_argument_error() {
    let nginx = start();
    for call in [
        "dynamic.add_peer('dynamic_foo', 8032)",
        "dynamic.remove_peer('dynamic_foo', 8030)",
        "dynamic.set_peer_down('dynamic_foo', 8030)",
        "dynamic.update_peer('dynamic_foo', 8030, {})",
    ] {
        let outcome = refused_without_change(&nginx, call);
        let f = &call["dynamic.".len()..call.find('(').unwrap()];
        assert_eq!(
            raised(&outcome),
            format!("bad argument #2 to '{f}' (string expected, got number)")
        );
    }
    assert_eq!(describe(&nginx), configured());
    nginx.stop();
}

#[test]
fn wrongly_typed_options_are_argument_errors() {
    let nginx = start();
    for (call, message) in [
        (
            "dynamic.add_peer('dynamic_foo', '127.0.0.1:8032', '5')",
            "bad argument #3 to 'add_peer' (number expected, got string)",
        ),
        (
            "dynamic.add_peer('dynamic_foo', '127.0.0.1:8032', 1, '3')",
            "bad argument #4 to 'add_peer' (number expected, got string)",
        ),
        (
            "dynamic.add_peer('dynamic_foo', '127.0.0.1:8032', 1, 3, '10s')",
            "bad argument #5 to 'add_peer' (number expected, got string)",
        ),
        (
            "dynamic.add_peer('dynamic_foo', '127.0.0.1:8032', { weight = '5' })",
            "bad argument #3 to 'add_peer' (option \"weight\" must be a number, got string)",
        ),
        (
            "dynamic.add_peer('dynamic_foo', '127.0.0.1:8032', { fail_timeout = '10s' })",
            "bad argument #3 to 'add_peer' (option \"fail_timeout\" must be a number, got string)",
        ),
        (
            "dynamic.update_peer('dynamic_foo', '127.0.0.1:8030', { max_fails = {} })",
            "bad argument #3 to 'update_peer' (option \"max_fails\" must be a number, got table)",
        ),
    ] {
        assert_eq!(raised(&refused_without_change(&nginx, call)), message, "{call}");
    }
    assert_eq!(describe(&nginx), configured());
    nginx.stop();
}

#[test]
fn weights_minus_5_and_0_are_refused() {
    let nginx = start();
    let weight = "nil, string weight must be an integer from 1 to 1000000";
    for call in [
        "dynamic.add_peer('dynamic_foo', '127.0.0.1:8032', -5)",
        "dynamic.add_peer('dynamic_foo', '127.0.0.1:8032', 0)",
        "dynamic.add_peer('dynamic_foo', '127.0.0.1:8032', { weight = -5 })",
        "dynamic.add_peer('dynamic_foo', '127.0.0.1:8032', { weight = 0 })",
        "dynamic.update_peer('dynamic_foo', '127.0.0.1:8030', { weight = -5 })",
        "dynamic.update_peer('dynamic_foo', '127.0.0.1:8030', { weight = 0 })",
    ] {
        assert_eq!(refused_without_change(&nginx, call), weight, "{call}");
    }
    assert_eq!(describe(&nginx), configured());
    nginx.stop();
}

#[test]
fn down_given_as_the_string_no_is_an_argument_error_not_down() {
    let nginx = start();
    for (call, message) in [
        (
            "dynamic.add_peer('dynamic_foo', '127.0.0.1:8032', 1, 1, 10, 'no')",
            "bad argument #6 to 'add_peer' (boolean expected, got string)",
        ),
        (
            "dynamic.add_peer('dynamic_foo', '127.0.0.1:8032', { down = 'no' })",
            "bad argument #3 to 'add_peer' (option \"down\" must be a boolean, got string)",
        ),
        (
            "dynamic.set_peer_down('dynamic_foo', '127.0.0.1:8030', 'no')",
            "bad argument #3 to 'set_peer_down' (boolean expected, got string)",
        ),
        (
            "dynamic.update_peer('dynamic_foo', '127.0.0.1:8030', { down = 'no' })",
            "bad argument #3 to 'update_peer' (option \"down\" must be a boolean, got string)",
        ),
    ] {
        assert_eq!(raised(&refused_without_change(&nginx, call)), message, "{call}");
    }
    // Neither added nor taken down.
    assert_eq!(describe(&nginx), configured());
    nginx.stop();
}

#[test]
fn a_malformed_address_is_called_malformed_not_existing() {
    let nginx = start();
    // Each resembles a configured peer (127.0.0.1:8030), which a lax parser would find.
    for (server, reason) in [
        ("127.0.0.1", "a port is required"),
        ("127.0.0.1:8030x", "the port must be an integer from 1 to 65535"),
        ("127.0.0.1:8030:8030", "the port must be an integer from 1 to 65535"),
        ("127.0.0.1.8030", "invalid IPv4 address"),
        ("127.0.0:8030", "invalid IPv4 address"),
        ("0127.0.0.1:8030", "invalid IPv4 address"),
        ("127.0.0.1:", "the port must be an integer from 1 to 65535"),
        (":8030", "no host"),
        ("", "empty"),
    ] {
        let call = format!("dynamic.add_peer('dynamic_foo', '{server}')");
        let outcome = refused_without_change(&nginx, &call);
        assert_eq!(outcome, format!("nil, string invalid server address \"{server}\": {reason}"));
        assert!(!outcome.contains("exist"), "{outcome}");
    }
    assert_eq!(describe(&nginx), configured());
    nginx.stop();
}

#[test]
fn add_and_remove_pairs_do_not_leak_zone_memory() {
    let nginx = start();
    let body = nginx.eval(
        r#"
        local start = dynamic.zone_usage("dynamic_foo")
        for i = 1, 2000 do
            local server = "127.0.0." .. (i % 250 + 2) .. ":" .. (10000 + i)
            local ok, err = dynamic.add_peer("dynamic_foo", server)
            if not ok then
                ngx.say("add ", i, ": ", err)
                return
            end
            ok, err = dynamic.remove_peer("dynamic_foo", server)
            if not ok then
                ngx.say("remove ", i, ": ", err)
                return
            end
        end
        local finish = dynamic.zone_usage("dynamic_foo")
        ngx.say("size ", start.size, " ", finish.size)
        ngx.say("free ", start.free == finish.free and "same" or (start.free .. " -> " .. finish.free))
        "#,
    );
    assert_eq!(body, "size 32768 32768\nfree same\n");
    assert_eq!(describe(&nginx), configured());
    nginx.stop();
}

#[test]
fn calling_from_init_by_lua_does_not_crash_the_master() {
    let init = r#"
init_by_lua_block {
    local dynamic = require "ngx.dynamic"
    local calls = {
        { "add_peer", function() return dynamic.add_peer("dynamic_foo", "127.0.0.1:8032") end },
        { "add_peer", function() return dynamic.add_peer("dynamic_foo", "127.0.0.1:8032", 1, 1, 10, false) end },
        { "remove_peer", function() return dynamic.remove_peer("dynamic_foo", "127.0.0.1:8031") end },
        { "set_peer_down", function() return dynamic.set_peer_down("dynamic_foo", "127.0.0.1:8030") end },
        { "update_peer", function() return dynamic.update_peer("dynamic_foo", "127.0.0.1:8030", { weight = 2 }) end },
        { "zone_usage", function() return dynamic.zone_usage("dynamic_foo") end },
    }
    for _, c in ipairs(calls) do
        local ok, v, err = pcall(c[2])
        ngx.log(ngx.NOTICE, "init ", c[1], " <", tostring(ok), " ", tostring(v), " ", tostring(err), ">")
    end
}"#;
    let nginx = Config::new().http(FOO).http(init).http(&eval_server()).start();
    let log = nginx.error_log();
    for (call, count) in [
        ("add_peer", 2),
        ("remove_peer", 1),
        ("set_peer_down", 1),
        ("update_peer", 1),
        ("zone_usage", 1),
    ] {
        let line = format!(
            "init {call} <true nil {call} is not available in init_by_lua: upstream zones are set up \
             when the workers start (use init_worker_by_lua)>"
        );
        assert_eq!(log.matches(&line).count(), count, "{line}\nnot in the log:\n{log}");
    }
    // The master runs its workers, and the zone is as configured.
    assert_eq!(nginx.worker_pids().len(), 2);
    assert_eq!(describe(&nginx), configured());
    let usage = nginx.eval("say(function() return dynamic.zone_usage('dynamic_foo').size end)");
    assert_eq!(usage, "number 32768\n");
    nginx.stop();
}
