//! Bounded churn: at least 20,000 peer changes (hundreds of thousands in practice) from both
//! workers at once, while keep-alive clients send requests through the upstream being changed and
//! one of its peers refuses every connection (so requests keep failing over to the next peer).
//!
//! The upstream's configured peers — three healthy ones, the refusing one and a healthy backup —
//! are never touched by the churn. Every other peer is one of a pool of extra addresses, each
//! with a healthy backend of its own on a distinct loopback address, which a Lua driver inside
//! nginx adds (some as backup, some down), removes, takes down, brings up, re-weights and
//! re-tunes at random. The test calls that driver from two threads at once over fresh
//! connections, so both workers change the lists concurrently, and steers the primary list's
//! size across 64 and 128 peers (nginx 1.22's one-word `tried` bitmap and twice it) and back
//! down, several times.
//!
//! Since a healthy primary peer always remains, every request must succeed: no non-2xx answer,
//! no failed exchange. Afterwards, with every extra peer removed, the zone must have exactly the
//! free memory it had before the churn (removed peers are all given back), and `describe_zone`
//! must show the configured peers as configured. No worker may have crashed or logged an alert.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::{free_ports, get, Backend, Config, Load, LoadSpec, Nginx};

/// Extra peer addresses the churn draws from, each with its own backend.
const POOL: usize = 170;
/// Changes the churn must make at least.
const MIN_CHANGES: u64 = 20_000;
/// Times the primary list must rise above [`HIGH_MARK`] and fall below [`LOW_MARK`] at least.
const MIN_CYCLES: u32 = 2;
/// The primary list size the driver steers towards while rising, and the size at which the
/// test turns it back down (above 128: two words of `tried` bitmap were not enough either).
const HIGH_TARGET: usize = 150;
const HIGH_MARK: usize = 140;
/// The size the driver steers towards while falling, and the size at which it turns it up again
/// (below 64: one `tried` word).
const LOW_TARGET: usize = 8;
const LOW_MARK: usize = 20;
/// Operations per driver call: short, since a call holds its worker's event loop.
const OPS_PER_CALL: usize = 50;
/// A driver thread's pause between calls, so that the workers spend a good share of their time
/// serving the load (whose requests the changes must not disturb) rather than changing peers.
const DRIVER_PAUSE: Duration = Duration::from_millis(2);
/// Concurrent driver calls (each on a fresh connection, so each lands on either worker).
const DRIVERS: usize = 2;
/// Keep-alive load clients.
const CLIENTS: usize = 12;
/// The churn runs at least this long, and then until its goals are met, but never longer than
/// [`CHURN_LIMIT`]: the test then fails with the figures reached.
const CHURN_TIME: Duration = Duration::from_secs(20);
const CHURN_LIMIT: Duration = Duration::from_secs(25);
/// Driver calls at most, whatever the time.
const MAX_CALLS: u64 = 20_000;
/// Bounded retries for the checks at the end (zone usage from both workers).
const END_ATTEMPTS: usize = 200;

/// The Lua driver, kept in `package.loaded` by `init_by_lua_block`. `%%POOL%%` is replaced with
/// the extra addresses, `%%CONFIGURED%%` with the configured ones.
const DRIVER: &str = r#"
local dynamic = require "ngx.dynamic"
local U = "churn"
local POOL = { %%POOL%% }
local CONFIGURED = { %%CONFIGURED%% }
local SYNC_EVERY = 20

local configured = {}
for _, name in ipairs(CONFIGURED) do
    configured[name] = true
end

local M = {}

-- What this call believes the upstream holds: extra peers present (an array for random picks,
-- with each name's index), whether each is a backup, and the primary list's size. Resynced from
-- describe_zone regularly, since the other worker changes the lists too.
local function sync(s)
    local peers, err = dynamic.describe_zone(U)
    if not peers then
        return nil, err
    end
    s.list, s.index, s.backup, s.primary = {}, {}, {}, 0
    for _, p in ipairs(peers) do
        if not p.backup then
            s.primary = s.primary + 1
        end
        if not configured[p.name] then
            s.list[#s.list + 1] = p.name
            s.index[p.name] = #s.list
            s.backup[p.name] = p.backup or false
        end
    end
    if s.primary > s.max then
        s.max = s.primary
    end
    if s.primary < s.min then
        s.min = s.primary
    end
    return true
end

local function forget(s, name)
    local i = s.index[name]
    if not i then
        return
    end
    local last = s.list[#s.list]
    s.list[i] = last
    s.index[last] = i
    s.list[#s.list] = nil
    s.index[name] = nil
    if not s.backup[name] then
        s.primary = s.primary - 1
    end
    s.backup[name] = nil
end

local function remember(s, name, backup)
    if s.index[name] then
        return
    end
    s.list[#s.list + 1] = name
    s.index[name] = #s.list
    s.backup[name] = backup
    if not backup then
        s.primary = s.primary + 1
    end
end

local function pick_absent(s)
    for _ = 1, 8 do
        local name = POOL[math.random(#POOL)]
        if not s.index[name] then
            return name
        end
    end
end

local OPS = { "add", "remove", "down", "up", "weight", "options" }

-- n random operations steering the primary list towards `target` peers.
function M.run(n, target)
    local s = { changes = 0, conflicts = 0, errors = 0, skipped = 0, max = 0, min = 1e9,
                messages = {} }
    local ok, err = sync(s)
    if not ok then
        return nil, "describe_zone: " .. err
    end
    for i = 1, n do
        local op
        local r = math.random()
        if #s.list == 0 then
            op = "add"
        elseif s.primary < target and r < 0.5 then
            op = "add"
        elseif s.primary > target and r < 0.5 then
            op = "remove"
        else
            op = OPS[math.random(#OPS)]
        end
        local name, res, backup
        if op == "add" then
            name = pick_absent(s)
            if name then
                backup = math.random() < 0.1
                res, err = dynamic.add_peer(U, name, {
                    weight = math.random(1, 5),
                    max_fails = math.random(0, 3),
                    fail_timeout = math.random(1, 30),
                    down = math.random() < 0.2,
                    backup = backup,
                })
            end
        else
            name = s.list[math.random(#s.list)]
            if op == "remove" then
                res, err = dynamic.remove_peer(U, name)
            elseif op == "down" then
                res, err = dynamic.set_peer_down(U, name)
            elseif op == "up" then
                res, err = dynamic.set_peer_down(U, name, false)
            elseif op == "weight" then
                res, err = dynamic.update_peer(U, name, { weight = math.random(1, 10) })
            else
                res, err = dynamic.update_peer(U, name, { max_fails = math.random(0, 5),
                    fail_timeout = math.random(1, 60), max_conns = math.random(0, 8) })
            end
        end
        if not name then
            s.skipped = s.skipped + 1
        elseif res then
            s.changes = s.changes + 1
            if op == "add" then
                remember(s, name, backup)
            elseif op == "remove" then
                forget(s, name)
            end
        elseif err:find("already exists", 1, true) then
            -- The other worker added it meanwhile.
            s.conflicts = s.conflicts + 1
            remember(s, name, false)
        elseif err:find("not found", 1, true) then
            -- The other worker removed it meanwhile.
            s.conflicts = s.conflicts + 1
            forget(s, name)
        else
            s.errors = s.errors + 1
            if #s.messages < 10 then
                s.messages[#s.messages + 1] = op .. " " .. name .. ": " .. err
            end
        end
        if i % SYNC_EVERY == 0 then
            ok, err = sync(s)
            if not ok then
                return nil, "describe_zone: " .. err
            end
        end
    end
    ok, err = sync(s)
    if not ok then
        return nil, "describe_zone: " .. err
    end
    local usage, uerr = dynamic.zone_usage(U)
    if not usage then
        return nil, "zone_usage: " .. uerr
    end
    s.free = usage.free
    return s
end

-- Removes every extra peer; returns how many it removed and how many peers are left.
function M.cleanup()
    local peers, err = dynamic.describe_zone(U)
    if not peers then
        return nil, err
    end
    local removed = 0
    for _, p in ipairs(peers) do
        if not configured[p.name] then
            local ok, rerr = dynamic.remove_peer(U, p.name)
            if not ok then
                return nil, "remove_peer " .. p.name .. ": " .. rerr
            end
            removed = removed + 1
        end
    end
    return removed, #peers - removed
end

package.loaded.churn_driver = M
"#;

/// The nginx configuration: the upstream, a proxy on `/`, and the Lua locations the test drives.
fn config(configured: &[String], backup: &str, pool: &[String]) -> Config {
    let quoted =
        |names: &[String]| names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
    let mut all_configured = configured.to_vec();
    all_configured.push(backup.to_owned());
    let driver = DRIVER
        .replace("%%POOL%%", &quoted(pool))
        .replace("%%CONFIGURED%%", &quoted(&all_configured));
    // The last configured primary refuses connections: max_fails=0 keeps it in rotation, so
    // requests fail over all the time instead of once per fail_timeout.
    let (refusing, healthy) = configured.split_last().expect("configured peers");
    let mut servers: String = healthy.iter().map(|a| format!("    server {a};\n")).collect();
    servers.push_str(&format!("    server {refusing} weight=5 max_fails=0;\n"));
    servers.push_str(&format!("    server {backup} backup;\n"));
    Config::new().workers(2).http(&format!(
        r#"
init_by_lua_block {{
{driver}
}}

init_worker_by_lua_block {{
    math.randomseed(ngx.worker.pid() * 1000 + ngx.now() * 1000 % 1000)
}}

log_format churn "$status $upstream_addr";

upstream churn {{
    zone churn 1m;
{servers}    keepalive 32;
}}

server {{
    listen 127.0.0.1:%%PORT%%;

    location / {{
        proxy_pass http://churn;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_next_upstream error timeout http_502;
        proxy_next_upstream_tries 0;
        proxy_connect_timeout 5s;
        # Every peer a request tried, read from the request after the peers were released (and
        # maybe removed and freed): each must be a name the test knows.
        access_log logs/churn.log churn;
    }}

    location = /churn {{
        default_type text/plain;
        content_by_lua_block {{
            local s, err = package.loaded.churn_driver.run(tonumber(ngx.var.arg_n),
                                                           tonumber(ngx.var.arg_target))
            if not s then
                ngx.say("failed ", ngx.worker.pid(), " ", err)
                return
            end
            ngx.say("pid=", ngx.worker.pid(), " changes=", s.changes, " conflicts=",
                    s.conflicts, " errors=", s.errors, " skipped=", s.skipped, " max=", s.max,
                    " min=", s.min, " size=", s.primary, " free=", s.free)
            for _, m in ipairs(s.messages) do
                ngx.say(m)
            end
        }}
    }}

    location = /cleanup {{
        default_type text/plain;
        content_by_lua_block {{
            local removed, left = package.loaded.churn_driver.cleanup()
            if not removed then
                ngx.say("failed ", left)
                return
            end
            ngx.say(removed, " ", left)
        }}
    }}

    location = /usage {{
        default_type text/plain;
        content_by_lua_block {{
            local usage, err = require("ngx.dynamic").zone_usage("churn")
            if not usage then
                ngx.say("failed ", err)
                return
            end
            ngx.say(ngx.worker.pid(), " ", usage.size, " ", usage.free)
        }}
    }}

    location = /describe {{
        default_type text/plain;
        content_by_lua_block {{
            local peers, err = require("ngx.dynamic").describe_zone("churn")
            if not peers then
                ngx.say("failed ", err)
                return
            end
            for _, p in ipairs(peers) do
                ngx.say(p.name, " server=", p.server, " weight=", p.weight, " max_fails=",
                        p.max_fails, " fail_timeout=", p.fail_timeout, " max_conns=",
                        p.max_conns, " down=", tostring(p.down or false), " backup=",
                        tostring(p.backup or false), " conns=", p.conns)
            end
        }}
    }}
}}
"#
    ))
}

/// One `/churn` answer.
#[derive(Debug, Default)]
struct CallReport {
    pid: i32,
    changes: u64,
    conflicts: u64,
    errors: u64,
    max: usize,
    min: usize,
    free: usize,
    messages: Vec<String>,
}

fn parse_call(body: &str) -> CallReport {
    let mut lines = body.lines();
    let first = lines.next().unwrap_or_default();
    assert!(first.starts_with("pid="), "the churn driver failed: {body}");
    let fields: BTreeMap<&str, &str> =
        first.split(' ').filter_map(|kv| kv.split_once('=')).collect();
    let field = |k: &str| -> u64 {
        fields
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in driver answer {first:?}"))
    };
    CallReport {
        pid: field("pid") as i32,
        changes: field("changes"),
        conflicts: field("conflicts"),
        errors: field("errors"),
        max: field("max") as usize,
        min: field("min") as usize,
        free: field("free") as usize,
        messages: lines.map(str::to_owned).collect(),
    }
}

/// Where the churn stands, shared by the driver threads.
#[derive(Debug)]
struct Progress {
    calls: u64,
    changes: u64,
    conflicts: u64,
    errors: u64,
    error_messages: Vec<String>,
    changes_by_pid: BTreeMap<i32, u64>,
    max_size: usize,
    min_size_after_high: usize,
    min_free: usize,
    rising: bool,
    cycles: u32,
    started: Instant,
}

impl Progress {
    fn goals_met(&self) -> bool {
        self.changes >= MIN_CHANGES && self.cycles >= MIN_CYCLES && self.changes_by_pid.len() >= 2
    }

    fn go_on(&self) -> bool {
        let elapsed = self.started.elapsed();
        self.calls < MAX_CALLS
            && elapsed < CHURN_LIMIT
            && (elapsed < CHURN_TIME || !self.goals_met())
    }

    fn record(&mut self, call: &CallReport) {
        self.calls += 1;
        self.changes += call.changes;
        self.conflicts += call.conflicts;
        self.errors += call.errors;
        for m in &call.messages {
            if self.error_messages.len() < 20 {
                self.error_messages.push(m.clone());
            }
        }
        *self.changes_by_pid.entry(call.pid).or_default() += call.changes;
        self.max_size = self.max_size.max(call.max);
        self.min_free = self.min_free.min(call.free);
        if self.rising && call.max >= HIGH_MARK {
            self.rising = false;
        } else if !self.rising && call.min <= LOW_MARK {
            self.min_size_after_high = self.min_size_after_high.min(call.min);
            self.rising = true;
            self.cycles += 1;
        }
    }
}

/// `/usage` (over fresh connections, so from either worker) until `done` says the answers so
/// far, by worker pid, are enough, or a bounded number of attempts. Returns the last answer of
/// each worker.
fn usage_by_worker(
    nginx: &Nginx,
    done: impl Fn(&BTreeMap<i32, usize>) -> bool,
) -> BTreeMap<i32, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..END_ATTEMPTS {
        let body = nginx.get_ok("/usage");
        let parts: Vec<&str> = body.split_whitespace().collect();
        assert_eq!(parts.len(), 3, "zone_usage failed: {body}");
        let pid: i32 = parts[0].parse().expect("pid");
        let free: usize = parts[2].parse().expect("free bytes");
        seen.insert(pid, free);
        if done(&seen) {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    seen
}

/// Raises its flag if dropped while its thread panics.
struct StopAllOnPanic(Arc<AtomicBool>);

impl Drop for StopAllOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// What the access log of the proxied requests says: `$status $upstream_addr` per request.
struct AccessLog {
    requests: u64,
    /// Requests that tried more than one peer.
    retried: u64,
    /// The most peers one request tried, and an example line.
    most_tried: (usize, String),
    /// Lines with a status other than 200 or a peer name the test never configured or added
    /// (what a request would print if it read the name of a peer freed under it); the first ones.
    bad: Vec<String>,
}

impl AccessLog {
    fn read(nginx: &Nginx, configured: &[String], backup: &str, pool: &[String]) -> AccessLog {
        let path = nginx.prefix().join("logs/churn.log");
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let text = String::from_utf8_lossy(&text);
        let known: BTreeSet<&str> =
            configured.iter().chain(pool).map(String::as_str).chain([backup]).collect();
        let mut log =
            AccessLog { requests: 0, retried: 0, most_tried: (0, String::new()), bad: Vec::new() };
        for line in text.lines() {
            log.requests += 1;
            let (status, addrs) = line.split_once(' ').unwrap_or((line, ""));
            let addrs: Vec<&str> = addrs.split(", ").collect();
            if addrs.len() > 1 {
                log.retried += 1;
            }
            if addrs.len() > log.most_tried.0 {
                log.most_tried = (addrs.len(), line.to_owned());
            }
            if (status != "200" || addrs.iter().any(|a| !known.contains(a))) && log.bad.len() < 20 {
                log.bad.push(line.to_owned());
            }
        }
        log
    }
}

#[test]
fn churn_under_load_keeps_every_request_and_all_memory() {
    let healthy = Backend::start_many(3);
    let backup = Backend::start();
    let refusing = format!("127.0.0.1:{}", free_ports(1)[0]);
    let extras: Vec<Backend> = (0..POOL)
        .map(|i| Backend::start_on(Ipv4Addr::new(127, 0, 1, u8::try_from(i + 1).expect("pool"))))
        .collect();
    let mut configured: Vec<String> = healthy.iter().map(Backend::addr).collect();
    configured.push(refusing.clone());
    let pool: Vec<String> = extras.iter().map(Backend::addr).collect();

    let nginx = config(&configured, &backup.addr(), &pool).start();
    let workers = nginx.worker_pids();
    assert_eq!(workers.len(), 2, "worker pids");
    let initial_describe = nginx.get_ok("/describe");
    let before = usage_by_worker(&nginx, |seen| workers.iter().all(|w| seen.contains_key(w)));
    let free_before = *before.values().next().expect("a zone_usage answer");
    assert!(
        before.values().all(|&free| free == free_before),
        "workers disagree on the zone's free bytes: {before:?}"
    );
    let zone_size: usize = nginx
        .get_ok("/usage")
        .split_whitespace()
        .nth(1)
        .and_then(|size| size.parse().ok())
        .expect("zone size");

    let load = Load::start(&LoadSpec {
        port: nginx.port(),
        path: "/".into(),
        clients: CLIENTS,
        max_requests: 50_000_000,
        max_duration: CHURN_LIMIT + Duration::from_secs(5),
    });

    let progress = Arc::new(Mutex::new(Progress {
        calls: 0,
        changes: 0,
        conflicts: 0,
        errors: 0,
        error_messages: Vec::new(),
        changes_by_pid: BTreeMap::new(),
        max_size: 0,
        min_size_after_high: usize::MAX,
        min_free: usize::MAX,
        rising: true,
        cycles: 0,
        started: Instant::now(),
    }));
    let failed = Arc::new(AtomicBool::new(false));
    let port = nginx.port();
    let drivers: Vec<_> = (0..DRIVERS)
        .map(|_| {
            let progress = Arc::clone(&progress);
            let failed = Arc::clone(&failed);
            thread::spawn(move || {
                // A driver that fails (panics) stops the other one too.
                let _stop_all = StopAllOnPanic(Arc::clone(&failed));
                let lock = || progress.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    let target = {
                        let p = lock();
                        if !p.go_on() || failed.load(Ordering::SeqCst) {
                            return;
                        }
                        if p.rising {
                            HIGH_TARGET
                        } else {
                            LOW_TARGET
                        }
                    };
                    thread::sleep(DRIVER_PAUSE);
                    let response = get(port, &format!("/churn?n={OPS_PER_CALL}&target={target}"));
                    if response.status != 200 || !response.body.starts_with("pid=") {
                        panic!("/churn: status {}: {}", response.status, response.body);
                    }
                    lock().record(&parse_call(&response.body));
                }
            })
        })
        .collect();
    let mut driver_panics = Vec::new();
    for driver in drivers {
        if let Err(e) = driver.join() {
            driver_panics.push(
                e.downcast_ref::<String>().cloned().unwrap_or_else(|| "driver panicked".into()),
            );
        }
    }
    let churn_time = progress.lock().unwrap_or_else(PoisonError::into_inner).started.elapsed();
    let report = load.stop();
    let progress = Arc::try_unwrap(progress)
        .expect("drivers are done")
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);

    // Every extra peer out, then the zone as it was.
    let mut cleanup = String::new();
    for _ in 0..5 {
        cleanup = nginx.get_ok("/cleanup");
        if cleanup.starts_with("0 ") {
            break;
        }
    }
    // Removed peers still finishing a request are given back by a later call: retried, bounded.
    let free_after =
        usage_by_worker(&nginx, |seen| workers.iter().all(|w| seen.get(w) == Some(&free_before)));
    let final_describe = nginx.get_ok("/describe");
    let workers_after = nginx.worker_pids();
    let log = nginx.error_log();
    let access = AccessLog::read(&nginx, &configured, &backup.addr(), &pool);
    let refused = log.matches("(111: Connection refused) while connecting to upstream").count();
    let crit: Vec<&str> = log.lines().filter(|l| l.contains("[crit]")).collect();
    let no_live = log.matches("no live upstreams").count();

    let known_bodies: BTreeSet<String> = configured
        .iter()
        .chain(&pool)
        .chain([&backup.addr()])
        .map(|a| format!("backend {}\n", a.rsplit(':').next().expect("port")))
        .collect();
    let unknown_bodies: Vec<&String> =
        report.bodies.keys().filter(|b| !known_bodies.contains(*b)).collect();
    let served_by = |addrs: &[String]| -> u64 {
        let bodies: BTreeSet<String> = addrs
            .iter()
            .map(|a| format!("backend {}\n", a.rsplit(':').next().expect("port")))
            .collect();
        report.bodies.iter().filter(|(b, _)| bodies.contains(*b)).map(|(_, n)| n).sum()
    };
    let by_configured = served_by(&configured);
    let by_extras = served_by(&pool);
    let by_backup = served_by(&[backup.addr()]);
    println!(
        "churn summary: {} changes in {:.1}s ({} calls, {} conflicts between workers, {} errors; \
         by worker {:?}), {} requests served ({} 2xx: {} by configured peers, {} by extra peers, \
         {} by the backup; {} connections), {} non-2xx, {} transport errors, {} refused \
         connections failed over, {} 'no live upstreams', max primary list size {}, low after \
         high {}, cycles {}, zone {} bytes, free before {} / lowest {} / after {:?}; access log: {} requests, \
         {} tried more than one peer, at most {} peers tried by one ({:?})",
        progress.changes,
        churn_time.as_secs_f64(),
        progress.calls,
        progress.conflicts,
        progress.errors,
        progress.changes_by_pid,
        report.requests,
        report.ok,
        by_configured,
        by_extras,
        by_backup,
        report.connections,
        report.non_2xx,
        report.transport_errors,
        refused,
        no_live,
        progress.max_size,
        progress.min_size_after_high,
        progress.cycles,
        zone_size,
        free_before,
        progress.min_free,
        free_after,
        access.requests,
        access.retried,
        access.most_tried.0,
        access.most_tried.1,
    );
    // Every failure is counted; the first ones of each client are printed in full.
    for failure in &report.failures {
        println!(
            "failed request at {:?}: status {:?}: {:?}",
            failure.at, failure.status, failure.detail
        );
    }
    let unprinted = (report.non_2xx + report.transport_errors) as usize - report.failures.len();
    if unprinted > 0 {
        println!("... and {unprinted} more failed requests");
    }
    for message in &progress.error_messages {
        println!("unexpected driver error: {message}");
    }

    // The harness fails here on [alert], [emerg] or a worker that exited on a signal.
    nginx.stop();

    assert!(driver_panics.is_empty(), "driver threads failed: {driver_panics:?}");
    assert_eq!(workers_after, workers, "worker pids changed: a worker died");
    assert!(crit.is_empty(), "[crit] lines in the error log:\n{}", crit.join("\n"));
    assert_eq!(report.non_2xx, 0, "non-2xx answers while healthy peers remained");
    assert_eq!(report.transport_errors, 0, "requests without an answer");
    assert!(report.ok > 0, "no request was served");
    assert!(unknown_bodies.is_empty(), "answers from no known backend: {unknown_bodies:?}");
    assert!(
        access.bad.is_empty(),
        "access log lines with a non-200 status or an unknown peer:\n{}",
        access.bad.join("\n")
    );
    assert!(refused > 0, "the refusing peer was never tried: no failover happened");
    assert_eq!(progress.errors, 0, "unexpected driver errors: {:?}", progress.error_messages);
    assert!(progress.changes >= MIN_CHANGES, "only {} changes", progress.changes);
    assert!(progress.changes_by_pid.len() >= 2, "changes by worker: {:?}", progress.changes_by_pid);
    assert!(progress.max_size > 128, "the primary list never grew past 128 peers");
    assert!(progress.cycles >= MIN_CYCLES, "only {} rise-and-fall cycles", progress.cycles);
    assert!(progress.min_size_after_high < 64, "the list never went back below 64 peers");
    assert!(cleanup.starts_with("0 "), "extra peers left after cleanup: {cleanup}");
    for pid in &workers {
        assert_eq!(
            free_after.get(pid),
            Some(&free_before),
            "zone free bytes seen by worker {pid} after the churn (before: {free_before}): \
             {free_after:?}"
        );
    }
    assert_eq!(final_describe, initial_describe, "the upstream after the churn");
    drop(extras);
}
