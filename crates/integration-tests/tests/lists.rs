//! `list_zones()` and `list_upstreams()`: zoned upstreams only, in configuration order.

use integration_tests::{lua_server, Config};

const SHOW_LISTS: &str = r#"
    local dynamic = require "ngx.dynamic"
    ngx.say("zones:")
    show_result(dynamic.list_zones())
    ngx.say("upstreams:")
    show_result(dynamic.list_upstreams())
"#;

#[test]
fn zoned_upstreams_in_configuration_order() {
    let nginx = Config::new()
        .http(
            "upstream alpha {
    zone z1 64k;
    server 127.0.0.1:8001;
}
upstream unzoned {
    server 127.0.0.1:8002;
}
upstream gamma {
    zone z2 64k;
    server 127.0.0.1:8003;
}
upstream beta {
    zone z1 64k;
    server 127.0.0.1:8004;
}
server {
    listen 127.0.0.1:%%PORT_1%%;
    # An implicit upstream, which has no zone either.
    location / { proxy_pass http://127.0.0.1:8005; }
}",
        )
        .http(&lua_server(SHOW_LISTS))
        .start();
    assert_eq!(
        nginx.get_ok("/t"),
        "zones:
1: string z1
2: string z2
upstreams:
1.name: string alpha
1.zone: string z1
2.name: string gamma
2.zone: string z2
3.name: string beta
3.zone: string z1
"
    );
    nginx.stop();
}

#[test]
fn empty_tables_without_zones() {
    let nginx = Config::new()
        .http("upstream unzoned { server 127.0.0.1:8001; }")
        .http(&lua_server(SHOW_LISTS))
        .start();
    assert_eq!(nginx.get_ok("/t"), "zones:\n{}\nupstreams:\n{}\n");
    nginx.stop();
}
