//! `describe_zone(target)`: every peer field against what the configuration says, and what
//! traffic changes in them.

use std::time::{SystemTime, UNIX_EPOCH};

use integration_tests::{free_ports, lua_server, parse_show, Backend, Config, ExpectedPeer};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after the Epoch").as_secs()
}

#[test]
fn every_field_matches_the_configuration() {
    let nginx = Config::new()
        .http(
            "upstream u {
    zone z 64k;
    server 127.0.0.1:8001 weight=5 max_fails=3 fail_timeout=7s max_conns=10;
    server 127.0.0.1:8002 backup;
    server 127.0.0.1:8003 down;
    server 127.0.0.1:8004;
}",
        )
        .http(&lua_server(
            r#"
            local dynamic = require "ngx.dynamic"
            show_result(dynamic.describe_zone(ngx.var.arg_target))
            "#,
        ))
        .start();

    let tuned = ExpectedPeer::new("127.0.0.1:8001")
        .set("weight", 5)
        .set("max_fails", 3)
        .set("fail_timeout", 7)
        .set("max_conns", 10);
    let down = ExpectedPeer::new("127.0.0.1:8003").down(true);
    let backup = ExpectedPeer::new("127.0.0.1:8002").backup();
    // Primary peers in configuration order, then the backup peers.
    let expected = ExpectedPeer::show(&[tuned, down, ExpectedPeer::new("127.0.0.1:8004"), backup]);

    assert_eq!(nginx.get_ok("/t?target=z"), expected, "by zone name");
    assert_eq!(nginx.get_ok("/t?target=u"), expected, "by upstream name");
    nginx.stop();
}

#[test]
fn traffic_shows_in_fails_accessed_and_checked() {
    let backends = Backend::start_many(2);
    let refusing = free_ports(2);
    let nginx = Config::new()
        .http(&format!(
            "upstream live {{
    zone live 64k;
    server {};
    server {};
}}
upstream dead {{
    zone dead 64k;
    server 127.0.0.1:{};
    server 127.0.0.1:{};
}}",
            backends[0].addr(),
            backends[1].addr(),
            refusing[0],
            refusing[1],
        ))
        .http(&lua_server(
            r#"
            local dynamic = require "ngx.dynamic"
            show_result(dynamic.describe_zone(ngx.var.arg_target))
            "#,
        ))
        .http(
            "server {
    listen 127.0.0.1:%%PORT_1%%;
    location /live { proxy_pass http://live; }
    location /dead { proxy_pass http://dead; }
}",
        )
        .start();
    let proxy_port = nginx.ports()[1];

    let before = now();
    for _ in 0..2 {
        assert_eq!(integration_tests::get(proxy_port, "/live").status, 200);
    }
    // Both peers refuse: each is tried once, fails once, and the client gets 502.
    assert_eq!(integration_tests::get(proxy_port, "/dead").status, 502);
    let after = now();
    let recent = |value: &str| {
        let seconds: u64 = value
            .strip_prefix("number ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a whole number: {value:?}"));
        (before.saturating_sub(1)..=after + 1).contains(&seconds)
    };

    let live = parse_show(&nginx.get_ok("/t?target=live"));
    for i in 1..=2 {
        let field = |name: &str| live[&format!("{i}.{name}")].as_str();
        assert!(recent(field("checked")), "live peer {i} chosen just now: {live:?}");
        assert_eq!(field("accessed"), "number 0", "live peer {i} never failed: {live:?}");
        assert_eq!(field("fails"), "number 0", "{live:?}");
        assert_eq!(field("conns"), "number 0", "requests are over: {live:?}");
    }
    assert_eq!(backends.iter().map(Backend::requests).sum::<u64>(), 2);

    let dead = parse_show(&nginx.get_ok("/t?target=dead"));
    for i in 1..=2 {
        let field = |name: &str| dead[&format!("{i}.{name}")].as_str();
        assert_eq!(field("fails"), "number 1", "dead peer {i}: {dead:?}");
        assert!(recent(field("accessed")), "dead peer {i} failed just now: {dead:?}");
        assert!(recent(field("checked")), "dead peer {i}: {dead:?}");
        assert_eq!(field("conns"), "number 0", "{dead:?}");
    }
    nginx.stop();
}
