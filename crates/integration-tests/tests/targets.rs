//! How `target` names an upstream: a zone name, an upstream name, and the `nil, err` answers
//! for names that cannot be used.

use integration_tests::{lua_server, Config};

/// A `/t?target=...` that prints `describe_zone(target)` with `show_result`.
const DESCRIBE_ARG: &str = r#"
    local dynamic = require "ngx.dynamic"
    show_result(dynamic.describe_zone(ngx.var.arg_target))
"#;

/// The error of a failed call, from its `show_result` output: a single line (no trailing
/// newline in the message) saying `nil, string <err>`.
fn error_of(body: &str) -> &str {
    assert_eq!(body.lines().count(), 1, "one line expected:\n{body}");
    body.trim_end_matches('\n')
        .strip_prefix("nil, string ")
        .unwrap_or_else(|| panic!("expected `nil, err` with a string err, got:\n{body}"))
}

#[test]
fn a_shared_zone_must_be_named_through_its_upstream() {
    let nginx = Config::new()
        .http(
            "upstream alpha {
    zone shared_z 64k;
    server 127.0.0.1:8001;
    server 127.0.0.1:8002;
}
upstream beta {
    zone shared_z 64k;
    server 127.0.0.1:8003;
}",
        )
        .http(&lua_server(DESCRIBE_ARG))
        .start();

    let body = nginx.get_ok("/t?target=shared_z");
    let err = error_of(&body);
    for part in ["\"shared_z\"", "alpha", "beta"] {
        assert!(err.contains(part), "{err:?} should mention {part}");
    }
    assert!(err.find("alpha") < err.find("beta"), "upstreams in config order: {err:?}");

    let names = |target: &str| -> Vec<String> {
        let body = nginx.get_ok(&format!("/t?target={target}"));
        body.lines().filter(|line| line.contains(".name: ")).map(str::to_owned).collect()
    };
    assert_eq!(
        names("alpha"),
        ["1.name: string 127.0.0.1:8001", "2.name: string 127.0.0.1:8002"],
        "alpha's peers only"
    );
    assert_eq!(names("beta"), ["1.name: string 127.0.0.1:8003"], "beta's peers only");
    nginx.stop();
}

#[test]
fn unusable_names_return_nil_and_an_error() {
    let nginx = Config::new()
        .http(
            "upstream plain {
    server 127.0.0.1:8001;
}
upstream zoned {
    zone z 64k;
    server 127.0.0.1:8002;
}",
        )
        .http(&lua_server(DESCRIBE_ARG))
        .start();

    let err = error_of(&nginx.get_ok("/t?target=plain")).to_owned();
    assert!(err.contains("upstream \"plain\"") && err.contains("no zone"), "{err:?}");

    let err = error_of(&nginx.get_ok("/t?target=nonexistent")).to_owned();
    assert!(err.contains("\"nonexistent\""), "{err:?}");

    error_of(&nginx.get_ok("/t?target="));
    nginx.stop();
}
