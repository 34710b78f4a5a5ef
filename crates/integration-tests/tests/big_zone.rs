//! A zone far larger than any README example: 10,000 peers, described completely.

use integration_tests::{lua_server, Config};

const PEERS: usize = 10_000;

#[test]
fn describes_ten_thousand_peers() {
    // Distinct addresses and ports; nothing needs to listen there.
    let names: Vec<String> = (0..PEERS)
        .map(|i| format!("127.1.{}.{}:{}", i / 250, i % 250 + 1, 8000 + i % 100))
        .collect();
    let servers: String = names.iter().map(|name| format!("    server {name};\n")).collect();
    let nginx = Config::new()
        .http(&format!("upstream big {{\n    zone big 16m;\n{servers}}}"))
        .http(&lua_server(
            r#"
            local dynamic = require "ngx.dynamic"
            local peers, err = dynamic.describe_zone("big")
            if not peers then
                ngx.say("error: ", err)
                return
            end
            local names = {}
            for i, peer in ipairs(peers) do
                names[i] = peer.name
            end
            ngx.say(#peers)
            ngx.say(table.concat(names, "\n"))
            "#,
        ))
        .start();
    let body = nginx.get_ok("/t");
    let mut lines = body.lines();
    assert_eq!(lines.next(), Some(PEERS.to_string().as_str()), "peer count");
    let described: Vec<&str> = lines.collect();
    assert_eq!(described.len(), PEERS, "name lines");
    if let Some(i) = (0..PEERS).find(|&i| described[i] != names[i]) {
        panic!(
            "peer {} is {:?}, configured (in this order) as {:?}",
            i + 1,
            described[i],
            names[i]
        );
    }
    nginx.stop();
}
