//! The harness itself, on nginx without our module: these pass whether or not the module is
//! built, and tell a harness bug apart from a module bug.

use std::collections::HashSet;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::thread;

use integration_tests::{lua_server, read_response, Backend, Config, Module};

/// An upstream over `backends`, proxied with keep-alive connections from `location /`.
fn proxy_http(backends: &[Backend]) -> String {
    let servers: String = backends.iter().map(|b| format!("    server {};\n", b.addr())).collect();
    format!(
        "upstream backends {{
{servers}    keepalive 16;
}}
server {{
    listen 127.0.0.1:%%PORT%%;
    location / {{
        proxy_pass http://backends;
        proxy_http_version 1.1;
        proxy_set_header Connection \"\";
    }}
}}"
    )
}

/// Whether `pid` runs (a zombie, dead but not reaped, does not).
fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

#[test]
fn proxies_reloads_and_stops_without_leftovers() {
    let backends = Backend::start_many(2);
    let mut nginx = Config::plain().workers(3).http(&proxy_http(&backends)).start();

    let bodies: HashSet<String> = (0..4).map(|_| nginx.get_ok("/")).collect();
    let expected: HashSet<String> = backends.iter().map(Backend::body).collect();
    assert_eq!(bodies, expected, "round robin reaches both backends");

    let before = nginx.worker_pids();
    assert_eq!(before.len(), 3);
    nginx.reload();
    let after = nginx.worker_pids();
    assert_eq!(after.len(), 3);
    assert!(before.iter().all(|pid| !after.contains(pid) && !alive(*pid)), "old workers exited");
    assert!(nginx.error_log().contains("reconfiguring"));
    for _ in 0..2 {
        assert!(nginx.get_ok("/").starts_with("backend "), "still proxies");
    }

    let master = nginx.master_pid();
    nginx.stop();
    assert!(!alive(master), "master {master} still running");
    assert!(after.iter().all(|pid| !alive(*pid)), "workers {after:?} still running");
    assert_eq!(backends.iter().map(Backend::requests).sum::<u64>(), 6);
}

#[test]
fn carries_concurrent_proxied_keepalive_load() {
    let backends = Backend::start_many(2);
    let nginx = Config::plain().http(&proxy_http(&backends)).start();
    thread::scope(|s| {
        for _ in 0..32 {
            s.spawn(|| {
                for _ in 0..20 {
                    let response = nginx.get("/");
                    assert_eq!(response.status, 200, "{response:?}");
                    assert!(response.body.starts_with("backend "), "{response:?}");
                }
            });
        }
    });
    assert_eq!(backends.iter().map(Backend::requests).sum::<u64>(), 32 * 20);
    nginx.stop();
}

#[test]
fn backend_serves_several_requests_per_connection() {
    let backend = Backend::start();
    let stream = TcpStream::connect(("127.0.0.1", backend.port())).expect("connect to backend");
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    for i in 0..3 {
        (&stream)
            .write_all(
                format!("POST /{i} HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\nhi").as_bytes(),
            )
            .expect("send request");
        let response = read_response(&mut reader).expect("read response");
        assert_eq!((response.status, response.body.as_str()), (200, backend.body().as_str()));
        assert_eq!(
            response.header("content-length"),
            Some(backend.body().len().to_string().as_str())
        );
    }
    assert_eq!(backend.requests(), 3);
}

#[test]
fn lua_responses_are_chunked_and_cjson_loads() {
    let lua = r#"
        local cjson = require "cjson"
        ngx.say(cjson.encode({ 1, "two" }))
        show({ "a", { w = 1, up = true }, n = "x" })
        show(42)
        show({})
        show_result(nil, "some error")
    "#;
    let nginx = Config::new().modules(&[Module::Ndk, Module::Lua]).http(&lua_server(lua)).start();
    let response = nginx.get("/t");
    assert_eq!(response.status, 200, "{}", nginx.error_log());
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        response.body,
        "[1,\"two\"]\n1: string a\n2.up: boolean true\n2.w: number 1\nn: string x\n\
         number 42\n{}\nnil, string some error\n"
    );
    nginx.stop();
}

#[test]
fn ports_placeholders_and_main_context() {
    let http = "server {
    listen 127.0.0.1:%%PORT%%;
    listen 127.0.0.1:%%PORT_1%%;
    location / { return 200 \"port $server_port\\n\"; }
}";
    let nginxes: Vec<_> = thread::scope(|s| {
        let starts: Vec<_> = (0..4)
            .map(|_| s.spawn(|| Config::plain().main("timer_resolution 50ms;").http(http).start()))
            .collect();
        starts.into_iter().map(|t| t.join().expect("start nginx")).collect()
    });
    let mut ports = HashSet::new();
    for nginx in &nginxes {
        assert_eq!(nginx.ports().len(), 2);
        for &port in nginx.ports() {
            assert!(ports.insert(port), "port {port} handed out twice");
            assert_eq!(integration_tests::get(port, "/").body, format!("port {port}\n"));
        }
    }
    nginxes.into_iter().for_each(|nginx| drop(nginx.stop()));
}

#[test]
fn nginx_t_reports_config_errors() {
    let (ok, output) =
        Config::plain().http("server { listen 127.0.0.1:%%PORT%%; no_such_directive; }").check();
    assert!(!ok, "{output}");
    assert!(output.contains("unknown directive \"no_such_directive\""), "{output}");

    let (ok, output) = Config::plain().http("server { listen 127.0.0.1:%%PORT%%; }").check();
    assert!(ok, "{output}");
    assert!(output.contains("test is successful"), "{output}");
}

#[test]
fn a_panicking_test_leaves_no_process_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = thread::spawn(move || {
        let nginx = Config::plain().http("server { listen 127.0.0.1:%%PORT%%; }").start();
        let mut pids = nginx.worker_pids();
        pids.push(nginx.master_pid());
        tx.send((pids, nginx.prefix().to_owned())).expect("send pids");
        panic!("deliberate test failure");
    })
    .join();
    assert!(result.is_err());
    let (pids, prefix) = rx.recv().expect("pids of the nginx");
    assert!(pids.iter().all(|pid| !alive(*pid)), "still running: {pids:?}");
    assert!(prefix.join("logs/error.log").exists(), "the evidence is kept");
    std::fs::remove_dir_all(prefix).expect("remove the kept prefix");
}

#[test]
fn stop_fails_the_test_on_an_alert() {
    let lua = r#"ngx.log(ngx.ALERT, "something is badly wrong") ngx.say("logged")"#;
    let nginx = Config::new().modules(&[Module::Ndk, Module::Lua]).http(&lua_server(lua)).start();
    assert_eq!(nginx.get_ok("/t"), "logged\n");
    let prefix = nginx.prefix().to_owned();
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| nginx.stop()))
        .expect_err("stop() must fail on an [alert]");
    let message = panic.downcast_ref::<String>().expect("a formatted panic message");
    assert!(message.contains("[alert]") && message.contains("something is badly wrong"));
    std::fs::remove_dir_all(prefix).expect("remove the kept prefix");
}
