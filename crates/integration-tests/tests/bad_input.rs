//! Bad input to the write API, table-driven: every case is one call in its own request, and for
//! every case the test checks the exact answer (the `nil, err` text, or the shape of the Lua
//! argument error), that nginx is alive with the same workers (nothing crashed), and that
//! nothing changed (every zone described and measured identically before and after).

use integration_tests::{eval_server, modern, Config, Nginx, EVAL_CHUNK};

/// Upstreams covering every kind of target: one to add to (`u`, with a runtime-added peer and a
/// backup), one with a single primary, one without zone, two sharing a zone, and the balancers
/// that refuse some changes.
const UPSTREAMS: &str = "
upstream u {
    zone z 64k;
    server 127.0.0.1:9000;
    server 127.0.0.1:9001 weight=2;
}
upstream one {
    zone one 64k;
    server 127.0.0.1:9100;
    server 127.0.0.1:9101 backup;
}
upstream plain {
    server 127.0.0.1:9200;
}
upstream a {
    zone shared 64k;
    server 127.0.0.1:9300;
}
upstream b {
    zone shared 64k;
    server 127.0.0.1:9301;
}
upstream r {
    zone r 64k;
    random;
    server 127.0.0.1:9400;
    server 127.0.0.1:9401;
}
upstream ch {
    zone ch 64k;
    hash $arg_x consistent;
    server 127.0.0.1:9500;
    server 127.0.0.1:9501;
}
upstream ip {
    zone ip 64k;
    ip_hash;
    server 127.0.0.1:9600;
    server 127.0.0.1:9601;
}
upstream h {
    zone h 64k;
    hash $arg_x;
    server 127.0.0.1:9700;
    server 127.0.0.1:9701;
}
";

/// Every managed upstream, for `state()`: its peers and its zone's usage.
const STATE: &str = "state('u', 'one', 'a', 'b', 'r', 'ch', 'ip', 'h')";

/// A peer that is nowhere: valid, but never added.
const NEW: &str = "127.0.0.1:9999";

/// What a call must answer.
enum Expect {
    /// `nil, err` with exactly this text.
    Err(String),
    /// A Lua error raised at the caller's line, with exactly this message after
    /// `eval:<line>: `.
    Raise(String),
}

struct Case {
    /// A Lua expression: one call of the API.
    call: String,
    expect: Expect,
}

fn err(call: &str, text: &str) -> Case {
    Case { call: call.to_owned(), expect: Expect::Err(text.to_owned()) }
}

fn raise(call: &str, text: &str) -> Case {
    Case { call: call.to_owned(), expect: Expect::Raise(text.to_owned()) }
}

/// `bad argument #<n> to '<f>' (<what>)`.
fn bad_arg(call: &str, n: u32, f: &str, what: &str) -> Case {
    raise(call, &format!("bad argument #{n} to '{f}' ({what})"))
}

fn invalid(server: &str, reason: &str) -> String {
    format!("invalid server address \"{server}\": {reason}")
}

const PORT_RANGE: &str = "the port must be an integer from 1 to 65535";
const WEIGHT: &str = "weight must be an integer from 1 to 1000000";
const MAX_FAILS: &str = "max_fails must be an integer from 0 to 1000000";
const FAIL_TIMEOUT: &str = "fail_timeout must be an integer from 0 to 31536000";
const MAX_CONNS: &str = "max_conns must be an integer from 0 to 1000000";

/// Wrong argument types: a Lua error naming the argument, for every argument of every call.
fn type_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let values = [
        ("nil", "nil"),
        ("42", "number"),
        ("{}", "table"),
        ("true", "boolean"),
        ("print", "function"),
    ];
    for (value, type_name) in values {
        let got = format!("string expected, got {type_name}");
        cases.push(bad_arg(&format!("dynamic.add_peer({value}, '{NEW}')"), 1, "add_peer", &got));
        cases.push(bad_arg(&format!("dynamic.add_peer('u', {value})"), 2, "add_peer", &got));
        cases.push(bad_arg(
            &format!("dynamic.remove_peer({value}, '{NEW}')"),
            1,
            "remove_peer",
            &got,
        ));
        cases.push(bad_arg(&format!("dynamic.remove_peer('u', {value})"), 2, "remove_peer", &got));
        cases.push(bad_arg(
            &format!("dynamic.set_peer_down({value}, '127.0.0.1:9000')"),
            1,
            "set_peer_down",
            &got,
        ));
        cases.push(bad_arg(
            &format!("dynamic.set_peer_down('u', {value})"),
            2,
            "set_peer_down",
            &got,
        ));
        cases.push(bad_arg(
            &format!("dynamic.update_peer({value}, '127.0.0.1:9000', {{}})"),
            1,
            "update_peer",
            &got,
        ));
        cases.push(bad_arg(
            &format!("dynamic.update_peer('u', {value}, {{}})"),
            2,
            "update_peer",
            &got,
        ));
        cases.push(bad_arg(&format!("dynamic.zone_usage({value})"), 1, "zone_usage", &got));
    }
    // The third argument of set_peer_down is a boolean or nothing: not a truthy anything.
    for (value, type_name) in
        [("'no'", "string"), ("0", "number"), ("{}", "table"), ("print", "function")]
    {
        cases.push(bad_arg(
            &format!("dynamic.set_peer_down('u', '127.0.0.1:9000', {value})"),
            3,
            "set_peer_down",
            &format!("boolean expected, got {type_name}"),
        ));
    }
    // update_peer's options are a table.
    for (value, type_name) in
        [("nil", "nil"), ("5", "number"), ("'down'", "string"), ("true", "boolean")]
    {
        cases.push(bad_arg(
            &format!("dynamic.update_peer('u', '127.0.0.1:9000', {value})"),
            3,
            "update_peer",
            &format!("table expected, got {type_name}"),
        ));
    }
    // Options of the wrong type, by name.
    let options = [
        ("weight = '5'", "weight", "number", "string"),
        ("max_fails = true", "max_fails", "number", "boolean"),
        ("fail_timeout = {}", "fail_timeout", "number", "table"),
        ("max_conns = '1'", "max_conns", "number", "string"),
        ("down = 'no'", "down", "boolean", "string"),
        ("down = 0", "down", "boolean", "number"),
        ("backup = 1", "backup", "boolean", "number"),
    ];
    for (option, name, want, got) in options {
        let what = format!("option \"{name}\" must be a {want}, got {got}");
        cases.push(bad_arg(
            &format!("dynamic.add_peer('u', '{NEW}', {{ {option} }})"),
            3,
            "add_peer",
            &what,
        ));
        if name != "backup" {
            cases.push(bad_arg(
                &format!("dynamic.update_peer('u', '127.0.0.1:9000', {{ {option} }})"),
                3,
                "update_peer",
                &what,
            ));
        }
    }
    // The positional form checks each argument for its own type.
    let positional = [
        ("'5'", 3, "number expected, got string"),
        ("true", 3, "number expected, got boolean"),
        ("print", 3, "number expected, got function"),
        ("1, '1'", 4, "number expected, got string"),
        ("1, 1, '10'", 5, "number expected, got string"),
        ("1, 1, 10, 'no'", 6, "boolean expected, got string"),
        ("nil, nil, nil, 1", 6, "boolean expected, got number"),
    ];
    for (args, n, what) in positional {
        cases.push(bad_arg(
            &format!("dynamic.add_peer('u', '{NEW}', {args})"),
            n,
            "add_peer",
            what,
        ));
    }
    cases
}

/// Servers that are not `IP:port`, `[IPv6]:port` or `unix:/path`.
fn address_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let addresses: [(&str, String); 27] = [
        ("", invalid("", "empty")),
        ("127.0.0.1:0", invalid("127.0.0.1:0", PORT_RANGE)),
        ("127.0.0.1:65536", invalid("127.0.0.1:65536", PORT_RANGE)),
        ("127.0.0.1:-1", invalid("127.0.0.1:-1", PORT_RANGE)),
        ("127.0.0.1:abc", invalid("127.0.0.1:abc", PORT_RANGE)),
        ("127.0.0.1:", invalid("127.0.0.1:", PORT_RANGE)),
        ("127.0.0.1", invalid("127.0.0.1", "a port is required")),
        ("127.0.0.1:99999999999999999999", invalid("127.0.0.1:99999999999999999999", PORT_RANGE)),
        ("example.com:80", "host names are not supported: \"example.com:80\"".into()),
        ("localhost:9000", "host names are not supported: \"localhost:9000\"".into()),
        ("example.com", "host names are not supported: \"example.com\"".into()),
        ("::1", invalid("::1", "an IPv6 address must be enclosed in brackets")),
        ("::1:9000", invalid("::1:9000", "an IPv6 address must be enclosed in brackets")),
        (
            "2001:db8::1:80",
            invalid("2001:db8::1:80", "an IPv6 address must be enclosed in brackets"),
        ),
        ("[::1]", invalid("[::1]", "a port is required")),
        ("[::1]:0", invalid("[::1]:0", PORT_RANGE)),
        ("[::1:80", invalid("[::1:80", "missing \"]\"")),
        ("[fe80::1%eth0]:80", invalid("[fe80::1%eth0]:80", "IPv6 zone ids are not supported")),
        ("fe80::1%eth0", invalid("fe80::1%eth0", "an IPv6 address must be enclosed in brackets")),
        ("256.0.0.1:80", invalid("256.0.0.1:80", "invalid IPv4 address")),
        ("1.2.3:80", invalid("1.2.3:80", "invalid IPv4 address")),
        ("!!!", invalid("!!!", "invalid host")),
        ("*:80", invalid("*:80", "invalid host")),
        ("http://127.0.0.1:80", invalid("http://127.0.0.1:80", "a URL scheme is not allowed")),
        (
            "127.0.0.1:9000 ",
            invalid("127.0.0.1:9000\\x20", "contains whitespace or a control character"),
        ),
        ("unix:", invalid("unix:", "no path in the unix domain socket")),
        (
            "unix:relative.sock",
            invalid("unix:relative.sock", "the unix domain socket path must be absolute"),
        ),
    ];
    for (server, text) in &addresses {
        // Lua's %q-free quoting: these hold no quote or backslash.
        cases.push(err(&format!("dynamic.add_peer('u', '{server}')"), text));
    }
    // The same checks in every call that names a peer, and before the target is looked at.
    cases.push(err(
        "dynamic.remove_peer('u', 'example.com:80')",
        "host names are not supported: \"example.com:80\"",
    ));
    cases.push(err(
        "dynamic.set_peer_down('u', '::1')",
        &invalid("::1", "an IPv6 address must be enclosed in brackets"),
    ));
    cases.push(err(
        "dynamic.update_peer('u', '127.0.0.1:0', {})",
        &invalid("127.0.0.1:0", PORT_RANGE),
    ));
    cases.push(err(
        "dynamic.add_peer('nope', 'example.com:80')",
        "host names are not supported: \"example.com:80\"",
    ));
    // Binary garbage is echoed escaped.
    cases.push(err(
        "dynamic.add_peer('u', '127.0.0.1:9000\\0')",
        &invalid("127.0.0.1:9000\\x00", "contains whitespace or a control character"),
    ));
    cases.push(err(
        "dynamic.add_peer('u', 'unix:/tmp/\\255')",
        &invalid("unix:/tmp/\\xff", "not valid UTF-8"),
    ));
    // Huge strings: refused at once, echoed short.
    cases.push(err(
        "dynamic.add_peer('u', string.rep('1', 1048576))",
        &format!("invalid server address \"{}...\": too long", "1".repeat(128)),
    ));
    cases.push(err(
        "dynamic.add_peer(string.rep('x', 1048576), '127.0.0.1:9999')",
        &format!("no upstream zone \"{}...\"", "x".repeat(128)),
    ));
    cases.push(err(
        "dynamic.remove_peer('u', string.rep('a', 1048576) .. ':80')",
        &format!("invalid server address \"{}...\": too long", "a".repeat(128)),
    ));
    cases
}

/// Calls with valid arguments that cannot be carried out.
fn refusal_cases() -> Vec<Case> {
    let exists = |peer: &str, upstream: &str| {
        format!("peer \"{peer}\" already exists in upstream \"{upstream}\"")
    };
    let not_found = |peer: &str, upstream: &str| {
        format!("peer \"{peer}\" not found in upstream \"{upstream}\"")
    };
    let refused = |call: &str, upstream: &str, balancer: &str, reason: &str| {
        format!("{call} is not supported for upstream \"{upstream}\": its balancer ({balancer}) {reason}")
    };
    let shared = "zone \"shared\" is shared by upstreams a, b: name the upstream";
    let random_add = refused(
        "add_peer",
        "r",
        "random",
        "keeps a per-worker peer table and cannot see new peers on nginx < 1.27.3",
    );
    let random_remove = refused(
        "remove_peer",
        "r",
        "random",
        "keeps per-worker pointers to its peers on nginx < 1.27.3; mark the peer down instead",
    );
    let random_weight = refused(
        "changing the weight",
        "r",
        "random",
        "keeps per-worker weight ranges and ignores weight changes on nginx < 1.27.3",
    );
    let chash_add = refused(
        "add_peer",
        "ch",
        "hash ... consistent",
        "hashes its servers once at startup and cannot see new peers on nginx < 1.27.3",
    );
    let chash_weight = refused(
        "changing the weight",
        "ch",
        "hash ... consistent",
        "ignores weight changes on nginx < 1.27.3",
    );
    // Balancers that cannot take a change on this nginx: on nginx >= 1.27.3 consistent hash and
    // random take every change but backup peers.
    let balancer_cases = if modern() {
        vec![
            err(
                &format!("dynamic.add_peer('r', '{NEW}', {{ backup = true }})"),
                "backup peers are not supported for upstream \"r\": its balancer (random) has no backup list",
            ),
            err(
                &format!("dynamic.add_peer('ch', '{NEW}', {{ backup = true }})"),
                "backup peers are not supported for upstream \"ch\": its balancer (hash ... consistent) has no backup list",
            ),
        ]
    } else {
        vec![
            err(&format!("dynamic.add_peer('r', '{NEW}')"), &random_add),
            err("dynamic.remove_peer('r', '127.0.0.1:9401')", &random_remove),
            err("dynamic.update_peer('r', '127.0.0.1:9401', { weight = 2 })", &random_weight),
            err(&format!("dynamic.add_peer('ch', '{NEW}')"), &chash_add),
            err("dynamic.update_peer('ch', '127.0.0.1:9501', { weight = 2 })", &chash_weight),
            err(&format!("dynamic.add_peer('ch', '{NEW}', 3)"), &chash_add),
        ]
    };
    let mut cases = vec![
        // Duplicates: configured, added at runtime, backup, other spellings.
        err("dynamic.add_peer('u', '127.0.0.1:9000')", &exists("127.0.0.1:9000", "u")),
        err("dynamic.add_peer('u', '127.0.0.1:9002', { weight = 9 })", &exists("127.0.0.1:9002", "u")),
        err("dynamic.add_peer('z', '127.0.0.1:09002')", &exists("127.0.0.1:9002", "u")),
        err("dynamic.add_peer('u', '127.0.0.1:9003', { backup = true })", &exists("127.0.0.1:9003", "u")),
        err("dynamic.add_peer('u', '127.0.0.1:9003')", &exists("127.0.0.1:9003", "u")),
        err("dynamic.add_peer('u', '[0::1]:9004')", &exists("[::1]:9004", "u")),
        err("dynamic.add_peer('u', '127.0.0.1:9000', 1, 1, 10, false)", &exists("127.0.0.1:9000", "u")),
        // Unknown peers, including the address of a peer of another upstream.
        err(&format!("dynamic.remove_peer('u', '{NEW}')"), &not_found(NEW, "u")),
        err(&format!("dynamic.set_peer_down('u', '{NEW}')"), &not_found(NEW, "u")),
        err(&format!("dynamic.set_peer_down('u', '{NEW}', false)"), &not_found(NEW, "u")),
        err(&format!("dynamic.update_peer('u', '{NEW}', {{ weight = 2 }})"), &not_found(NEW, "u")),
        err("dynamic.remove_peer('u', '127.0.0.1:9100')", &not_found("127.0.0.1:9100", "u")),
        err("dynamic.remove_peer('u', '[::1]:9000')", &not_found("[::1]:9000", "u")),
        // Targets.
        err(&format!("dynamic.add_peer('nope', '{NEW}')"), "no upstream zone \"nope\""),
        err(&format!("dynamic.add_peer('', '{NEW}')"), "no upstream zone \"\""),
        err(&format!("dynamic.remove_peer('nope', '{NEW}')"), "no upstream zone \"nope\""),
        err("dynamic.zone_usage('nope')", "no upstream zone \"nope\""),
        err(&format!("dynamic.add_peer('plain', '{NEW}')"), "upstream \"plain\" has no zone"),
        err("dynamic.set_peer_down('plain', '127.0.0.1:9200')", "upstream \"plain\" has no zone"),
        err("dynamic.zone_usage('plain')", "upstream \"plain\" has no zone"),
        err(&format!("dynamic.add_peer('shared', '{NEW}')"), shared),
        err("dynamic.remove_peer('shared', '127.0.0.1:9300')", shared),
        err("dynamic.update_peer('shared', '127.0.0.1:9300', { down = true })", shared),
        err("dynamic.zone_usage('shared')", shared),
        // The last primary peer.
        err(
            "dynamic.remove_peer('one', '127.0.0.1:9100')",
            "cannot remove the last primary peer of upstream \"one\" (mark it down instead)",
        ),
        // Options out of range: table form, positional form, update_peer.
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ weight = 0 }})"), WEIGHT),
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ weight = -5 }})"), WEIGHT),
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ weight = 1.5 }})"), WEIGHT),
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ weight = 1e12 }})"), WEIGHT),
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ weight = 0/0 }})"), WEIGHT),
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ weight = math.huge }})"), WEIGHT),
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ weight = -math.huge }})"), WEIGHT),
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ weight = 1000001 }})"), WEIGHT),
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ max_fails = -1 }})"), MAX_FAILS),
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ max_fails = 0.5 }})"), MAX_FAILS),
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ fail_timeout = -1 }})"), FAIL_TIMEOUT),
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ fail_timeout = 31536001 }})"), FAIL_TIMEOUT),
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ max_conns = -1 }})"), MAX_CONNS),
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ max_conns = 0/0 }})"), MAX_CONNS),
        err(&format!("dynamic.add_peer('u', '{NEW}', 0)"), WEIGHT),
        err(&format!("dynamic.add_peer('u', '{NEW}', -5)"), WEIGHT),
        err(&format!("dynamic.add_peer('u', '{NEW}', 1, -1)"), MAX_FAILS),
        err(&format!("dynamic.add_peer('u', '{NEW}', 1, 1, -1)"), FAIL_TIMEOUT),
        err("dynamic.update_peer('u', '127.0.0.1:9000', { weight = 0 })", WEIGHT),
        err("dynamic.update_peer('u', '127.0.0.1:9000', { weight = -5 })", WEIGHT),
        err("dynamic.update_peer('u', '127.0.0.1:9000', { weight = 0/0 })", WEIGHT),
        err("dynamic.update_peer('u', '127.0.0.1:9000', { max_fails = -1 })", MAX_FAILS),
        err("dynamic.update_peer('u', '127.0.0.1:9000', { fail_timeout = -1 })", FAIL_TIMEOUT),
        err("dynamic.update_peer('u', '127.0.0.1:9000', { max_conns = -1, down = true })", MAX_CONNS),
        // An invalid option stops the call even with a valid change beside it.
        err("dynamic.update_peer('u', '127.0.0.1:9000', { down = true, weight = 1.5 })", WEIGHT),
        // Unknown options.
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ wieght = 2 }})"), "unknown option \"wieght\""),
        err(&format!("dynamic.add_peer('u', '{NEW}', {{ 5 }})"), "unknown option \"1\""),
        err("dynamic.update_peer('u', '127.0.0.1:9000', { backup = true })", "unknown option \"backup\""),
        err("dynamic.update_peer('u', '127.0.0.1:9000', { server = 'x' })", "unknown option \"server\""),
        err(
            &format!("dynamic.add_peer('ip', '{NEW}', {{ backup = true }})"),
            "backup peers are not supported for upstream \"ip\": its balancer (ip_hash) has no backup list",
        ),
        err(
            &format!("dynamic.add_peer('h', '{NEW}', {{ backup = true }})"),
            "backup peers are not supported for upstream \"h\": its balancer (hash) has no backup list",
        ),
    ];
    cases.extend(balancer_cases);
    cases
}

/// The lines of `after` that differ from `before`, each with the heading (`<target> peers` or
/// `<target> usage`) it is under.
fn diff(before: &str, after: &str) -> String {
    let (old, new): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    if old.len() != new.len() {
        return format!("\n{after}");
    }
    let mut out = String::new();
    let mut heading = "";
    for (o, n) in old.iter().zip(&new) {
        if !o.contains(": ") {
            heading = o;
        }
        if o != n {
            out.push_str(&format!("\n      {heading}: {o} -> {n}"));
        }
    }
    out
}

/// Runs one case on a nginx whose zones are in `state`; returns a description of what went
/// wrong, if anything, and the zones' state after it (compared with the one before, so that one
/// failure does not make every later case fail too).
fn run(nginx: &Nginx, case: &Case, state: &mut String, workers: &[i32]) -> Option<String> {
    // Not a tail call, so that an argument error is raised at this line: line 1.
    let snippet =
        format!("local function call() local v, e = {}; return v, e end\nsay(call)", case.call);
    let got = nginx.eval(&snippet);
    let got = got.strip_suffix('\n').unwrap_or(&got);
    let mut problems = Vec::new();
    match &case.expect {
        Expect::Err(text) => {
            if got != format!("nil, string {text}") {
                problems.push(format!("answered {got:?}, expected `nil, {text:?}`"));
            }
        }
        Expect::Raise(text) => {
            let message = got.strip_prefix("raised: ").and_then(|m| m.strip_prefix(EVAL_CHUNK));
            let message = message
                .and_then(|m| m.strip_prefix(':'))
                .and_then(|m| m.split_once(": "))
                .filter(|(line, _)| *line == "1")
                .map(|(_, message)| message);
            if message != Some(text.as_str()) {
                problems.push(format!(
                    "answered {got:?}, expected a Lua error at the caller's line: \
                     \"{EVAL_CHUNK}:1: {text}\""
                ));
            }
        }
    }
    let after = nginx.eval(STATE);
    if after != *state {
        problems.push(format!("the zones changed:{}", diff(state, &after)));
        *state = after;
    }
    let now = nginx.worker_pids();
    if now != workers {
        problems.push(format!("workers were {workers:?}, are {now:?}"));
    }
    (!problems.is_empty()).then(|| format!("{}:\n    {}", case.call, problems.join("\n    ")))
}

fn start() -> Nginx {
    let nginx = Config::new().http(UPSTREAMS).http(&eval_server()).start();
    // A runtime-added peer, a runtime-added backup peer and an IPv6 peer, so that duplicates
    // and the backup list are covered too.
    let body = nginx.eval(
        r#"
        say(dynamic.add_peer, "u", "127.0.0.1:9002", { weight = 3, max_conns = 7 })
        say(dynamic.add_peer, "u", "127.0.0.1:9003", { backup = true })
        say(dynamic.add_peer, "u", "[::1]:9004", { down = true })
        "#,
    );
    assert_eq!(body, "boolean true\n".repeat(3));
    nginx
}

fn battery(cases: &[Case], minimum: usize) {
    assert!(cases.len() >= minimum, "{} cases", cases.len());
    let nginx = start();
    let expected_state = nginx.eval(STATE);
    assert!(expected_state.contains("u peers\n1.accessed"), "{expected_state}");
    let workers = nginx.worker_pids();
    assert_eq!(workers.len(), 2);
    let start_room = room(&nginx);
    let mut state = expected_state.clone();
    let failures: Vec<String> =
        cases.iter().filter_map(|case| run(&nginx, case, &mut state, &workers)).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Still serving, and still able to change things.
    let body = nginx.eval(&format!(
        "say(dynamic.add_peer, 'u', '{NEW}')\nsay(dynamic.remove_peer, 'u', '{NEW}')"
    ));
    assert_eq!(body, "boolean true\nboolean true\n");
    assert_eq!(nginx.eval(STATE), expected_state);
    assert_eq!(room(&nginx), start_room, "as many peers fit in zone z as before the battery");
    nginx.stop();
}

/// How many more peers fit in `u`'s zone: adds peers until one fails for want of memory, then
/// removes them. A finer measure of leaked zone memory than `zone_usage`'s free pages.
fn room(nginx: &Nginx) -> String {
    let body = nginx.eval(
        r#"
        local n = 0
        while n < 10000 do
            local ok, err = dynamic.add_peer("u", "127.0.9.1:" .. (30000 + n))
            if not ok then
                if err ~= 'no memory in upstream zone "z"' then
                    ngx.say(err)
                end
                break
            end
            n = n + 1
        end
        for i = 0, n - 1 do
            assert(dynamic.remove_peer("u", "127.0.9.1:" .. (30000 + i)))
        end
        ngx.say(n, " peers fit")
        "#,
    );
    assert!(body.ends_with(" peers fit\n") && body.lines().count() == 1, "{body}");
    body
}

#[test]
fn wrong_types_raise_argument_errors() {
    battery(&type_cases(), 40);
}

#[test]
fn malformed_servers_are_refused() {
    battery(&address_cases(), 30);
}

#[test]
fn impossible_changes_are_refused_without_change() {
    battery(&refusal_cases(), 40);
}

/// The error for an unknown option repeats the caller's option name: a huge one must not make a
/// huge error (the module keeps every echoed name to 128 bytes).
#[test]
fn a_huge_unknown_option_name_gives_a_short_error() {
    let nginx = start();
    let body = nginx.eval(&format!(
        "local ok, err = dynamic.add_peer('u', '{NEW}', {{ [string.rep('k', 1048576)] = 1 }})\n\
         ngx.say(tostring(ok), ' ', #err, ' ', err:sub(1, 20))"
    ));
    let mut parts = body.trim_end().splitn(3, ' ');
    assert_eq!(parts.next(), Some("nil"), "{body:.200}");
    let len: usize = parts.next().and_then(|n| n.parse().ok()).expect("a length");
    assert_eq!(parts.next(), Some("unknown option \"kkkk"), "{body:.200}");
    assert!(len < 300, "the error is {len} bytes long");
    nginx.stop();
}
