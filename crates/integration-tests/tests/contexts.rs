//! Where the API can be called besides request handlers: `init_worker_by_lua*` and
//! `ngx.timer` callbacks work; `init_by_lua*` (master, before the zones exist) gets
//! `nil, err`.

use integration_tests::{lua_server, Config};

const UPSTREAMS: &str = "
upstream foo {
    zone dynamic_foo 64k;
    server 127.0.0.1:8030;
    server 127.0.0.1:8031;
}
upstream bar {
    zone dynamic_bar 64k;
    server 127.0.0.1:8032;
}";

/// Defines `summary(v, err)`: one line for a result, `name,name,...` for a list of zones or
/// peers, or `nil, <err>`; `<` and `>` around it keep it apart from the rest of the log line.
const SUMMARY: &str = r#"
local function summary(v, err)
    if v == nil then
        return "<nil, " .. type(err) .. " " .. tostring(err) .. ">"
    end
    local parts = {}
    for i, x in ipairs(v) do
        parts[i] = type(x) == "table" and x.name or tostring(x)
    end
    return "<" .. table.concat(parts, ",") .. ">"
end
"#;

#[test]
fn init_worker_and_timers_see_the_zones() {
    let init_worker = format!(
        r#"
init_worker_by_lua_block {{
    {SUMMARY}
    local dynamic = require "ngx.dynamic"
    ngx.log(ngx.NOTICE, "init_worker list_zones ", summary(dynamic.list_zones()))
    ngx.log(ngx.NOTICE, "init_worker describe_zone ", summary(dynamic.describe_zone("dynamic_foo")))
    local ok, err = ngx.timer.at(0, function(premature)
        ngx.log(ngx.NOTICE, "timer list_upstreams ", summary(dynamic.list_upstreams()))
        ngx.log(ngx.NOTICE, "timer describe_zone ", summary(dynamic.describe_zone("bar")))
    end)
    if not ok then
        ngx.log(ngx.ERR, "cannot start the timer: ", err)
    end
}}"#
    );
    let nginx = Config::new()
        .http(UPSTREAMS)
        .http(&init_worker)
        .http(&lua_server("ngx.say(\"up\")"))
        .start();
    // Once per worker.
    for line in [
        "init_worker list_zones <dynamic_foo,dynamic_bar>",
        "init_worker describe_zone <127.0.0.1:8030,127.0.0.1:8031>",
        "timer list_upstreams <foo,bar>",
        "timer describe_zone <127.0.0.1:8032>",
    ] {
        nginx.wait_for_log(line, 2);
    }
    nginx.stop();
}

#[test]
fn init_by_lua_gets_nil_and_an_error() {
    let init = format!(
        r#"
init_by_lua_block {{
    {SUMMARY}
    local dynamic = require "ngx.dynamic"
    ngx.log(ngx.NOTICE, "init describe_zone ", summary(dynamic.describe_zone("dynamic_foo")))
    ngx.log(ngx.NOTICE, "init list_zones ", summary(dynamic.list_zones()))
    ngx.log(ngx.NOTICE, "init list_upstreams ", summary(dynamic.list_upstreams()))
}}"#
    );
    let nginx = Config::new()
        .http(UPSTREAMS)
        .http(&init)
        .http(&lua_server(
            r#"
            local dynamic = require "ngx.dynamic"
            show_result(dynamic.list_zones())
            "#,
        ))
        .start();
    let log = nginx.error_log();
    for call in ["describe_zone", "list_zones", "list_upstreams"] {
        let marker = format!("init {call} <");
        let line = log
            .lines()
            .find(|line| line.contains(&marker))
            .unwrap_or_else(|| panic!("no {marker:?} in the error log:\n{log}"));
        let result = &line[line.find(&marker).expect("found above") + marker.len()..];
        let result = &result[..result.find('>').unwrap_or_else(|| panic!("unclosed: {line}"))];
        let err = result
            .strip_prefix("nil, string ")
            .unwrap_or_else(|| panic!("{call} in init_by_lua: `nil, err` expected: {line}"));
        assert!(err.contains("init_by_lua"), "{call}: the error should say why: {line}");
    }
    // And nginx runs normally.
    assert_eq!(nginx.get_ok("/t"), "1: string dynamic_foo\n2: string dynamic_bar\n");
    nginx.stop();
}
