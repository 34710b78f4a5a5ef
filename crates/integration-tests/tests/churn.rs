//! Bounded churn: at least 20,000 peer changes (hundreds of thousands in practice) from both
//! workers at once, while keep-alive clients send requests through the upstream being changed and
//! one of its peers refuses every connection (so requests keep failing over to the next peer).
//!
//! The upstream's configured peers — three healthy ones, the refusing one and, for the balancers
//! with a backup list, a healthy backup — are never touched by the churn. Every other peer is one
//! of a pool of extra addresses, each with a healthy backend of its own on a distinct loopback
//! address, which a Lua driver inside nginx adds (some as backup where the balancer has a backup
//! list, some down), removes, takes down, brings up, re-weights and re-tunes at random. The test
//! calls that driver from two threads at once over fresh connections, so both workers change the
//! lists concurrently, and steers the primary list's size across 64 and 128 peers (nginx 1.22's
//! one-word `tried` bitmap and twice it) and back down, several times.
//!
//! Each test runs one [`Scenario`]: a balancer, upstream keepalive or not, how many of the added
//! peers are backups, how long the churn lasts, whether nginx's own resolver also adds and
//! removes peers of the upstream (`server name:port resolve`, while a thread of the test changes
//! the DNS answers), and whether the module moves nginx's configuration counter on every change
//! (`dynamic_config_counter every_change`). The runner checks what must hold whatever the
//! scenario and returns the figures ([`Figures`]); each test then judges the failed requests.
//!
//! What must hold: no worker crashes or logs an alert or a `[crit]` line, every request gets an
//! answer from nginx (no failed exchange), every answer comes from a known backend and every peer
//! name in the access log is one the test knows (what a request would print if it read the name
//! of a peer freed under it), the driver meets no unexpected error, and afterwards, with every
//! extra peer removed, the zone has exactly the free memory it had before the churn (removed
//! peers are all given back) and `describe_zone` shows the upstream as it was. With nginx's
//! resolver, that is once its peers are the initial ones again, made anew after the churn: peers
//! it made during the churn keep slab pages in use that the churn's peers shared with them, so
//! the zone has fewer free pages until they go (measured and printed, see [`run`]).
//!
//! Failed requests: on nginx 1.22 ("legacy"), since a healthy primary peer always remains, none
//! may fail. On nginx >= 1.27.3 ("modern") every balancer fails a request with 502 "no live
//! upstreams" when the upstream's configuration counter moved between the request's peer init
//! and one of its peer selections. The module moves it only when a balancer needs it: for `hash
//! ... consistent` and `random` (per-worker tables) on add/remove/weight changes, never for round
//! robin, `least_conn`, `hash` or `ip_hash` within the upstream's capacity; nginx's resolver
//! moves it on every change it makes; `dynamic_config_counter every_change` makes the module move
//! it on every change, for comparison.
//!
//! The churn tests share the machine's two cores badly: they run one at a time ([`SERIAL`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::{free_ports, get, modern, settings, Backend, Config, Dns, Load, LoadSpec};
use integration_tests::{Nginx, NginxVersion};

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
/// Operations per driver call where every change makes the next request of each worker rebuild
/// a table of all peers (consistent hash: 160 points per unit of weight, sorted, milliseconds
/// with 150 peers): the calls then wait behind those requests, and only longer ones make the
/// churn's changes in its time.
const OPS_PER_SLOW_CALL: usize = 250;
/// A driver thread's pause between calls, so that the workers spend a good share of their time
/// serving the load (whose requests the changes must not disturb) rather than changing peers.
const DRIVER_PAUSE: Duration = Duration::from_millis(2);
/// Concurrent driver calls (each on a fresh connection, so each lands on either worker).
const DRIVERS: usize = 2;
/// Keep-alive load clients.
const CLIENTS: usize = 12;
/// The churn runs at least its scenario's time, and then until its goals are met, but never
/// longer than that time and this grace: the test then fails with the figures reached.
const CHURN_GRACE: Duration = Duration::from_secs(5);
/// Driver calls at most, whatever the time.
const MAX_CALLS: u64 = 20_000;
/// Bounded retries for the checks at the end (zone usage from both workers).
const END_ATTEMPTS: usize = 200;
/// The share of added peers the driver makes backups, for the balancers with a backup list.
const BACKUP_SHARE: f64 = 0.1;
/// A modern build may fail fewer than one request in this many where the module never moves
/// the configuration counter.
const BAR: u64 = 100_000;
/// Failed requests printed in full, at most (all are counted).
const PRINTED_FAILURES: usize = 20;

/// The name nginx's resolver resolves in [`Scenario::resolve`] scenarios.
const DNS_NAME: &str = "backends.test";
/// The TTL of the test's DNS answers; `valid=1s` in the configuration says the same to nginx.
const DNS_TTL: u32 = 1;
/// The addresses `backends.test` may resolve to, each with a backend on one common port.
const RESOLVED: [Ipv4Addr; 4] = [
    Ipv4Addr::new(127, 0, 2, 1),
    Ipv4Addr::new(127, 0, 2, 2),
    Ipv4Addr::new(127, 0, 2, 3),
    Ipv4Addr::new(127, 0, 2, 4),
];
/// What `backends.test` resolves to before and after the churn (indexes into [`RESOLVED`]).
const DNS_INITIAL: &[usize] = &[0, 1];
/// What the DNS flipper answers in turn during the churn, each different from the one before.
const DNS_SUBSETS: &[&[usize]] =
    &[&[1, 2], &[0, 2, 3], &[3], &[0, 1, 2, 3], &[1], &[0, 1], &[2, 3]];
/// How often the DNS flipper changes the answers.
const DNS_FLIP_EVERY: Duration = Duration::from_secs(1);
/// How long nginx's resolver gets to show the expected peers (2-3 s with `valid=1s`).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(15);

/// The churn tests, one at a time: each loads both cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// True (after saying so) when the nginx under test is older than 1.27.3: the test then returns
/// and passes.
fn skipped(test: &str) -> bool {
    if modern() {
        return false;
    }
    let (major, minor, patch) = NginxVersion::MODERN;
    println!(
        "skipped {test}: needs nginx >= {major}.{minor}.{patch} (this is nginx {})",
        settings().nginx_version
    );
    true
}

/// What one churn run is made of.
#[derive(Clone, Debug)]
struct Scenario {
    /// Printed in the summary line.
    name: &'static str,
    /// The balancer directive in the upstream block: `""` (round robin), `"least_conn;"`,
    /// `"hash $request_id consistent;"`...
    balancer: &'static str,
    /// `keepalive 32;` in the upstream block.
    keepalive: bool,
    /// The share of added peers the driver makes backups. 0 for the balancers without a backup
    /// list (hash, ip_hash, random refuse `backup` peers): the configuration then has no backup
    /// peer either.
    backup_share: f64,
    /// The churn runs at least this long (see [`CHURN_GRACE`]).
    churn_time: Duration,
    /// `server backends.test:<port> resolve;` beside the other peers (nginx >= 1.27.3), with a
    /// thread changing what the test's DNS server answers every [`DNS_FLIP_EVERY`].
    resolve: bool,
    /// `dynamic_config_counter every_change;` (nginx >= 1.27.3).
    every_change: bool,
    /// Operations per driver call ([`OPS_PER_CALL`], or [`OPS_PER_SLOW_CALL`]).
    ops_per_call: usize,
}

impl Scenario {
    /// Round robin with upstream keepalive and backup adds, as the churn test always did.
    fn round_robin(name: &'static str, secs: u64) -> Scenario {
        Scenario {
            name,
            balancer: "",
            keepalive: true,
            backup_share: BACKUP_SHARE,
            churn_time: Duration::from_secs(secs),
            resolve: false,
            every_change: false,
            ops_per_call: OPS_PER_CALL,
        }
    }

    fn has_backup(&self) -> bool {
        self.backup_share > 0.0
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
struct Figures {
    name: &'static str,
    /// Requests the load sent.
    requests: u64,
    /// Of which answered with a status other than 2xx.
    non_2xx: u64,
    /// "no live upstreams" in the error log.
    no_live: usize,
    /// Peer changes the driver made.
    changes: u64,
    /// Times the DNS flipper changed the answers.
    dns_flips: u64,
}

impl Figures {
    /// Failed requests per 100,000.
    fn rate(&self) -> f64 {
        self.non_2xx as f64 * BAR as f64 / self.requests.max(1) as f64
    }

    fn line(&self) -> String {
        format!(
            "{}: {} requests, {} changes, {} non-2xx ({:.2} per 100,000), {} 'no live \
             upstreams', {} DNS flips",
            self.name,
            self.requests,
            self.changes,
            self.non_2xx,
            self.rate(),
            self.no_live,
            self.dns_flips
        )
    }

    /// Fewer than one request in [`BAR`] failed.
    fn assert_within_bar(&self) {
        assert!(
            self.non_2xx * BAR < self.requests,
            "{} non-2xx answers in {} requests: not fewer than 1 in {BAR} ({})",
            self.non_2xx,
            self.requests,
            self.line()
        );
    }
}

/// The Lua driver, kept in `package.loaded` by `init_by_lua_block`. `%%POOL%%` is replaced with
/// the extra addresses, `%%BACKUP_SHARE%%` with the share of adds made backups. Only the peers of
/// its pool are the driver's: the configured ones and those of nginx's resolver are left alone.
const DRIVER: &str = r#"
local dynamic = require "ngx.dynamic"
local U = "churn"
local POOL = { %%POOL%% }
local BACKUP_SHARE = %%BACKUP_SHARE%%
local SYNC_EVERY = 20

local pooled = {}
for _, name in ipairs(POOL) do
    pooled[name] = true
end

local M = {}

-- What this call believes the upstream holds: extra peers present (an array for random picks,
-- with each name's index), whether each is a backup, and the primary list's size (every primary
-- peer, the driver's or not). Resynced from describe_zone regularly, since the other worker (and
-- nginx's resolver) changes the lists too.
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
        if pooled[p.name] then
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
                backup = math.random() < BACKUP_SHARE
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

-- Removes every extra peer of the pool; returns how many it removed and how many peers are
-- left.
function M.cleanup()
    local peers, err = dynamic.describe_zone(U)
    if not peers then
        return nil, err
    end
    local removed = 0
    for _, p in ipairs(peers) do
        if pooled[p.name] then
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

/// The peers of a run and their backends.
struct Peers {
    /// The healthy configured primaries, then the refusing one.
    configured: Vec<String>,
    /// The configured backup peer, for the balancers with a backup list.
    backup: Option<String>,
    /// The driver's extra addresses.
    pool: Vec<String>,
    /// The port every address of `backends.test` is proxied to (resolver scenarios).
    resolved_port: Option<u16>,
}

impl Peers {
    /// `<ip>:<port>`, the peer name nginx's resolver gives the address at `RESOLVED[i]`.
    fn resolved(&self, i: usize) -> String {
        format!("{}:{}", RESOLVED[i], self.resolved_port.expect("a resolver scenario"))
    }

    /// Every peer name the upstream may show.
    fn known(&self) -> BTreeSet<String> {
        let resolved = self.resolved_port.map_or(0, |_| RESOLVED.len());
        self.configured
            .iter()
            .chain(&self.backup)
            .chain(&self.pool)
            .cloned()
            .chain((0..resolved).map(|i| self.resolved(i)))
            .collect()
    }
}

/// The nginx configuration: the upstream, a proxy on `/`, and the Lua locations the test drives.
fn config(scenario: &Scenario, peers: &Peers, dns: Option<&Dns>) -> Config {
    let quoted =
        |names: &[String]| names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
    let driver = DRIVER
        .replace("%%POOL%%", &quoted(&peers.pool))
        .replace("%%BACKUP_SHARE%%", &scenario.backup_share.to_string());
    let mut upstream = String::new();
    if !scenario.balancer.is_empty() {
        upstream.push_str(&format!("    {}\n", scenario.balancer));
    }
    if scenario.every_change {
        upstream.push_str("    dynamic_config_counter every_change;\n");
    }
    // The last configured primary refuses connections: max_fails=0 keeps it in rotation, so
    // requests fail over all the time instead of once per fail_timeout.
    let (refusing, healthy) = peers.configured.split_last().expect("configured peers");
    for addr in healthy {
        upstream.push_str(&format!("    server {addr};\n"));
    }
    upstream.push_str(&format!("    server {refusing} weight=5 max_fails=0;\n"));
    if let Some(backup) = &peers.backup {
        upstream.push_str(&format!("    server {backup} backup;\n"));
    }
    if let (Some(dns), Some(port)) = (dns, peers.resolved_port) {
        upstream.push_str(&format!(
            "    resolver {} valid=1s ipv6=off;\n    resolver_timeout 1s;\n    \
             server {DNS_NAME}:{port} resolve;\n",
            dns.addr()
        ));
    }
    if scenario.keepalive {
        upstream.push_str("    keepalive 32;\n");
    }
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
{upstream}}}

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
    churn_time: Duration,
}

impl Progress {
    fn new(churn_time: Duration) -> Progress {
        Progress {
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
            churn_time,
        }
    }

    fn goals_met(&self) -> bool {
        self.changes >= MIN_CHANGES && self.cycles >= MIN_CYCLES && self.changes_by_pid.len() >= 2
    }

    fn go_on(&self) -> bool {
        let elapsed = self.started.elapsed();
        self.calls < MAX_CALLS
            && elapsed < self.churn_time + CHURN_GRACE
            && (elapsed < self.churn_time || !self.goals_met())
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

/// `/describe`, with its lines sorted when nginx's resolver has peers in the upstream (it adds
/// them in the order of its answers, which it rotates).
fn describe(nginx: &Nginx, resolve: bool) -> String {
    let body = nginx.get_ok("/describe");
    if !resolve {
        return body;
    }
    let mut lines: Vec<&str> = body.lines().collect();
    lines.sort_unstable();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// The names of the peers nginx's resolver made (`server=backends.test:<port>`), sorted.
fn resolver_peers(describe: &str) -> Vec<String> {
    let mut names: Vec<String> = describe
        .lines()
        .filter(|l| l.contains(&format!(" server={DNS_NAME}:")))
        .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names
}

/// Waits (bounded by [`RESOLVE_TIMEOUT`]) until the resolver's peers are `expected` (sorted
/// names); returns how long it took, or panics with what `/describe` shows.
fn wait_for_resolver(nginx: &Nginx, dns: &Dns, expected: &[String], what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let described = describe(nginx, true);
        if resolver_peers(&described) == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < RESOLVE_TIMEOUT,
            "{what}: after {RESOLVE_TIMEOUT:?} ({} DNS queries answered) the resolver's peers \
             are not {expected:?}:\n{described}",
            dns.queries()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn addresses(indexes: &[usize]) -> Vec<Ipv4Addr> {
    indexes.iter().map(|&i| RESOLVED[i]).collect()
}

/// Changes the DNS answers for `backends.test` every [`DNS_FLIP_EVERY`] until `stop`; returns
/// how many times it did.
fn flip_dns(dns: &Dns, stop: &AtomicBool) -> u64 {
    let mut flips = 0;
    let mut next = Instant::now() + DNS_FLIP_EVERY;
    while !stop.load(Ordering::SeqCst) {
        if Instant::now() < next {
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        let subset = DNS_SUBSETS[flips as usize % DNS_SUBSETS.len()];
        dns.set(DNS_NAME, &addresses(subset), DNS_TTL);
        flips += 1;
        next += DNS_FLIP_EVERY;
    }
    flips
}

/// Raises its flag if dropped while its thread panics.
struct StopAllOnPanic<'a>(&'a AtomicBool);

impl Drop for StopAllOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// One driver thread: `/churn` calls until the churn is over or another driver failed.
fn drive(port: u16, ops: usize, progress: &Mutex<Progress>, failed: &AtomicBool) {
    // A driver that fails (panics) stops the other one too.
    let _stop_all = StopAllOnPanic(failed);
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
        let response = get(port, &format!("/churn?n={ops}&target={target}"));
        if response.status != 200 || !response.body.starts_with("pid=") {
            panic!("/churn: status {}: {}", response.status, response.body);
        }
        lock().record(&parse_call(&response.body));
    }
}

/// What the access log of the proxied requests says: `$status $upstream_addr` per request.
struct AccessLog {
    requests: u64,
    /// Requests that tried more than one peer.
    retried: u64,
    /// The most peers one request tried, and an example line.
    most_tried: (usize, String),
    /// Lines with a status other than 200, and the first ones.
    non_200: u64,
    non_200_lines: Vec<String>,
    /// Lines with a peer name the test never configured or added (what a request would print if
    /// it read the name of a peer freed under it); the first ones. A request that found no live
    /// peer ends with the upstream's name, which counts as known there.
    unknown: Vec<String>,
}

impl AccessLog {
    fn read(nginx: &Nginx, known: &BTreeSet<String>) -> AccessLog {
        let path = nginx.prefix().join("logs/churn.log");
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let text = String::from_utf8_lossy(&text);
        let mut log = AccessLog {
            requests: 0,
            retried: 0,
            most_tried: (0, String::new()),
            non_200: 0,
            non_200_lines: Vec::new(),
            unknown: Vec::new(),
        };
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
            if status != "200" {
                log.non_200 += 1;
                if log.non_200_lines.len() < 20 {
                    log.non_200_lines.push(line.to_owned());
                }
            }
            let last = addrs.len() - 1;
            // What nginx writes for a request that found no live peer: the upstream's name.
            let no_live_mark = |i: usize, a: &str| status != "200" && i == last && a == "churn";
            let unknown =
                addrs.iter().enumerate().any(|(i, a)| !known.contains(*a) && !no_live_mark(i, a));
            if unknown && log.unknown.len() < 20 {
                log.unknown.push(line.to_owned());
            }
        }
        log
    }
}

/// Runs `scenario` and checks what must hold whatever the balancer (see the top of the file);
/// returns the figures, whose failed requests the caller judges.
fn run(scenario: &Scenario) -> Figures {
    let healthy = Backend::start_many(3);
    let backup = scenario.has_backup().then(Backend::start);
    let refusing = format!("127.0.0.1:{}", free_ports(1)[0]);
    let extras: Vec<Backend> = (0..POOL)
        .map(|i| Backend::start_on(Ipv4Addr::new(127, 0, 1, u8::try_from(i + 1).expect("pool"))))
        .collect();
    let dns = scenario.resolve.then(|| {
        let dns = Dns::start();
        dns.set(DNS_NAME, &addresses(DNS_INITIAL), DNS_TTL);
        dns
    });
    let resolved_backends =
        if scenario.resolve { Backend::start_sharing_port(&RESOLVED) } else { Vec::new() };
    let mut configured: Vec<String> = healthy.iter().map(Backend::addr).collect();
    configured.push(refusing);
    let peers = Peers {
        configured,
        backup: backup.as_ref().map(Backend::addr),
        pool: extras.iter().map(Backend::addr).collect(),
        resolved_port: resolved_backends.first().map(Backend::port),
    };
    let initial_resolved: Vec<String> = if scenario.resolve {
        let mut names: Vec<String> = DNS_INITIAL.iter().map(|&i| peers.resolved(i)).collect();
        names.sort();
        names
    } else {
        Vec::new()
    };

    let nginx = config(scenario, &peers, dns.as_ref()).start();
    let workers = nginx.worker_pids();
    assert_eq!(workers.len(), 2, "worker pids");
    if let Some(dns) = &dns {
        let took = wait_for_resolver(&nginx, dns, &initial_resolved, "first resolution");
        println!("{}: nginx's resolver made its first peers after {took:?}", scenario.name);
    }
    let initial_describe = describe(&nginx, scenario.resolve);
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
        max_duration: scenario.churn_time + CHURN_GRACE + Duration::from_secs(5),
    });

    let progress = Mutex::new(Progress::new(scenario.churn_time));
    let failed = AtomicBool::new(false);
    let flipper_stop = AtomicBool::new(false);
    let port = nginx.port();
    let (progress_ref, failed_ref, stop_ref) = (&progress, &failed, &flipper_stop);
    let (driver_panics, dns_flips) = thread::scope(|scope| {
        let flipper = dns.as_ref().map(|dns| scope.spawn(move || flip_dns(dns, stop_ref)));
        let drivers: Vec<_> = (0..DRIVERS)
            .map(|_| {
                scope.spawn(move || drive(port, scenario.ops_per_call, progress_ref, failed_ref))
            })
            .collect();
        let mut panics = Vec::new();
        for driver in drivers {
            if let Err(e) = driver.join() {
                panics.push(
                    e.downcast_ref::<String>().cloned().unwrap_or_else(|| "driver panicked".into()),
                );
            }
        }
        flipper_stop.store(true, Ordering::SeqCst);
        let flips = flipper.map_or(0, |f| f.join().expect("the DNS flipper panicked"));
        (panics, flips)
    });
    let progress = progress.into_inner().unwrap_or_else(PoisonError::into_inner);
    let churn_time = progress.started.elapsed();
    let report = load.stop();

    // Every extra peer out, the resolver's peers back to the first ones, then the zone as it was.
    let mut cleanup = String::new();
    for _ in 0..5 {
        cleanup = nginx.get_ok("/cleanup");
        if cleanup.starts_with("0 ") {
            break;
        }
    }
    // Free bytes (by worker) with the resolver back to its first answers, before it made its
    // peers again on a compact zone (see below).
    let mut free_with_churn_time_peers = BTreeMap::new();
    if let Some(dns) = &dns {
        dns.set(DNS_NAME, &addresses(DNS_INITIAL), DNS_TTL);
        let took = wait_for_resolver(&nginx, dns, &initial_resolved, "back to the first answers");
        println!(
            "{}: nginx's resolver was back to its first peers {took:?} after the churn",
            scenario.name
        );
        free_with_churn_time_peers =
            usage_by_worker(&nginx, |seen| workers.iter().all(|w| seen.contains_key(w)));
        // Those peers may have been made during the churn, their bits of memory on slab pages
        // that the churn's peers shared then and that they alone keep in use now: fewer free
        // pages than at the start, and no leak. With no answer the resolver frees them all, and
        // the first answers again have it make them on the pages they had at the start.
        dns.set(DNS_NAME, &[], DNS_TTL);
        wait_for_resolver(&nginx, dns, &[], "no answer");
        dns.set(DNS_NAME, &addresses(DNS_INITIAL), DNS_TTL);
        wait_for_resolver(&nginx, dns, &initial_resolved, "the first answers again");
    }
    // Removed peers still finishing a request are given back by a later call: retried, bounded.
    let free_after =
        usage_by_worker(&nginx, |seen| workers.iter().all(|w| seen.get(w) == Some(&free_before)));
    let final_describe = describe(&nginx, scenario.resolve);
    let workers_after = nginx.worker_pids();
    let log = nginx.error_log();
    let access = AccessLog::read(&nginx, &peers.known());
    let refused = log.matches("(111: Connection refused) while connecting to upstream").count();
    let crit: Vec<&str> = log.lines().filter(|l| l.contains("[crit]")).collect();
    let no_live = log.matches("no live upstreams").count();

    let body = |addr: &String| format!("backend {}\n", addr.rsplit(':').next().expect("port"));
    let known_bodies: BTreeSet<String> = peers.known().iter().map(body).collect();
    let unknown_bodies: Vec<&String> =
        report.bodies.keys().filter(|b| !known_bodies.contains(*b)).collect();
    let served_by = |addrs: &[String]| -> u64 {
        let bodies: BTreeSet<String> = addrs.iter().map(body).collect();
        report.bodies.iter().filter(|(b, _)| bodies.contains(*b)).map(|(_, n)| n).sum()
    };
    let by_configured = served_by(&peers.configured);
    let by_extras = served_by(&peers.pool);
    let by_backup = served_by(peers.backup.as_slice());
    let by_resolved = served_by(&resolved_backends.iter().map(Backend::addr).collect::<Vec<_>>());
    let resolver_note = if scenario.resolve {
        format!("; free with the resolver's churn-time peers {free_with_churn_time_peers:?}")
    } else {
        String::new()
    };
    println!(
        "churn summary [{}]: {} changes in {:.1}s ({} calls, {} conflicts between workers, {} \
         errors; by worker {:?}), {} requests served ({} 2xx: {} by configured peers, {} by \
         extra peers, {} by the backup, {} by resolved peers; {} connections), {} non-2xx, {} \
         transport errors, {} refused connections failed over, {} 'no live upstreams', {} DNS \
         flips ({} DNS queries), max primary list size {}, low after high {}, cycles {}, zone {} \
         bytes, free before {} / lowest {} / after {:?}; access log: {} requests, {} tried more \
         than one peer, at most {} peers tried by one ({:?}), {} not 200{}",
        scenario.name,
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
        by_resolved,
        report.connections,
        report.non_2xx,
        report.transport_errors,
        refused,
        no_live,
        dns_flips,
        dns.as_ref().map_or(0, Dns::queries),
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
        access.non_200,
        resolver_note,
    );
    // Every failure is counted; the first ones are printed in full.
    for failure in report.failures.iter().take(PRINTED_FAILURES) {
        println!(
            "failed request at {:?}: status {:?}: {:?}",
            failure.at, failure.status, failure.detail
        );
    }
    let unprinted = (report.non_2xx + report.transport_errors)
        .saturating_sub(report.failures.len().min(PRINTED_FAILURES) as u64);
    if unprinted > 0 {
        println!("... and {unprinted} more failed requests");
    }
    for line in access.non_200_lines.iter().take(5) {
        println!("access log, not 200: {line}");
    }
    for message in &progress.error_messages {
        println!("unexpected driver error: {message}");
    }

    // The harness fails here on [alert], [emerg] or a worker that exited on a signal.
    nginx.stop();

    assert!(driver_panics.is_empty(), "driver threads failed: {driver_panics:?}");
    assert_eq!(workers_after, workers, "worker pids changed: a worker died");
    assert!(crit.is_empty(), "[crit] lines in the error log:\n{}", crit.join("\n"));
    assert_eq!(report.transport_errors, 0, "requests without an answer");
    assert!(report.ok > 0, "no request was served");
    assert!(unknown_bodies.is_empty(), "answers from no known backend: {unknown_bodies:?}");
    assert!(
        access.unknown.is_empty(),
        "access log lines with an unknown peer:\n{}",
        access.unknown.join("\n")
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
    if scenario.resolve {
        assert!(dns_flips > 0, "the DNS answers never changed during the churn");
        assert!(by_resolved > 0, "no request reached a peer of nginx's resolver");
    }
    drop((extras, resolved_backends, healthy, backup));
    Figures {
        name: scenario.name,
        requests: report.requests,
        non_2xx: report.non_2xx,
        no_live,
        changes: progress.changes,
        dns_flips,
    }
}

/// A modern-only balancer scenario held to the failure bar: the module never moves the
/// configuration counter for it.
fn balancer_within_bar(test: &'static str, balancer: &'static str, keepalive: bool, backup: bool) {
    if skipped(test) {
        return;
    }
    let _serial = serial();
    let figures = run(&Scenario {
        balancer,
        keepalive,
        backup_share: if backup { BACKUP_SHARE } else { 0.0 },
        ..Scenario::round_robin(test, 12)
    });
    println!("{}", figures.line());
    figures.assert_within_bar();
}

/// A modern-only scenario whose balancer keeps per-worker tables: every add, remove and weight
/// change moves the configuration counter, so requests fail; their rate is measured, not held
/// to the bar (every other check holds).
fn table_balancer_measured(test: &'static str, balancer: &'static str, ops_per_call: usize) {
    if skipped(test) {
        return;
    }
    let _serial = serial();
    let figures = run(&Scenario {
        balancer,
        backup_share: 0.0,
        ops_per_call,
        ..Scenario::round_robin(test, 8)
    });
    println!("{} (measured, not held to the bar)", figures.line());
}

#[test]
fn churn_round_robin() {
    let _serial = serial();
    let figures = run(&Scenario::round_robin("churn_round_robin", 20));
    println!("{}", figures.line());
    if modern() {
        figures.assert_within_bar();
    } else {
        assert_eq!(figures.non_2xx, 0, "non-2xx answers while healthy peers remained");
    }
}

#[test]
fn churn_least_conn() {
    balancer_within_bar("churn_least_conn", "least_conn;", false, true);
}

#[test]
fn churn_hash() {
    balancer_within_bar("churn_hash", "hash $request_id;", true, false);
}

#[test]
fn churn_ip_hash() {
    balancer_within_bar("churn_ip_hash", "ip_hash;", false, false);
}

#[test]
fn churn_consistent_hash() {
    table_balancer_measured(
        "churn_consistent_hash",
        "hash $request_id consistent;",
        OPS_PER_SLOW_CALL,
    );
}

#[test]
fn churn_random() {
    table_balancer_measured("churn_random", "random;", OPS_PER_CALL);
}

/// nginx's resolver changes peers of the upstream (and moves the configuration counter each
/// time) while the driver changes the others: the driver leaves the resolver's peers alone, and
/// once the DNS answers are back to the first ones, the upstream and its zone are as they were.
#[test]
fn churn_beside_resolver() {
    if skipped("churn_beside_resolver") {
        return;
    }
    let _serial = serial();
    let figures =
        run(&Scenario { resolve: true, ..Scenario::round_robin("churn_beside_resolver", 12) });
    println!("{} (failures from nginx's resolver: measured, not held to the bar)", figures.line());
}

/// What the module's restraint with the configuration counter is worth: the same round-robin
/// churn, moving it only when needed (never, here) and then on every change.
#[test]
fn churn_bumping_every_change_fails_more() {
    if skipped("churn_bumping_every_change_fails_more") {
        return;
    }
    let _serial = serial();
    let when_needed = run(&Scenario::round_robin("round robin, when_needed", 12));
    let every_change = run(&Scenario {
        every_change: true,
        ..Scenario::round_robin("round robin, every_change", 12)
    });
    println!("{}", when_needed.line());
    println!("{}", every_change.line());
    assert!(
        every_change.non_2xx > when_needed.non_2xx && every_change.non_2xx >= 20,
        "moving the counter on every change did not fail more requests:\n{}\n{}",
        when_needed.line(),
        every_change.line()
    );
}
