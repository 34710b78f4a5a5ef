//! `dynamic_state_file`: changes survive reloads and restarts.
//!
//! An upstream with `dynamic_state_file <path>;` has its peers written to `<path>` after every
//! change (by the worker that made it), and read back in place of its `server` lines whenever the
//! configuration is loaded. These tests drive real nginx (root master, `nobody` workers) and
//! check, through `describe_zone` and the file itself:
//!
//! - every kind of change is in the file, exactly, and comes back after a reload and after a full
//!   stop and start (the file is mode 0600 and owned by the worker user);
//! - the file appears with the first change and from then on wins over the `server` lines, which
//!   nginx says once per load in its log;
//! - reloads under proxied load with changes in between fail no request and end in the exact
//!   state;
//! - both workers changing one upstream at once leave a file that matches shared memory;
//! - broken, unreadable or misplaced state files fail `nginx -t` with the file and line;
//! - a failed write is the caller's error and is logged, and the next change writes again;
//! - a change attempted through a worker of the old generation during a reload is refused and
//!   lands nowhere.
//!
//! State files live in directories of their own, owned by the worker user (the test prefixes are
//! root's and mode 755, which the module rightly refuses).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::{eval_server, get, modern, post, Backend, Config, Load, LoadSpec, Nginx};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The uid and gid of the workers: nginx's default `user`, `nobody`.
fn worker_user() -> (u32, u32) {
    let name = CString::new("nobody").expect("no NUL");
    // SAFETY: a NUL-terminated name; the result is read at once, before any other getpw* call
    // of this thread.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(!pw.is_null(), "no user nobody on this machine");
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

/// A directory of its own for state files, removed on drop (kept if the test panics, for
/// inspection). By default owned by the worker user with mode 755, as an operator would set up
/// `/var/lib/nginx/state`.
struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Owned by the worker user, mode 755: the workers can write in it.
    fn new() -> StateDir {
        let dir = StateDir::owned_by_root();
        let (uid, gid) = worker_user();
        std::os::unix::fs::chown(&dir.path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", dir.path.display()));
        dir
    }

    /// Owned by root, mode 755: the workers cannot write in it.
    fn owned_by_root() -> StateDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name =
            format!("dynup-state-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let path = std::env::temp_dir().join(name);
        if path.exists() {
            fs::remove_dir_all(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
        }
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        set_mode(&path, 0o755);
        StateDir { path }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The names in the directory, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.path)
            .unwrap_or_else(|e| panic!("list {}: {e}", self.path.display()))
            .map(|entry| entry.expect("a directory entry").file_name().to_string_lossy().into())
            .collect();
        names.sort();
        names
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("state files kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A peer's identity and settings, as `describe_zone` reports them and the state file keeps them
/// (not the working figures: fails, conns, current weights...).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Peer {
    name: String,
    server: String,
    weight: u32,
    max_fails: u32,
    fail_timeout: u32,
    max_conns: u32,
    down: bool,
    backup: bool,
}

impl Peer {
    /// A peer named and configured as `addr`, with nginx's defaults.
    fn new(addr: &str) -> Peer {
        Peer::named(addr, addr)
    }

    /// A peer named `name` (nginx's text of its address), configured or added as `server`.
    fn named(name: &str, server: &str) -> Peer {
        Peer {
            name: name.into(),
            server: server.into(),
            weight: 1,
            max_fails: 1,
            fail_timeout: 10,
            max_conns: 0,
            down: false,
            backup: false,
        }
    }

    fn weight(mut self, v: u32) -> Peer {
        self.weight = v;
        self
    }

    fn max_fails(mut self, v: u32) -> Peer {
        self.max_fails = v;
        self
    }

    fn fail_timeout(mut self, v: u32) -> Peer {
        self.fail_timeout = v;
        self
    }

    fn max_conns(mut self, v: u32) -> Peer {
        self.max_conns = v;
        self
    }

    fn down(mut self, v: bool) -> Peer {
        self.down = v;
        self
    }

    fn backup(mut self) -> Peer {
        self.backup = true;
        self
    }

    /// As it comes back from a state file: `server` is the canonical name written there.
    fn reloaded(&self) -> Peer {
        Peer { server: self.name.clone(), ..self.clone() }
    }

    /// Its line in the state file, as the format documentation of `crates/core/src/state_file.rs`
    /// gives it: the canonical name, then only the non-default parameters in a fixed order.
    fn state_line(&self) -> String {
        let mut line = format!("server {}", self.name);
        if self.weight != 1 {
            line += &format!(" weight={}", self.weight);
        }
        if self.max_fails != 1 {
            line += &format!(" max_fails={}", self.max_fails);
        }
        if self.fail_timeout != 10 {
            line += &format!(" fail_timeout={}s", self.fail_timeout);
        }
        if self.max_conns != 0 {
            line += &format!(" max_conns={}", self.max_conns);
        }
        if self.down {
            line += " down";
        }
        if self.backup {
            line += " backup";
        }
        line + ";"
    }
}

/// The peers in the order `describe_zone` lists them (and the state file records them): the
/// primary ones, then the backup ones, each in list order.
fn listed(peers: &[Peer]) -> Vec<Peer> {
    let primary = peers.iter().filter(|p| !p.backup);
    let backup = peers.iter().filter(|p| p.backup);
    primary.chain(backup).cloned().collect()
}

fn reloaded(peers: &[Peer]) -> Vec<Peer> {
    peers.iter().map(Peer::reloaded).collect()
}

/// The state file the module writes for `peers` of upstream `upstream`.
fn state_text(upstream: &str, peers: &[Peer]) -> String {
    let mut text = format!(
        "# ngx.dynamic state of upstream \"{upstream}\"; written by nginx, do not edit while it \
         runs\n"
    );
    for peer in listed(peers) {
        text += &peer.state_line();
        text.push('\n');
    }
    text
}

/// Reads what the module writes (and only that: this is not the module's parser): the header
/// comment, then one `server` line per peer.
fn parse_state(text: &str) -> Vec<Peer> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("# ngx.dynamic state of upstream "),
        "header {header:?} in:\n{text}"
    );
    assert!(text.ends_with('\n'), "no final newline:\n{text}");
    lines
        .map(|line| {
            let body = line
                .strip_prefix("server ")
                .and_then(|l| l.strip_suffix(';'))
                .unwrap_or_else(|| panic!("bad line {line:?} in:\n{text}"));
            let mut words = body.split(' ');
            let name = words.next().expect("an address");
            let mut peer = Peer::new(name);
            for word in words {
                let number = |v: &str| -> u32 {
                    v.parse().unwrap_or_else(|_| panic!("bad value in {line:?} of:\n{text}"))
                };
                match word.split_once('=') {
                    Some(("weight", v)) => peer.weight = number(v),
                    Some(("max_fails", v)) => peer.max_fails = number(v),
                    Some(("fail_timeout", v)) => {
                        peer.fail_timeout = number(v.strip_suffix('s').expect("seconds"));
                    }
                    Some(("max_conns", v)) => peer.max_conns = number(v),
                    None if word == "down" => peer.down = true,
                    None if word == "backup" => peer.backup = true,
                    _ => panic!("unknown word {word:?} in {line:?} of:\n{text}"),
                }
            }
            peer
        })
        .collect()
}

/// Prints one line per peer of `describe_zone(u)`: `name|server|weight|...|down|backup`.
const DESCRIBE: &str = r#"
local peers, err = dynamic.describe_zone(UPSTREAM)
if not peers then
    ngx.say("nil, ", err)
    return
end
for _, p in ipairs(peers) do
    ngx.say(p.name, "|", p.server, "|", p.weight, "|", p.max_fails, "|", p.fail_timeout, "|",
            p.max_conns, "|", tostring(p.down), "|", tostring(p.backup))
end
"#;

fn parse_described(body: &str) -> Vec<Peer> {
    body.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('|').collect();
            assert_eq!(fields.len(), 8, "bad describe line {line:?} in:\n{body}");
            let number = |i: usize| -> u32 {
                fields[i].parse().unwrap_or_else(|_| panic!("bad number in {line:?}:\n{body}"))
            };
            // Present and true, or absent: never false.
            let flag = |i: usize| match fields[i] {
                "true" => true,
                "nil" => false,
                other => panic!("flag {other:?} in {line:?}:\n{body}"),
            };
            Peer {
                name: fields[0].into(),
                server: fields[1].into(),
                weight: number(2),
                max_fails: number(3),
                fail_timeout: number(4),
                max_conns: number(5),
                down: flag(6),
                backup: flag(7),
            }
        })
        .collect()
}

/// `describe_zone(upstream)` through the eval endpoint.
fn describe(nginx: &Nginx, upstream: &str) -> Vec<Peer> {
    let body = nginx.eval(&format!("local UPSTREAM = '{upstream}'\n{DESCRIBE}"));
    assert!(!body.starts_with("nil, "), "describe_zone('{upstream}'): {body}");
    parse_described(&body)
}

/// Runs a Lua expression returning `ok, err` through the eval endpoint; returns its outcome
/// line (`boolean true`, or `nil, string <err>`).
fn call(nginx: &Nginx, expr: &str) -> String {
    let body = nginx.eval(&format!("ngx.say(outcome(function() return {expr} end))"));
    body.trim_end_matches('\n').to_owned()
}

/// `upstream <name> { zone ...; <servers>; dynamic_state_file <path>; }`.
fn upstream(name: &str, servers: &[&str], state: &Path) -> String {
    let servers: String = servers.iter().map(|s| format!("    server {s};\n")).collect();
    format!(
        "upstream {name} {{
    zone {name} 64k;
{servers}    dynamic_state_file {};
}}",
        state.display()
    )
}

/// The error log from byte `from` on.
fn log_since(nginx: &Nginx, from: usize) -> String {
    nginx.error_log().get(from..).unwrap_or_default().to_owned()
}

/// Checks what the state file holds after a change: exactly the expected text, mode 0600, owned
/// by the worker user, and no temporary file left beside it.
fn assert_state_file(path: &Path, upstream: &str, peers: &[Peer], context: &str) {
    assert_eq!(read(path), state_text(upstream, peers), "state file after {context}");
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    assert_eq!(meta.mode() & 0o7777, 0o600, "mode of the state file after {context}");
    let (uid, gid) = worker_user();
    assert_eq!((meta.uid(), meta.gid()), (uid, gid), "owner of the state file after {context}");
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    assert!(!Path::new(&tmp).exists(), "{} left behind after {context}", tmp.to_string_lossy());
}

/// How long a test waits at most for something it needs to see happen.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// 1. Every kind of change survives a reload and a restart.
// ---------------------------------------------------------------------------------------------

/// A change and how it transforms the expected peers.
type Step = (&'static str, fn(&mut Vec<Peer>));

/// How a change transforms the expected peers.
type Change<'a> = dyn Fn(&mut Vec<Peer>) + 'a;

fn find<'a>(peers: &'a mut [Peer], name: &str) -> &'a mut Peer {
    peers.iter_mut().find(|p| p.name == name).unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn every_change_survives_reload_and_restart() {
    let dir = StateDir::new();
    let path = dir.file("u.state");
    let mut nginx = Config::new()
        .http(&upstream("u", &["127.0.0.1:9000", "[0::1]:9001 weight=3 max_fails=2"], &path))
        .http(&eval_server())
        .start();
    let mut expected = vec![
        Peer::new("127.0.0.1:9000"),
        Peer::named("[::1]:9001", "[0::1]:9001").weight(3).max_fails(2),
    ];
    assert_eq!(describe(&nginx, "u"), expected, "as configured");
    assert!(!path.exists(), "no state file before any change");

    let steps: Vec<Step> = vec![
        ("dynamic.add_peer('u', '127.0.0.1:9002')", |p| p.push(Peer::new("127.0.0.1:9002"))),
        (
            "dynamic.add_peer('u', '[::0:1]:9003', \
             { weight = 2, max_fails = 3, fail_timeout = 7, max_conns = 10 })",
            |p| {
                let peer = Peer::named("[::1]:9003", "[::0:1]:9003");
                p.push(peer.weight(2).max_fails(3).fail_timeout(7).max_conns(10));
            },
        ),
        ("dynamic.add_peer('u', 'unix:/run/dynup-state-test.sock', { backup = true })", |p| {
            p.push(Peer::new("unix:/run/dynup-state-test.sock").backup());
        }),
        ("dynamic.add_peer('u', '127.0.0.1:9004', { down = true, max_fails = 0 })", |p| {
            p.push(Peer::new("127.0.0.1:9004").down(true).max_fails(0));
        }),
        ("dynamic.add_peer('u', '127.0.0.1:9005', { backup = true, down = true })", |p| {
            p.push(Peer::new("127.0.0.1:9005").backup().down(true));
        }),
        ("dynamic.remove_peer('u', '127.0.0.1:9002')", |p| {
            p.retain(|peer| peer.name != "127.0.0.1:9002");
        }),
        ("dynamic.remove_peer('u', '127.0.0.1:9005')", |p| {
            p.retain(|peer| peer.name != "127.0.0.1:9005");
        }),
        ("dynamic.set_peer_down('u', '127.0.0.1:9000')", |p| {
            find(p, "127.0.0.1:9000").down = true;
        }),
        ("dynamic.set_peer_down('u', '127.0.0.1:9004', false)", |p| {
            find(p, "127.0.0.1:9004").down = false;
        }),
        (
            "dynamic.update_peer('u', '[::1]:9001', \
             { weight = 1000000, max_fails = 0, fail_timeout = 0, max_conns = 1000000 })",
            |p| {
                let peer = find(p, "[::1]:9001");
                (peer.weight, peer.max_fails, peer.fail_timeout, peer.max_conns) =
                    (1_000_000, 0, 0, 1_000_000);
            },
        ),
        ("dynamic.update_peer('u', '[::1]:9003', { fail_timeout = 31536000 })", |p| {
            find(p, "[::1]:9003").fail_timeout = 31_536_000;
        }),
        ("dynamic.update_peer('u', 'unix:/run/dynup-state-test.sock', { weight = 4 })", |p| {
            find(p, "unix:/run/dynup-state-test.sock").weight = 4;
        }),
        ("dynamic.update_peer('u', '127.0.0.1:9004', { down = true, max_conns = 7 })", |p| {
            let peer = find(p, "127.0.0.1:9004");
            (peer.down, peer.max_conns) = (true, 7);
        }),
    ];
    for (expr, apply) in steps {
        assert_eq!(call(&nginx, expr), "boolean true", "{expr}");
        apply(&mut expected);
        let now = listed(&expected);
        assert_eq!(describe(&nginx, "u"), now, "after {expr}");
        assert_state_file(&path, "u", &now, expr);
    }
    assert_eq!(dir.names(), ["u.state", "u.state.lock"]);
    let expected = reloaded(&listed(&expected));
    let file = read(&path);
    assert_eq!(parse_state(&file), expected, "the file parsed");

    nginx.reload();
    assert_eq!(describe(&nginx, "u"), expected, "after a reload");
    assert_eq!(read(&path), file, "a reload does not rewrite the file");

    nginx.restart();
    assert_eq!(describe(&nginx, "u"), expected, "after a stop and start");
    assert_eq!(read(&path), file, "a restart does not rewrite the file");

    // The restarted nginx writes the file as the first one did, and a reload takes that too.
    assert_eq!(
        call(&nginx, "dynamic.remove_peer('u', 'unix:/run/dynup-state-test.sock')"),
        "boolean true"
    );
    let expected: Vec<Peer> =
        expected.into_iter().filter(|p| p.name != "unix:/run/dynup-state-test.sock").collect();
    assert_state_file(&path, "u", &expected, "a change after the restart");
    nginx.reload();
    assert_eq!(describe(&nginx, "u"), expected, "after a change after the restart and a reload");
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 2. The file appears with the first change and then wins over the server lines.
// ---------------------------------------------------------------------------------------------

/// The notice nginx logs each time a state file replaces an upstream's server lines.
fn replace_notice(upstream: &str, peers: usize, path: &Path) -> String {
    format!(
        "upstream \"{upstream}\": {peers} peers from state file \"{}\" replace its server lines",
        path.display()
    )
}

#[test]
fn the_file_appears_with_the_first_change_and_then_wins_over_the_server_lines() {
    let dir = StateDir::new();
    let path = dir.file("u.state");
    let config =
        |servers: &[&str]| Config::new().http(&upstream("u", servers, &path)).http(&eval_server());
    let mut nginx = config(&["127.0.0.1:9000", "127.0.0.1:9001 weight=2"]).start();
    let configured = vec![Peer::new("127.0.0.1:9000"), Peer::new("127.0.0.1:9001").weight(2)];
    assert_eq!(describe(&nginx, "u"), configured);
    assert!(!path.exists());
    assert!(!nginx.error_log().contains("from state file"), "{}", nginx.error_log());

    // Neither a reload nor a refused change writes a file.
    nginx.reload();
    assert_eq!(describe(&nginx, "u"), configured);
    assert_eq!(
        call(&nginx, "dynamic.add_peer('u', '127.0.0.1:9000')"),
        "nil, string peer \"127.0.0.1:9000\" already exists in upstream \"u\""
    );
    assert_eq!(
        call(&nginx, "dynamic.update_peer('u', '127.0.0.1:9000', { weight = 0 })"),
        "nil, string weight must be an integer from 1 to 1000000"
    );
    assert!(!path.exists(), "a refused change wrote {}", path.display());
    assert!(!nginx.error_log().contains("from state file"), "{}", nginx.error_log());

    // The first change writes it.
    assert_eq!(
        call(&nginx, "dynamic.add_peer('u', '127.0.0.1:9002', { max_conns = 5 })"),
        "boolean true"
    );
    let state = vec![
        Peer::new("127.0.0.1:9000"),
        Peer::new("127.0.0.1:9001").weight(2),
        Peer::new("127.0.0.1:9002").max_conns(5),
    ];
    assert_state_file(&path, "u", &state, "the first change");

    // New server lines: the file still wins, on reload and on restart, and nginx says so once
    // per configuration load.
    nginx.rewrite_config(&config(&["127.0.0.1:9100 weight=9", "127.0.0.1:9101"]));
    let log_before = nginx.error_log().len();
    nginx.reload();
    assert_eq!(describe(&nginx, "u"), state, "after editing the server lines and a reload");
    let notice = replace_notice("u", 3, &path);
    let log = log_since(&nginx, log_before);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&notice)).collect();
    assert_eq!(lines.len(), 1, "one notice in:\n{log}");
    assert!(lines[0].contains("[notice]"), "{}", lines[0]);
    assert_eq!(log.matches("from state file").count(), 1, "{log}");

    let log_before = nginx.error_log().len();
    nginx.restart();
    assert_eq!(describe(&nginx, "u"), state, "after editing the server lines and a restart");
    let log = log_since(&nginx, log_before);
    assert_eq!(log.lines().filter(|l| l.contains(&notice)).count(), 1, "one notice in:\n{log}");

    // `nginx -t` changes nothing, and leaves the running nginx free to make changes.
    let file = read(&path);
    let (ok, output) = config(&["127.0.0.1:9100"]).check();
    assert!(ok, "{output}");
    assert_eq!(read(&path), file);
    assert_eq!(describe(&nginx, "u"), state);
    assert_eq!(call(&nginx, "dynamic.set_peer_down('u', '127.0.0.1:9002')"), "boolean true");
    let mut state = state;
    state[2].down = true;
    assert_state_file(&path, "u", &state, "a change after nginx -t");
    nginx.stop();
}

/// A file written by hand (or copied from elsewhere) is read as nginx would read the same
/// `server` lines, and the first change rewrites it in the module's own canonical form.
#[test]
fn a_hand_written_state_file_is_read_and_rewritten_canonically() {
    let dir = StateDir::new();
    let path = dir.file("u.state");
    fs::write(
        &path,
        "# written by hand\r\n\r\n\
         server 127.0.0.1:9000   weight=2\tmax_fails=1 ;\r\n\
         \x20 server [0::1]:9001 fail_timeout=2m down;\n\
         server UNIX:/run/dynup-hand.sock backup;\n\
         server 127.0.0.1:09002 fail_timeout=1h max_conns=0 weight=1;\n",
    )
    .expect("write");
    let nginx =
        Config::new().http(&upstream("u", &["127.0.0.1:9999"], &path)).http(&eval_server()).start();
    let mut expected = vec![
        Peer::new("127.0.0.1:9000").weight(2),
        Peer::new("[::1]:9001").fail_timeout(120).down(true),
        Peer::new("127.0.0.1:9002").fail_timeout(3600),
        Peer::new("unix:/run/dynup-hand.sock").backup(),
    ];
    assert_eq!(describe(&nginx, "u"), expected);
    let log = nginx.error_log();
    assert_eq!(log.matches(&replace_notice("u", 4, &path)).count(), 1, "{log}");

    assert_eq!(
        call(&nginx, "dynamic.update_peer('u', '127.0.0.1:9000', { max_conns = 1 })"),
        "boolean true"
    );
    expected[0].max_conns = 1;
    assert_state_file(&path, "u", &expected, "the first change");
    assert_eq!(
        read(&path),
        "# ngx.dynamic state of upstream \"u\"; written by nginx, do not edit while it runs\n\
         server 127.0.0.1:9000 weight=2 max_conns=1;\n\
         server [::1]:9001 fail_timeout=120s down;\n\
         server 127.0.0.1:9002 fail_timeout=3600s;\n\
         server unix:/run/dynup-hand.sock backup;\n"
    );
    nginx.stop();
}

/// A reload that fails (here: an error elsewhere in the configuration, then a state file broken
/// by hand) leaves the running generation as it was: its workers still make changes, neither
/// refused as superseded nor stuck on the lock the failed load took, and save them, replacing a
/// broken file with a good one.
#[test]
fn a_failed_reload_leaves_the_running_nginx_changing_and_saving() {
    let dir = StateDir::new();
    let path = dir.file("u.state");
    let config =
        Config::new().http(&upstream("u", &["127.0.0.1:9000"], &path)).http(&eval_server());
    let mut nginx = config.start();
    assert_eq!(call(&nginx, "dynamic.add_peer('u', '127.0.0.1:9001')"), "boolean true");
    let mut expected = vec![Peer::new("127.0.0.1:9000"), Peer::new("127.0.0.1:9001")];
    assert_state_file(&path, "u", &expected, "the first change");

    // An error after the upstream block: the state file was read and locked, then dropped.
    nginx.rewrite_config(&config.clone().http("this_is_not_a_directive;"));
    let log = nginx.reload_expecting_failure();
    assert!(log.contains("unknown directive \"this_is_not_a_directive\""), "{log}");
    for round in 0..2 {
        // Through whichever worker: a few changes, so both are likely asked.
        let addr = format!("127.0.0.1:{}", 9002 + round);
        assert_eq!(call(&nginx, &format!("dynamic.add_peer('u', '{addr}')")), "boolean true");
        expected.push(Peer::new(&addr));
        assert_state_file(&path, "u", &expected, "a change after the failed reload");
    }

    // A state file broken by hand.
    nginx.rewrite_config(&config);
    fs::write(&path, "server 127.0.0.1:9000;\nserver 127.0.0.1:9001 weight=x;\n").expect("write");
    let log = nginx.reload_expecting_failure();
    let message = refusal(&path, 2, "weight must be an integer from 1 to 4294967295");
    let message = message.trim_start_matches("[emerg] ");
    let line = log.lines().find(|l| l.contains(message));
    assert!(line.is_some_and(|l| l.contains("[emerg]")), "expected {message:?} in:\n{log}");
    assert_eq!(
        call(&nginx, "dynamic.update_peer('u', '127.0.0.1:9000', { weight = 2 })"),
        "boolean true"
    );
    expected[0].weight = 2;
    assert_state_file(&path, "u", &expected, "a change after the refused file");

    nginx.reload();
    assert_eq!(describe(&nginx, "u"), expected, "after a good reload");
    nginx.stop();
}

/// Whatever `server` lines nginx accepts, a change must not leave a state file that the next
/// reload refuses: either nginx refuses the configuration from the start, saying why, or the
/// peers come back after a change and a reload. nginx itself takes settings beyond the ranges of
/// the Lua API (it has no upper bounds) and the same address twice.
#[test]
fn every_configuration_nginx_accepts_survives_a_change_and_a_reload() {
    let cases: [(&str, &[&str], Vec<Peer>); 5] = [
        (
            "weight",
            &["127.0.0.1:9000 weight=1000001"],
            vec![Peer::new("127.0.0.1:9000").weight(1_000_001)],
        ),
        (
            "max_fails",
            &["127.0.0.1:9000 max_fails=2000000"],
            vec![Peer::new("127.0.0.1:9000").max_fails(2_000_000)],
        ),
        (
            "max_conns",
            &["127.0.0.1:9000 max_conns=2000000"],
            vec![Peer::new("127.0.0.1:9000").max_conns(2_000_000)],
        ),
        (
            "fail_timeout",
            &["127.0.0.1:9000 fail_timeout=400d"],
            vec![Peer::new("127.0.0.1:9000").fail_timeout(400 * 86_400)],
        ),
        (
            "127.0.0.1:9000",
            &["127.0.0.1:9000", "127.0.0.1:9000 weight=2"],
            vec![Peer::new("127.0.0.1:9000"), Peer::new("127.0.0.1:9000").weight(2)],
        ),
    ];
    let mut problems = Vec::new();
    for (what, servers, configured) in cases {
        let dir = StateDir::new();
        let path = dir.file("u.state");
        let http = upstream("u", servers, &path);
        let (ok, output) = check(&http);
        if !ok {
            // Refused up front: fine if nginx says what.
            if !output.contains(what) {
                problems.push(format!("{servers:?}: refused without naming {what:?}:\n{output}"));
            }
            continue;
        }
        let mut nginx = Config::new().http(&http).http(&eval_server()).start();
        assert_eq!(describe(&nginx, "u"), configured, "{servers:?}");
        assert_eq!(call(&nginx, "dynamic.add_peer('u', '127.0.0.1:9500')"), "boolean true");
        let mut expected = configured.clone();
        expected.push(Peer::new("127.0.0.1:9500"));
        match nginx.try_reload() {
            Ok(()) => {
                let now = describe(&nginx, "u");
                if now != expected {
                    problems.push(format!("{servers:?}: after a change and a reload: {now:#?}"));
                }
            }
            Err(log) => problems.push(format!(
                "{servers:?}: accepted, but after a change the reload fails:\n{}\nstate file:\n{}",
                log.lines().filter(|l| l.contains("[emerg]")).collect::<Vec<_>>().join("\n"),
                read(&path)
            )),
        }
        nginx.stop();
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------
// 3. Reloads under proxied load.
// ---------------------------------------------------------------------------------------------

/// Waits (bounded) until `load` has done `more` requests beyond `from`.
fn wait_for_traffic(load: &Load, from: u64, more: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let done = load.done();
        if done >= from + more {
            return done;
        }
        assert!(Instant::now() < deadline, "the load made {} requests in {WAIT:?}", done - from);
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn reloads_under_load_fail_no_request_and_keep_the_exact_state() {
    let backends = Backend::start_many(6);
    let b: Vec<String> = backends.iter().map(Backend::addr).collect();
    let dir = StateDir::new();
    let path = dir.file("u.state");
    let mut nginx = Config::new()
        .http(&upstream("u", &[&b[0], &b[1]], &path))
        .http(
            "server {
    listen 127.0.0.1:%%PORT_1%%;
    location / {
        proxy_pass http://u;
    }
}",
        )
        .http(&eval_server())
        .start();
    // Exiting workers close idle keep-alive connections: the clients resend a request when that
    // happens before any byte of its response, as HTTP clients do (counted, not hidden).
    let load = Load::start_retrying_closed_keepalive(&LoadSpec {
        port: nginx.ports()[1],
        path: "/".into(),
        clients: 4,
        max_requests: 10_000_000,
        max_duration: Duration::from_secs(120),
    });

    let mut expected = vec![Peer::new(&b[0]), Peer::new(&b[1])];
    // Each round: changes, then a reload. Every peer's backend stays up throughout, so requests
    // the old workers still have in flight to a removed peer succeed.
    let rounds: Vec<Vec<String>> = vec![
        vec![
            format!("dynamic.add_peer('u', '{}')", b[2]),
            format!("dynamic.add_peer('u', '{}', {{ backup = true }})", b[4]),
        ],
        vec![
            format!("dynamic.remove_peer('u', '{}')", b[0]),
            format!("dynamic.add_peer('u', '{}', {{ weight = 3 }})", b[3]),
        ],
        vec![format!("dynamic.set_peer_down('u', '{}')", b[1])],
        vec![
            format!("dynamic.update_peer('u', '{}', {{ max_fails = 5, fail_timeout = 30 }})", b[2]),
            format!("dynamic.remove_peer('u', '{}')", b[3]),
            format!("dynamic.add_peer('u', '{}', {{ max_conns = 100 }})", b[5]),
        ],
        vec![
            format!("dynamic.set_peer_down('u', '{}', false)", b[1]),
            format!("dynamic.remove_peer('u', '{}')", b[4]),
            format!("dynamic.update_peer('u', '{}', {{ weight = 2 }})", b[5]),
        ],
    ];
    let apply: [&Change; 5] = [
        &|p| {
            p.push(Peer::new(&b[2]));
            p.push(Peer::new(&b[4]).backup());
        },
        &|p| {
            p.retain(|x| x.name != b[0]);
            p.push(Peer::new(&b[3]).weight(3));
        },
        &|p| find(p, &b[1]).down = true,
        &|p| {
            let peer = find(p, &b[2]);
            (peer.max_fails, peer.fail_timeout) = (5, 30);
            p.retain(|x| x.name != b[3]);
            p.push(Peer::new(&b[5]).max_conns(100));
        },
        &|p| {
            find(p, &b[1]).down = false;
            p.retain(|x| x.name != b[4]);
            find(p, &b[5]).weight = 2;
        },
    ];

    let mut done = wait_for_traffic(&load, 0, 200);
    for (round, (calls, apply)) in rounds.iter().zip(apply).enumerate() {
        for expr in calls {
            assert_eq!(call(&nginx, expr), "boolean true", "round {round}: {expr}");
        }
        apply(&mut expected);
        let now = listed(&expected);
        assert_eq!(describe(&nginx, "u"), now, "round {round}, before the reload");
        assert_state_file(&path, "u", &now, &format!("round {round}"));
        done = wait_for_traffic(&load, done, 200);
        nginx.reload();
        assert_eq!(describe(&nginx, "u"), now, "round {round}, after the reload");
        done = wait_for_traffic(&load, done, 200);
    }
    let report = load.stop();
    assert_eq!(
        (report.non_2xx, report.transport_errors),
        (0, 0),
        "failed requests across 5 reloads: {:#?}",
        report.failures
    );
    assert_eq!(report.ok, report.requests);
    assert!(report.ok >= 2000, "{report:?}");
    eprintln!(
        "{} requests, {} resent after an exiting worker closed their keep-alive connection",
        report.requests, report.retried
    );
    let bodies: BTreeSet<&String> = report.bodies.keys().collect();
    let backend_bodies: Vec<String> = backends.iter().map(Backend::body).collect();
    assert!(bodies.iter().all(|body| backend_bodies.contains(body)), "{bodies:?}");

    let final_state = vec![
        Peer::new(&b[1]),
        Peer::new(&b[2]).max_fails(5).fail_timeout(30),
        Peer::new(&b[5]).max_conns(100).weight(2),
    ];
    assert_eq!(describe(&nginx, "u"), final_state, "after the last reload");
    assert_eq!(parse_state(&read(&path)), final_state);
    // Traffic goes to exactly the final peers.
    let before: Vec<u64> = backends.iter().map(Backend::requests).collect();
    for _ in 0..12 {
        let response = get(nginx.ports()[1], "/");
        assert_eq!(response.status, 200, "{response:?}");
    }
    let served: Vec<bool> =
        backends.iter().zip(&before).map(|(backend, n)| backend.requests() > *n).collect();
    assert_eq!(served, [false, true, true, false, false, true], "who served after the reloads");
    nginx.stop();
}

/// Reloads must not change what the API allows: a round-robin upstream takes backup peers after
/// any number of reloads (and restarts), and every one of them is kept.
#[test]
fn a_round_robin_upstream_takes_backup_peers_after_every_reload() {
    let dir = StateDir::new();
    let path = dir.file("u.state");
    let mut nginx =
        Config::new().http(&upstream("u", &["127.0.0.1:9000"], &path)).http(&eval_server()).start();
    let mut expected = vec![Peer::new("127.0.0.1:9000")];
    for round in 0..8 {
        let addr = format!("127.0.0.1:{}", 9100 + round);
        assert_eq!(
            call(&nginx, &format!("dynamic.add_peer('u', '{addr}', {{ backup = true }})")),
            "boolean true",
            "after {round} reloads or restarts"
        );
        expected.push(Peer::new(&addr).backup());
        assert_state_file(&path, "u", &expected, &format!("round {round}"));
        if round == 4 {
            nginx.restart();
        } else {
            nginx.reload();
        }
        assert_eq!(describe(&nginx, "u"), expected, "round {round}");
    }
    nginx.stop();
}

/// Reloads must not lift the balancer refusals either: on nginx < 1.27.3 `random` keeps
/// per-worker peer tables, so `add_peer` stays refused after any number of reloads (on newer
/// nginx, whose `random` takes new peers, a backup peer it has no list for stays refused), while
/// `set_peer_down` (which it supports) keeps working and saving.
#[test]
fn a_random_upstream_refuses_add_peer_after_every_reload() {
    let dir = StateDir::new();
    let path = dir.file("u.state");
    let mut nginx = Config::new()
        .http(&format!(
            "upstream u {{ zone u 64k; random; server 127.0.0.1:9000; server 127.0.0.1:9001; \
             dynamic_state_file {}; }}",
            path.display()
        ))
        .http(&eval_server())
        .start();
    let (add, refused) = if modern() {
        (
            "dynamic.add_peer('u', '127.0.0.1:9100', { backup = true })",
            "nil, string backup peers are not supported for upstream \"u\": its balancer \
             (random) has no backup list",
        )
    } else {
        (
            "dynamic.add_peer('u', '127.0.0.1:9100')",
            "nil, string add_peer is not supported for upstream \"u\": its balancer (random) \
             keeps a per-worker peer table and cannot see new peers on nginx < 1.27.3",
        )
    };
    let mut expected = vec![Peer::new("127.0.0.1:9000"), Peer::new("127.0.0.1:9001")];
    for round in 0..8 {
        assert_eq!(call(&nginx, add), refused, "after {round} reloads");
        let down = round % 2 == 0;
        assert_eq!(
            call(&nginx, &format!("dynamic.set_peer_down('u', '127.0.0.1:9001', {down})")),
            "boolean true"
        );
        expected[1].down = down;
        assert_state_file(&path, "u", &expected, &format!("round {round}"));
        nginx.reload();
        assert_eq!(describe(&nginx, "u"), expected, "after {} reloads", round + 1);
    }
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 4. Both workers changing one upstream at once.
// ---------------------------------------------------------------------------------------------

/// Iterations each client makes at least, and at most (while waiting for both workers to have
/// made changes).
const MIN_ITERATIONS: usize = 150;
const MAX_ITERATIONS: usize = 1500;
/// Changes each worker must have made at least.
const MIN_PER_WORKER: usize = 20;
/// Peers each client keeps at the end.
const KEPT: usize = 3;

/// The `i`-th extra peer of client `client`, with the settings it is added with.
fn extra_peer(client: usize, i: usize) -> Peer {
    let name = format!("127.0.{}.{}:{}", client + 2, i / 200 + 1, 10_000 + i % 200);
    Peer::new(&name).weight(i as u32 % 7 + 1).max_fails(i as u32 % 4)
}

#[test]
fn concurrent_changes_from_both_workers_leave_the_file_equal_to_shared_memory() {
    let dir = StateDir::new();
    let path = dir.file("u.state");
    let mut nginx = Config::new()
        .http(&upstream("u", &["127.0.0.1:9000", "127.0.0.1:9001 backup"], &path))
        .http(&eval_server())
        .start();
    let port = nginx.port();
    let workers = nginx.worker_pids();
    let stop = Arc::new(AtomicBool::new(false));

    // Two clients, each adding its own peers and removing the one added KEPT iterations before,
    // over fresh connections so that both workers serve each. A client goes on until both
    // workers have made enough of its changes.
    let clients: Vec<_> = (0..2)
        .map(|client| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut by_worker = std::collections::BTreeMap::<i32, usize>::new();
                let mut i = 0;
                loop {
                    let enough = by_worker.len() == 2
                        && by_worker.values().all(|&n| n >= MIN_PER_WORKER)
                        && i >= MIN_ITERATIONS;
                    if enough || i == MAX_ITERATIONS || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let new = extra_peer(client, i);
                    let mut lua = format!(
                        "say(dynamic.add_peer, 'u', '{}', {{ weight = {}, max_fails = {} }})\n",
                        new.name, new.weight, new.max_fails
                    );
                    if i >= KEPT {
                        let old = extra_peer(client, i - KEPT);
                        lua += &format!("say(dynamic.remove_peer, 'u', '{}')\n", old.name);
                    }
                    let response = post(port, "/eval", &lua);
                    let expected =
                        if i >= KEPT { "boolean true\nboolean true\n" } else { "boolean true\n" };
                    if response.status != 200 || response.body != expected {
                        stop.store(true, Ordering::SeqCst);
                        panic!("client {client}, iteration {i}: {response:?}");
                    }
                    let worker = response
                        .header("x-worker-pid")
                        .and_then(|pid| pid.parse().ok())
                        .expect("a worker pid");
                    *by_worker.entry(worker).or_default() += 1;
                    i += 1;
                }
                (i, by_worker)
            })
        })
        .collect();
    let results: Vec<_> = clients
        .into_iter()
        .map(|client| {
            client.join().unwrap_or_else(|_| panic!("a client failed:\n{}", nginx.error_log()))
        })
        .collect();

    let mut expected: BTreeSet<Peer> =
        [Peer::new("127.0.0.1:9000"), Peer::new("127.0.0.1:9001").backup()].into();
    for (client, (iterations, by_worker)) in results.iter().enumerate() {
        assert!(*iterations >= MIN_ITERATIONS, "client {client}: {iterations} iterations");
        assert!(
            by_worker.len() == 2 && by_worker.values().all(|&n| n >= MIN_PER_WORKER),
            "client {client}: changes by worker {by_worker:?} in {iterations} iterations"
        );
        assert!(by_worker.keys().all(|pid| workers.contains(pid)), "{by_worker:?} {workers:?}");
        expected.extend((iterations - KEPT..*iterations).map(|i| extra_peer(client, i)));
    }

    let before = describe(&nginx, "u");
    assert_eq!(before.iter().cloned().collect::<BTreeSet<Peer>>(), expected, "{before:#?}");
    assert_eq!(before.len(), expected.len(), "{before:#?}");
    assert_eq!(parse_state(&read(&path)), before, "the file is the last state in shared memory");
    nginx.reload();
    assert_eq!(describe(&nginx, "u"), before, "after the reload");
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 5. Broken files and bad placements fail `nginx -t`, naming the file and the line.
// ---------------------------------------------------------------------------------------------

/// `nginx -t` of `http` (plus the eval server, for a port to listen on); panics unless it fails.
/// Returns what nginx printed.
fn check_fails(http: &str) -> String {
    let (ok, output) = check(http);
    assert!(!ok, "nginx -t passed:\n{output}\nconfiguration:\n{http}");
    output
}

/// `nginx -t` of `http` plus the eval server: (passed, what nginx printed).
fn check(http: &str) -> (bool, String) {
    Config::new().http(http).http(&eval_server()).check()
}

/// The message nginx prints for a refused state file, up to where nginx names the directive.
fn refusal(path: &Path, line: usize, reason: &str) -> String {
    format!("[emerg] invalid state file \"{}\" line {line}: {reason} in ", path.display())
}

#[test]
fn broken_state_files_fail_nginx_t_with_the_file_and_the_line() {
    let dir = StateDir::new();
    // A state file reads back what nginx accepts in a configuration (up to 2^32 - 1), not only
    // the API's ranges: the module writes configured peers too.
    let weight = "weight must be an integer from 1 to 4294967295";
    let cases: Vec<(&str, &[u8], usize, String)> = vec![
        (
            "garbage",
            b"\x89PNG\r\n\x1a\n",
            1,
            "unknown directive \"\\x89PNG\" (expected \"server\")".into(),
        ),
        (
            "a config block",
            b"# ok\nupstream u {\n",
            2,
            "unknown directive \"upstream\" (expected \"server\")".into(),
        ),
        (
            "bad address",
            b"server 127.0.0.1:9000;\nserver 127.0.0.1:0;\n",
            2,
            "invalid server address \"127.0.0.1:0\": the port must be an integer from 1 to 65535"
                .into(),
        ),
        (
            "no port",
            b"server 127.0.0.1;\n",
            1,
            "invalid server address \"127.0.0.1\": a port is required".into(),
        ),
        (
            "host name",
            b"server localhost:9000;\n",
            1,
            "host names are not supported: \"localhost:9000\"".into(),
        ),
        ("weight out of range", b"server 127.0.0.1:9000 weight=4294967296;\n", 1, weight.into()),
        ("weight zero", b"server 127.0.0.1:9000 weight=0;\n", 1, weight.into()),
        (
            "max_fails out of range",
            b"server 127.0.0.1:9000 max_fails=-1;\n",
            1,
            "max_fails must be an integer from 0 to 4294967295".into(),
        ),
        (
            "fail_timeout out of range",
            b"server 127.0.0.1:9000 fail_timeout=1193047h;\n",
            1,
            "fail_timeout must be an integer from 0 to 4294967295".into(),
        ),
        (
            "max_conns out of range",
            b"server 127.0.0.1:9000 max_conns=4294967296;\n",
            1,
            "max_conns must be an integer from 0 to 4294967295".into(),
        ),
        (
            "unknown parameter",
            b"server 127.0.0.1:9000 slow_start=10s;\n",
            1,
            "unknown parameter \"slow_start=10s\"".into(),
        ),
        (
            "truncated: last line without ;",
            b"server 127.0.0.1:9000;\nserver 127.0.0.1:9001 weight=2\n",
            2,
            "missing \";\": the line may have been cut short".into(),
        ),
        (
            "no newline at the end",
            b"server 127.0.0.1:9000;\nserver 127.0.0.1:9001;",
            2,
            "no newline at the end of the file: it may have been cut short".into(),
        ),
        ("empty file", b"", 1, "no servers: an upstream needs at least one".into()),
        ("only comments", b"# a\n# b\n", 2, "no servers: an upstream needs at least one".into()),
        (
            "only backups",
            b"server 127.0.0.1:9000 backup;\n",
            1,
            "no primary server: an upstream needs at least one that is not \"backup\"".into(),
        ),
        (
            "NUL bytes",
            b"server 127.0.0.1:9000;\n\0\0\0\0",
            2,
            "a NUL byte: the file may be damaged".into(),
        ),
        (
            "two directives on a line",
            b"server 127.0.0.1:9000; server 127.0.0.1:9001;\n",
            1,
            "unexpected text after \";\": one server per line, comments on lines of their own"
                .into(),
        ),
    ];
    assert!(cases.len() >= 10);
    for (i, (what, content, line, reason)) in cases.iter().enumerate() {
        let path = dir.file(&format!("case-{i}.state"));
        fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        let output = check_fails(&upstream("u", &["127.0.0.1:9999"], &path));
        let message = refusal(&path, *line, reason);
        assert!(output.contains(&message), "{what}: expected {message:?} in:\n{output}");
        assert!(output.contains("nginx.conf:"), "{what}: no configuration location in:\n{output}");
        assert_eq!(fs::read(&path).expect("still there"), *content, "{what}: the file was changed");
    }
}

#[test]
fn unreadable_misplaced_and_unwritable_state_files_fail_nginx_t() {
    let dir = StateDir::new();

    // The master runs as root, which reads a file whatever its mode (CAP_DAC_OVERRIDE), so a
    // chmod 000 file is no read error for it (and the workers never read the file: they replace
    // it). A read that fails for root too: a symbolic link loop.
    let looped = dir.file("loop.state");
    std::os::unix::fs::symlink(&looped, &looped).expect("symlink");
    let output = check_fails(&upstream("u", &["127.0.0.1:9999"], &looped));
    let message = format!(
        "[emerg] cannot read state file \"{}\": Too many levels of symbolic links (os error 40) in ",
        looped.display()
    );
    assert!(output.contains(&message), "expected {message:?} in:\n{output}");

    // The mode-000 file is read indeed: its content is what gets refused.
    let locked = dir.file("mode-000.state");
    fs::write(&locked, "server 127.0.0.1:9000 weight=0;\n").expect("write");
    set_mode(&locked, 0o000);
    let output = check_fails(&upstream("u", &["127.0.0.1:9999"], &locked));
    let message = refusal(&locked, 1, "weight must be an integer from 1 to 4294967295");
    assert!(output.contains(&message), "expected {message:?} in:\n{output}");

    // A directory.
    let subdir = dir.file("state.d");
    fs::create_dir(&subdir).expect("mkdir");
    let output = check_fails(&upstream("u", &["127.0.0.1:9999"], &subdir));
    let message = format!("[emerg] state file \"{}\" is a directory in ", subdir.display());
    assert!(output.contains(&message), "expected {message:?} in:\n{output}");

    // A path whose parent is a file.
    let file = dir.file("plain");
    fs::write(&file, "").expect("write");
    let below_file = file.join("u.state");
    let output = check_fails(&upstream("u", &["127.0.0.1:9999"], &below_file));
    let message = format!(
        "[emerg] state file \"{}\": \"{}\" is not a directory in ",
        below_file.display(),
        file.display()
    );
    assert!(output.contains(&message), "expected {message:?} in:\n{output}");

    // A directory that does not exist.
    let missing = dir.file("missing/u.state");
    let output = check_fails(&upstream("u", &["127.0.0.1:9999"], &missing));
    let message = format!(
        "[emerg] state file \"{}\": directory \"{}\": No such file or directory (os error 2) in ",
        missing.display(),
        dir.file("missing").display()
    );
    assert!(output.contains(&message), "expected {message:?} in:\n{output}");

    // A directory the workers cannot write: root's, mode 755 (like the test prefixes).
    let roots = StateDir::owned_by_root();
    let unwritable = roots.file("u.state");
    let output = check_fails(&upstream("u", &["127.0.0.1:9999"], &unwritable));
    let (uid, _) = worker_user();
    let message = format!(
        "[emerg] state file \"{}\": the workers (uid {uid}) cannot write to directory \"{}\" \
         (owner 0, mode 755) in ",
        unwritable.display(),
        roots.path.display()
    );
    assert!(output.contains(&message), "expected {message:?} in:\n{output}");
    assert!(!unwritable.exists());
    // Mode 1777 (like /tmp) is fine.
    set_mode(&roots.path, 0o1777);
    let (ok, output) = check(&upstream("u", &["127.0.0.1:9999"], &unwritable));
    assert!(ok, "{output}");
}

/// Writes `text` as `name` in `dir` and returns its path, for `include`: a configuration file
/// whose line numbers the test knows.
fn include_file(dir: &StateDir, name: &str, text: &str) -> PathBuf {
    let path = dir.file(name);
    fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

#[test]
fn a_state_file_needs_a_zone_its_own_path_and_a_balancer_that_takes_its_servers() {
    let dir = StateDir::new();
    let path = dir.file("u.state");

    // No zone: the error names the directive's file and line.
    let conf = include_file(
        &dir,
        "no-zone.conf",
        &format!(
            "upstream u {{\n    server 127.0.0.1:9000;\n    dynamic_state_file {};\n}}\n",
            path.display()
        ),
    );
    let output = check_fails(&format!("include {};", conf.display()));
    let message = format!(
        "[emerg] \"dynamic_state_file\" needs a \"zone\" in upstream \"u\" in {}:3",
        conf.display()
    );
    assert!(output.contains(&message), "expected {message:?} in:\n{output}");

    // The same file in two upstreams.
    let conf = include_file(
        &dir,
        "twice.conf",
        &format!(
            "upstream a {{\n    zone a 64k;\n    server 127.0.0.1:9000;\n    dynamic_state_file {p};\n}}\n\
             upstream b {{\n    zone b 64k;\n    server 127.0.0.1:9000;\n    dynamic_state_file {p};\n}}\n",
            p = path.display()
        ),
    );
    let output = check_fails(&format!("include {};", conf.display()));
    let message = format!(
        "[emerg] state file \"{}\" is already used by upstream \"a\" in {}:9",
        path.display(),
        conf.display()
    );
    assert!(output.contains(&message), "expected {message:?} in:\n{output}");

    // A directive given twice in one upstream.
    let output = check_fails(&format!(
        "upstream u {{ zone u 64k; server 127.0.0.1:9000; dynamic_state_file {p}; dynamic_state_file {p}; }}",
        p = path.display()
    ));
    assert!(
        output.contains("[emerg] \"dynamic_state_file\" directive is duplicate in "),
        "{output}"
    );

    // Backup servers in the file of an upstream whose balancer has no backup list.
    fs::write(&path, "server 127.0.0.1:9000;\nserver 127.0.0.1:9001 backup;\n").expect("write");
    let conf = include_file(
        &dir,
        "ip-hash.conf",
        &format!(
            "upstream u {{\n    zone u 64k;\n    ip_hash;\n    server 127.0.0.1:9000;\n    dynamic_state_file {};\n}}\n",
            path.display()
        ),
    );
    let output = check_fails(&format!("include {};", conf.display()));
    let message = format!(
        "[emerg] state file \"{}\" has backup servers, which the balancer of upstream \"u\" does \
         not support in {}:5",
        path.display(),
        conf.display()
    );
    assert!(output.contains(&message), "expected {message:?} in:\n{output}");
    // The same file is fine with round robin.
    let (ok, output) = check(&upstream("u", &["127.0.0.1:9000"], &path));
    assert!(ok, "{output}");
}

/// One file named two ways (through a symbolic link to its directory, or with `..`) is still one
/// file: nginx must refuse it as for the same spelling, not wait forever for its own lock.
#[test]
fn one_state_file_spelled_two_ways_in_two_upstreams_is_refused() {
    let dir = StateDir::new();
    let path = dir.file("u.state");
    let link = dir.file("link");
    std::os::unix::fs::symlink(&dir.path, &link).expect("symlink");
    fs::create_dir(dir.file("sub")).expect("mkdir");
    let spellings = [link.join("u.state"), dir.file("sub/../u.state")];
    for other in spellings {
        let config = Config::new()
            .http(&upstream("a", &["127.0.0.1:9000"], &path))
            .http(&upstream("b", &["127.0.0.1:9000"], &other))
            .http(&eval_server());
        let Some((ok, output)) = config.check_within(Duration::from_secs(10)) else {
            panic!(
                "nginx -t did not finish in 10 s with {} and {} (it waits for its own lock)",
                path.display(),
                other.display()
            );
        };
        assert!(!ok, "{output}");
        assert!(output.contains("is already used by upstream \"a\""), "{output}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. A failed write is the caller's error, and logged.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_failed_write_is_returned_and_logged_and_the_next_change_writes_again() {
    let dir = StateDir::new();
    let path = dir.file("u.state");
    let nginx =
        Config::new().http(&upstream("u", &["127.0.0.1:9000"], &path)).http(&eval_server()).start();
    assert_eq!(call(&nginx, "dynamic.add_peer('u', '127.0.0.1:9001')"), "boolean true");
    let saved = vec![Peer::new("127.0.0.1:9000"), Peer::new("127.0.0.1:9001")];
    assert_state_file(&path, "u", &saved, "the first change");

    set_mode(&dir.path, 0o555);
    let log_before = nginx.error_log().len();
    let not_saved = format!(
        "the change was made but not saved to state file \"{}\": Permission denied (os error 13)",
        path.display()
    );
    assert_eq!(
        call(&nginx, "dynamic.add_peer('u', '127.0.0.1:9002', { weight = 2 })"),
        format!("nil, string {not_saved}")
    );
    let mut now = saved.clone();
    now.push(Peer::new("127.0.0.1:9002").weight(2));
    assert_eq!(describe(&nginx, "u"), now, "the change was made");
    assert_state_file(&path, "u", &saved, "a failed write");
    assert_eq!(dir.names(), ["u.state", "u.state.lock"]);
    let log = log_since(&nginx, log_before);
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(&not_saved)).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("[error]"), "{}", errors[0]);

    set_mode(&dir.path, 0o755);
    assert_eq!(
        call(&nginx, "dynamic.update_peer('u', '127.0.0.1:9000', { max_fails = 3 })"),
        "boolean true"
    );
    now[0].max_fails = 3;
    assert_eq!(describe(&nginx, "u"), now);
    assert_state_file(&path, "u", &now, "the next change");
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 7. The old generation cannot change an upstream once a reload has read its file.
// ---------------------------------------------------------------------------------------------

/// Locations on `%%PORT_1%%` whose requests keep an old worker busy across a reload.
///
/// - `/late` waits until its worker is told to exit, then tries to add a peer.
/// - `/hammer` changes `max_conns` of 127.0.0.1:9000 to 1, 2, 3... every millisecond until a
///   change is refused, then prints the last value accepted and the refusal.
const OLD_WORKER_LOCATIONS: &str = r#"
server {
    listen 127.0.0.1:%%PORT_1%%;
    default_type text/plain;
    location = /late {
        content_by_lua_block {
            local dynamic = require "ngx.dynamic"
            ngx.log(ngx.NOTICE, "late request waits for the reload")
            local deadline = ngx.now() + 30
            while not ngx.worker.exiting() and ngx.now() < deadline do
                ngx.sleep(0.005)
            end
            local ok, err = dynamic.add_peer("u", "127.0.0.1:9555")
            ngx.say(tostring(ngx.worker.exiting()), "|", tostring(ok), "|", tostring(err))
        }
    }
    location = /hammer {
        content_by_lua_block {
            local dynamic = require "ngx.dynamic"
            local last, err = 0, "deadline"
            local deadline = ngx.now() + 30
            while ngx.now() < deadline do
                local ok, e = dynamic.update_peer("u", "127.0.0.1:9000", { max_conns = last + 1 })
                if not ok then
                    err = e
                    break
                end
                last = last + 1
                if last == 20 then
                    ngx.log(ngx.NOTICE, "hammer is changing the upstream")
                end
                ngx.sleep(0.001)
            end
            ngx.say(last, "|", err)
        }
    }
}
"#;

const EXITING: &str =
    "this nginx worker is shutting down (reload or stop): the change was not made";
const SUPERSEDED: &str = "nginx is reloading this upstream: the change was not made (retry it)";

fn old_worker_nginx(path: &Path) -> Nginx {
    Config::new()
        .http(&upstream("u", &["127.0.0.1:9000"], path))
        .http(OLD_WORKER_LOCATIONS)
        .http(&eval_server())
        .start()
}

#[test]
fn a_change_through_an_old_worker_after_a_reload_is_refused_and_lands_nowhere() {
    let dir = StateDir::new();
    let path = dir.file("u.state");
    let mut nginx = old_worker_nginx(&path);
    assert_eq!(call(&nginx, "dynamic.add_peer('u', '127.0.0.1:9001')"), "boolean true");
    let state = vec![Peer::new("127.0.0.1:9000"), Peer::new("127.0.0.1:9001")];

    let port = nginx.ports()[1];
    let late = thread::spawn(move || get(port, "/late"));
    nginx.wait_for_log("late request waits for the reload", 1);
    nginx.reload();
    let response = late
        .join()
        .unwrap_or_else(|_| panic!("the late request failed; error log:\n{}", nginx.error_log()));
    assert_eq!(response.status, 200, "{response:?}");
    let (exiting, outcome) = response.body.trim_end().split_once('|').expect("a result");
    assert_eq!(exiting, "true", "{response:?}");
    assert!(
        outcome == format!("nil|{EXITING}") || outcome == format!("nil|{SUPERSEDED}"),
        "{outcome}"
    );
    assert_eq!(describe(&nginx, "u"), state, "the refused peer is not in the new zone");
    assert_state_file(&path, "u", &state, "a refused change");
    nginx.stop();
}

#[test]
fn changes_racing_a_reload_are_either_kept_or_refused() {
    let dir = StateDir::new();
    let path = dir.file("u.state");
    let mut nginx = old_worker_nginx(&path);
    let port = nginx.ports()[1];
    let hammer = thread::spawn(move || get(port, "/hammer"));
    nginx.wait_for_log("hammer is changing the upstream", 1);
    nginx.reload();
    let response = hammer
        .join()
        .unwrap_or_else(|_| panic!("the hammer request failed; error log:\n{}", nginx.error_log()));
    assert_eq!(response.status, 200, "{response:?}");
    let (last, refusal) = response.body.trim_end().split_once('|').expect("a result");
    let last: u32 = last.parse().expect("a count");
    assert!(last >= 20, "{response:?}");
    assert!(refusal == EXITING || refusal == SUPERSEDED, "{refusal}");
    eprintln!("the old worker made {last} changes, then: {refusal}");
    // Every accepted change is kept, no refused one is.
    let state = vec![Peer::new("127.0.0.1:9000").max_conns(last)];
    assert_eq!(describe(&nginx, "u"), state, "the new generation has the last accepted change");
    assert_state_file(&path, "u", &state, "the race");
    nginx.stop();
}
