//! The two examples of the original module's README, verbatim but for `listen 80;` (the
//! harness's port instead): they are the compatibility promise to its users.

use integration_tests::Config;

#[test]
fn list_zones_example() {
    let nginx = Config::new()
        .http(
            r#"
upstream foo {
    zone dynamic_foo 32k;

   server 127.0.0.1:8030;
}

upstream bar {
    zone dynamic_bar 32k;

   server 127.0.0.1:8031;
}

server {
    listen 127.0.0.1:%%PORT%%;

    location = /dynamic/list {
        default_type text/plain;
        content_by_lua '
            local dynamic = require "ngx.dynamic"
            local zones, err = dynamic.list_zones()
            if not zones then
                ngx.say("unable to list upstream zone names: " .. err)
            else
                ngx.say("Upstream zone names:")
                for i, z in ipairs(zones) do
                    ngx.say("    ", z)
                end
            end
        ';
    }
}
"#,
        )
        .start();
    assert_eq!(
        nginx.get_ok("/dynamic/list"),
        "Upstream zone names:\n    dynamic_foo\n    dynamic_bar\n"
    );
    nginx.stop();
}

#[test]
fn describe_zone_example() {
    let nginx = Config::new()
        .http(
            r#"
upstream foo {
    zone dynamic_foo 32k;

   server 127.0.0.1:8030;
   server 127.0.0.1:8031;
}

server {
    listen 127.0.0.1:%%PORT%%;

    location = /dynamic/describe {
        default_type text/plain;
        content_by_lua '
            local dynamic = require "ngx.dynamic"
            local zones, err = dynamic.describe_zone("dynamic_foo")
            if not zones then
                ngx.say("unable to describe upstream zone: " .. err)
            else
                for i, zone in ipairs(zones) do
                    ngx.say("Peer")
                    for k, v in pairs(zone) do
                        ngx.say("    ",k, " => ", v)
                    end
                end
            end
        ';
    }
}
"#,
        )
        .start();
    let body = nginx.get_ok("/dynamic/describe");

    // Each "Peer" line opens a peer; its fields follow as "    key => value" in pairs() order.
    let mut peers: Vec<Vec<(String, String)>> = Vec::new();
    for line in body.lines() {
        if line == "Peer" {
            peers.push(Vec::new());
            continue;
        }
        let (key, value) = line
            .strip_prefix("    ")
            .and_then(|field| field.split_once(" => "))
            .unwrap_or_else(|| panic!("unexpected line {line:?} in:\n{body}"));
        let peer = peers.last_mut().unwrap_or_else(|| panic!("field before any Peer:\n{body}"));
        peer.push((key.to_owned(), value.to_owned()));
    }
    let expected = |addr: &str| {
        let mut fields: Vec<(String, String)> = [
            ("name", addr),
            ("server", addr),
            ("weight", "1"),
            ("current_weight", "0"),
            ("effective_weight", "1"),
            ("max_fails", "1"),
            ("fail_timeout", "10"),
            ("fails", "0"),
            ("max_conns", "0"),
            ("conns", "0"),
            ("accessed", "0"),
            ("checked", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        fields.sort();
        fields
    };
    for peer in &mut peers {
        peer.sort();
    }
    assert_eq!(peers, [expected("127.0.0.1:8030"), expected("127.0.0.1:8031")], "{body}");
    nginx.stop();
}
