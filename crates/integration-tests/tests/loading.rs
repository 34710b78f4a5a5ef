//! Loading the module: without the lua modules nginx still runs (the API is unavailable and
//! the log says why), and the `load_module` order does not matter.

use integration_tests::{lua_server, Config, Module};

#[test]
fn without_the_lua_modules_nginx_runs_and_says_why() {
    let nginx = Config::new()
        .modules(&[Module::Dynamic])
        .http(
            "upstream u { zone z 64k; server 127.0.0.1:8001; }
server {
    listen 127.0.0.1:%%PORT%%;
    location / { return 200 \"ok\\n\"; }
}",
        )
        .start();
    assert_eq!(nginx.get_ok("/"), "ok\n");
    let log = nginx.stop();
    let reasons: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("ngx.dynamic") && line.contains("unavailable"))
        .collect();
    assert_eq!(reasons.len(), 1, "one line saying why the API is unavailable:\n{log}");
}

/// The README's list_zones answer with the modules loaded in `order`.
fn list_zones_with(order: &[Module]) {
    let nginx = Config::new()
        .modules(order)
        .http(
            "upstream foo { zone dynamic_foo 32k; server 127.0.0.1:8030; }
upstream bar { zone dynamic_bar 32k; server 127.0.0.1:8031; }",
        )
        .http(&lua_server(
            r#"
            local dynamic = require "ngx.dynamic"
            show_result(dynamic.list_zones())
            show_result(dynamic.describe_zone("dynamic_bar"))
            "#,
        ))
        .start();
    let body = nginx.get_ok("/t");
    assert!(
        body.starts_with("1: string dynamic_foo\n2: string dynamic_bar\n")
            && body.contains("1.name: string 127.0.0.1:8031\n"),
        "with {order:?}:\n{body}"
    );
    nginx.stop();
}

#[test]
fn ours_loaded_first() {
    list_zones_with(&[Module::Dynamic, Module::Ndk, Module::Lua]);
}

#[test]
fn ours_loaded_between_ndk_and_lua() {
    list_zones_with(&[Module::Ndk, Module::Dynamic, Module::Lua]);
}

#[test]
fn ours_loaded_last() {
    list_zones_with(&[Module::Ndk, Module::Lua, Module::Dynamic]);
}
