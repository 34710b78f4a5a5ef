//! Wrong argument types are programming errors: they raise a Lua error (unlike `nil, err`,
//! which reports a runtime condition).

use integration_tests::{lua_server, Config};

#[test]
fn describe_zone_rejects_non_strings() {
    let nginx = Config::new()
        .http("upstream u { zone z 64k; server 127.0.0.1:8001; }")
        .http(&lua_server(
            r#"
            local dynamic = require "ngx.dynamic"
            local cases = {
                { "none", function() return dynamic.describe_zone() end },
                { "nil", function() return dynamic.describe_zone(nil) end },
                { "number", function() return dynamic.describe_zone(42) end },
                { "table", function() return dynamic.describe_zone({}) end },
                { "boolean", function() return dynamic.describe_zone(true) end },
            }
            for _, case in ipairs(cases) do
                local ok, err = pcall(case[2])
                ngx.say(case[1], ": ", ok and "no error" or tostring(err))
            end
            "#,
        ))
        .start();
    let body = nginx.get_ok("/t");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 5, "{body}");
    for line in lines {
        assert!(
            line.contains("bad argument #1") && line.contains("string expected"),
            "a Lua error naming the argument and the expected type: {line}"
        );
    }
    nginx.stop();
}
