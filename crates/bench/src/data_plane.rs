//! Data plane: what proxied requests cost when the peers were added at runtime, against the
//! same peers configured the ordinary ways, measured with wrk through a real proxy to real
//! backends on loopback.
//!
//! Scenarios (each at every peer count of [`PEER_COUNTS`]):
//!
//! - **A**: a plain `upstream` without a zone, in an nginx without any module;
//! - **Z**: the same peers in an upstream with a `zone`, same nginx;
//! - **B**: a zoned upstream whose peers were all added with `ngx.dynamic.add_peer` (its
//!   configuration holds one seed server, removed after the adds), in an nginx with the lua
//!   module and ours;
//! - **C**: `balancer_by_lua_block` picking round robin from a Lua array of the same peers (the
//!   APISIX/Kong way), same nginx as B;
//! - **D**: B while a timer in its worker makes [`CHURN_RATE`] changes a second to extra peers;
//! - **M**: Z's upstream in B's nginx, which tells what B pays for the modules being loaded
//!   (M/Z) from what it pays for peers added at runtime (B/M).
//!
//! Every upstream keeps a keep-alive cache larger than its peers (plus the extras), with
//! HTTP/1.1 and an empty `Connection` header, so that no scenario opens connections while it is
//! measured. The scenarios run one after another, C A Z B D M then M D B Z A C, for several
//! rounds: each ratio compares runs of the same round, so slow drifts of a shared machine
//! cancel out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use integration_tests::get;
use serde::Serialize;

use crate::server::{Modules, Server, Spec};
use crate::stats::Summary;
use crate::wrk::Wrk;
use crate::Budget;

/// Peer counts measured.
pub const PEER_COUNTS: [usize; 3] = [3, 100, 1000];
/// Changes per second made during scenario D.
pub const CHURN_RATE: u32 = 1000;
/// Extra peers the changes of D cycle through: backends of their own, so an extra that is up
/// gets answered like any peer and the measured peers never see a failure.
const EXTRAS: usize = 10;
/// Loopback ports of the backends: one per peer at the largest count, and the extras.
pub const BACKEND_PORTS: usize = PEER_COUNTS[PEER_COUNTS.len() - 1] + EXTRAS;
/// Keep-alive connections cached beyond the peer count. A peer needs as many connections as
/// it has requests in flight at once, and wrk keeps 16 in flight: with a cache of only the peer
/// count, a few peers (3 measured, 10 extras) would keep evicting each other's connections and
/// reconnecting. The cache holds only idle connections, so a larger limit costs nothing.
pub const KEEPALIVE_SPARE: usize = 128;
/// The zone of every zoned upstream (Z, B, M): room for 1,000 peers and the extras.
const ZONE_SIZE: &str = "1m";

/// One of the configurations compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Scenario {
    A,
    Z,
    B,
    C,
    D,
    M,
}

impl Scenario {
    /// Every scenario, in the order of the report.
    pub const ALL: [Scenario; 6] =
        [Scenario::A, Scenario::Z, Scenario::B, Scenario::C, Scenario::D, Scenario::M];

    /// The order of a round; odd rounds run it backwards. The two runs of every ratio with a
    /// target (B/Z, D/B) and of C/A follow each other.
    pub const ROUND: [Scenario; 6] =
        [Scenario::C, Scenario::A, Scenario::Z, Scenario::B, Scenario::D, Scenario::M];

    pub fn description(self) -> &'static str {
        match self {
            Scenario::A => "static upstream without a zone (nginx alone)",
            Scenario::Z => "the same peers configured in a zoned upstream (nginx alone)",
            Scenario::B => "zoned upstream, every peer added at runtime with ngx.dynamic",
            Scenario::C => "balancer_by_lua_block round robin over a Lua array of the peers",
            Scenario::D => "B while 1,000 changes a second run on extra peers",
            Scenario::M => "Z's upstream (peers configured) in B's nginx, with the modules",
        }
    }
}

/// How the data plane is measured.
pub struct Options {
    pub rounds: usize,
    /// Length of each measured run.
    pub run: Duration,
    /// Length of the unmeasured run before the rounds, per scenario and peer count, which
    /// fills the keep-alive caches.
    pub warmup: Duration,
    pub wrk: Wrk,
    /// CPU of the proxy's worker; the backends and wrk get `load_cpu`.
    pub proxy_cpu: Option<usize>,
    pub load_cpu: Option<usize>,
}

/// One measured wrk run.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub scenario: Scenario,
    pub peers: usize,
    pub round: usize,
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    /// CPU time of the proxy's workers over the run (`/proc/<pid>/stat` utime + stime).
    pub proxy_cpu_seconds: f64,
    pub proxy_cpu_us_per_request: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// wrk's socket errors and non-2xx answers (0 in a valid run).
    pub errors: u64,
    /// Connections the proxy opened to the backends during the run: 0 when the keep-alive
    /// cache serves every request.
    pub backend_connections: u64,
    /// D only: the changes made during the run.
    pub churn: Option<Churn>,
}

/// What D's timer did during one run.
#[derive(Clone, Debug, Serialize)]
pub struct Churn {
    pub changes: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// Changes refused (0 expected), and the first refusal.
    pub errors: u64,
    pub first_error: Option<String>,
}

/// A ratio of two scenarios at one peer count, over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    /// `B/Z` and so on.
    pub name: String,
    pub peers: usize,
    /// Requests per second, numerator over denominator (higher: the numerator is faster).
    pub throughput: Summary,
    /// Requests per proxy CPU-second, numerator over denominator (higher: it costs less CPU).
    pub requests_per_cpu: Summary,
    /// Latency percentiles, numerator over denominator (lower: the numerator answers sooner).
    pub p50: Summary,
    pub p99: Summary,
    /// The least acceptable median of `throughput` and `requests_per_cpu`, if there is a target.
    pub target: Option<f64>,
}

impl Ratio {
    /// Whether both medians reach the target (`None` without a target).
    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| self.throughput.median >= t && self.requests_per_cpu.median >= t)
    }
}

/// The ratios reported: (numerator, denominator, target).
const RATIOS: [(Scenario, Scenario, Option<f64>); 7] = [
    (Scenario::B, Scenario::Z, Some(0.98)),
    (Scenario::B, Scenario::M, None),
    (Scenario::M, Scenario::Z, None),
    (Scenario::Z, Scenario::A, None),
    (Scenario::B, Scenario::A, None),
    (Scenario::C, Scenario::A, None),
    (Scenario::D, Scenario::B, Some(0.95)),
];

/// Everything the data plane measured.
#[derive(Debug, Serialize)]
pub struct DataPlane {
    pub rounds: usize,
    pub run_seconds: u64,
    pub warmup_seconds: u64,
    /// The wrk command of every run (`<url>` stands for the scenario's address).
    pub wrk_command: String,
    pub proxy_cpu: Option<usize>,
    pub load_cpu: Option<usize>,
    /// The upstream blocks of A, Z, B and C at 3 peers, as configured.
    pub upstreams_at_3: BTreeMap<Scenario, String>,
    pub runs: Vec<Run>,
    pub ratios: Vec<Ratio>,
    /// D's achieved change rate over all its runs.
    pub churn_per_second: Summary,
}

/// The scenarios served by nginx alone and by nginx with the modules (D is B under changes).
const PLAIN: [Scenario; 2] = [Scenario::A, Scenario::Z];
const LUA: [Scenario; 3] = [Scenario::B, Scenario::C, Scenario::M];

/// The three nginx instances: backends, nginx alone ([`PLAIN`]) and with the modules ([`LUA`]).
struct Instances {
    backends: Server,
    plain: Server,
    lua: Server,
}

impl Instances {
    fn start(options: &Options) -> Instances {
        let max = PEER_COUNTS[PEER_COUNTS.len() - 1];
        let backends = Server::start(
            &Spec {
                name: "backends",
                modules: Modules::None,
                workers: 1,
                cpu: options.load_cpu,
                ports: BACKEND_PORTS + 1,
                files: Vec::new(),
            },
            backends_body,
        );
        let ports = backends.ports()[..BACKEND_PORTS].to_vec();
        let (peers, extras) = ports.split_at(max);
        let proxy = |name, modules, ports, files| Spec {
            name,
            modules,
            workers: 1,
            cpu: options.proxy_cpu,
            ports,
            files,
        };
        let plain = Server::start(
            &proxy("proxy-plain", Modules::None, PLAIN.len() * PEER_COUNTS.len(), Vec::new()),
            |p| proxy_body(&PLAIN, p, peers, 0),
        );
        let lua = Server::start(
            &proxy(
                "proxy-lua",
                Modules::LuaAndDynamic,
                1 + LUA.len() * PEER_COUNTS.len(),
                vec![("lua/bench.lua", bench_lua(peers, extras))],
            ),
            |p| {
                let mut body = String::from("    init_by_lua_file lua/bench.lua;\n");
                body.push_str(&LUA_ADMIN.replace("@PORT@", &p[0].to_string()));
                body + &proxy_body(&LUA, &p[1..], peers, extras[0])
            },
        );
        Instances { backends, plain, lua }
    }

    /// The instance serving `scenario` and its port for `peers` (D is B's).
    fn target(&self, scenario: Scenario, peers: usize) -> (&Server, u16) {
        let i = PEER_COUNTS.iter().position(|&n| n == peers).expect("a measured peer count");
        let scenario = if scenario == Scenario::D { Scenario::B } else { scenario };
        if let Some(k) = PLAIN.iter().position(|&s| s == scenario) {
            return (&self.plain, self.plain.port(i * PLAIN.len() + k));
        }
        let k = LUA.iter().position(|&s| s == scenario).expect("a scenario of a proxy");
        // Port 0 is the admin server's.
        (&self.lua, self.lua.port(1 + i * LUA.len() + k))
    }

    /// Connections the backends have accepted so far, this question's own included.
    fn backend_accepts(&self) -> u64 {
        let response = get(self.backends.port(BACKEND_PORTS), "/");
        assert_eq!(response.status, 200, "stub_status: {}", response.body);
        // "Active connections: 1 \nserver accepts handled requests\n 12 12 40 \n..."
        let counts = response.body.lines().nth(2).unwrap_or_default();
        let accepts = counts.split_whitespace().next().and_then(|n| n.parse().ok());
        accepts.unwrap_or_else(|| panic!("unexpected stub_status answer {:?}", response.body))
    }

    /// The admin server of the lua instance (B's setup, D's churn).
    fn admin(&self, path: &str) -> String {
        let response = get(self.lua.port(0), path);
        assert_eq!(response.status, 200, "GET {path}: {}", response.body);
        response.body.trim_end().to_owned()
    }

    fn stop(self) {
        self.lua.stop();
        self.plain.stop();
        self.backends.stop();
    }
}

/// Runs the data-plane benchmark.
pub fn run(options: &Options, budget: &Budget) -> DataPlane {
    let instances = Instances::start(options);
    for &n in &PEER_COUNTS {
        let setup = instances.admin(&format!("/setup?n={n}"));
        assert_eq!(setup, "ok", "adding B's {n} peers");
        for scenario in Scenario::ROUND {
            let (_, port) = instances.target(scenario, n);
            let response = get(port, "/");
            assert!(
                response.status == 200 && response.body == "ok\n",
                "scenario {scenario:?} at {n} peers answers {} {:?}",
                response.status,
                response.body
            );
        }
    }
    let mut runs = Vec::new();
    for &n in &PEER_COUNTS {
        budget.check(&format!("warm-up at {n} peers"));
        for scenario in PLAIN.into_iter().chain(LUA) {
            let (_, port) = instances.target(scenario, n);
            options.wrk.run(options.warmup, &url(port));
        }
        for round in 0..options.rounds {
            let mut order = Scenario::ROUND;
            if round % 2 == 1 {
                order.reverse();
            }
            for scenario in order {
                budget.check(&format!("{scenario:?} at {n} peers, round {}", round + 1));
                let run = measure(&instances, options, scenario, n, round);
                println!(
                    "{}  data plane  {n:>4} peers  round {}/{}  {scenario:?}  {:>8.0} req/s  \
                     {:>5.1} us CPU/req  p99 {:>6.0} us{}",
                    budget.elapsed(),
                    round + 1,
                    options.rounds,
                    run.requests_per_second,
                    run.proxy_cpu_us_per_request,
                    run.p99_us,
                    run.churn
                        .as_ref()
                        .map_or(String::new(), |c| format!("  ({:.0} changes/s)", c.per_second)),
                );
                runs.push(run);
            }
        }
        let verify = instances.admin(&format!("/verify?n={n}"));
        assert_eq!(verify, "ok", "B's peers after the runs at {n} peers");
    }
    let upstreams_at_3 = upstreams_at_3(&instances);
    instances.stop();
    let ratios = ratios(&runs);
    let churn_per_second =
        Summary::of(runs.iter().filter_map(|r| r.churn.as_ref()).map(|c| c.per_second).collect());
    DataPlane {
        rounds: options.rounds,
        run_seconds: options.run.as_secs(),
        warmup_seconds: options.warmup.as_secs(),
        wrk_command: options.wrk.command(options.run, "<url>").join(" "),
        proxy_cpu: options.proxy_cpu,
        load_cpu: options.load_cpu,
        upstreams_at_3,
        runs,
        ratios,
        churn_per_second,
    }
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/")
}

/// One wrk run against `scenario`, with the proxy's CPU time around it; for D, with the
/// changes running for exactly the run.
fn measure(
    instances: &Instances,
    options: &Options,
    scenario: Scenario,
    peers: usize,
    round: usize,
) -> Run {
    let (server, port) = instances.target(scenario, peers);
    if scenario == Scenario::D {
        assert_eq!(
            instances.admin(&format!("/churn/start?n={peers}")),
            "ok",
            "starting D's changes"
        );
    }
    let accepts_before = instances.backend_accepts();
    let ticks_before = server.worker_cpu_ticks();
    let report = options.wrk.run(options.run, &url(port));
    let ticks = server.worker_cpu_ticks() - ticks_before;
    // Less the connection that asked.
    let backend_connections = instances.backend_accepts() - accepts_before - 1;
    let churn = (scenario == Scenario::D).then(|| parse_churn(&instances.admin("/churn/stop")));
    let proxy_cpu_seconds = ticks as f64 / clock_ticks_per_second();
    Run {
        scenario,
        peers,
        round,
        requests: report.requests,
        seconds: report.seconds,
        requests_per_second: report.requests_per_second(),
        proxy_cpu_seconds,
        proxy_cpu_us_per_request: proxy_cpu_seconds * 1e6 / report.requests as f64,
        p50_us: report.p50_us,
        p99_us: report.p99_us,
        errors: report.errors,
        backend_connections,
        churn,
    }
}

/// `/churn/stop`'s answer: `<changes> <seconds> <errors> <first error or ->`.
fn parse_churn(text: &str) -> Churn {
    let mut fields = text.splitn(4, ' ');
    let mut next = || fields.next().unwrap_or_else(|| panic!("bad /churn/stop answer {text:?}"));
    let changes: u64 = next().parse().expect("a change count");
    let seconds: f64 = next().parse().expect("seconds");
    let errors: u64 = next().parse().expect("an error count");
    let first_error = Some(next()).filter(|e| *e != "-").map(str::to_owned);
    Churn { changes, seconds, per_second: changes as f64 / seconds, errors, first_error }
}

/// `sysconf(_SC_CLK_TCK)`: the unit of `/proc/<pid>/stat`'s CPU times.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(ticks > 0, "sysconf(_SC_CLK_TCK) failed");
    ticks as f64
}

/// The ratios of [`RATIOS`] at every peer count, each from runs of the same round.
fn ratios(runs: &[Run]) -> Vec<Ratio> {
    let series = |scenario: Scenario, peers: usize, value: fn(&Run) -> f64| -> Vec<f64> {
        let mut selected: Vec<&Run> =
            runs.iter().filter(|r| r.scenario == scenario && r.peers == peers).collect();
        selected.sort_by_key(|r| r.round);
        selected.into_iter().map(value).collect()
    };
    let mut ratios = Vec::new();
    for &peers in &PEER_COUNTS {
        for (num, den, target) in RATIOS {
            let ratio = |value: fn(&Run) -> f64| {
                Summary::of_ratios(&series(num, peers, value), &series(den, peers, value))
            };
            ratios.push(Ratio {
                name: format!("{num:?}/{den:?}"),
                peers,
                throughput: ratio(|r| r.requests_per_second),
                // Requests per CPU-second is the inverse of CPU per request.
                requests_per_cpu: ratio(|r| 1.0 / r.proxy_cpu_us_per_request),
                p50: ratio(|r| r.p50_us),
                p99: ratio(|r| r.p99_us),
                target,
            });
        }
    }
    ratios
}

/// The keep-alive cache of every upstream: more than its peers and the extras of D.
fn keepalive(peers: usize) -> usize {
    peers + KEEPALIVE_SPARE
}

/// Settings shared by every upstream's keep-alive cache: connections live through the runs.
fn keepalive_lines(peers: usize) -> String {
    format!(
        "        keepalive {};\n        keepalive_requests 1000000;\n        keepalive_timeout 600s;\n",
        keepalive(peers)
    )
}

/// A `server` on `port` proxying everything to `upstream` over keep-alive connections.
fn proxy_server(port: u16, upstream: &str) -> String {
    format!(
        "    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
"
    )
}

/// The backends: one nginx worker answering `ok` on every port, keep-alive for the whole run.
/// The backends: one nginx worker answering `ok` on the first [`BACKEND_PORTS`] ports, and its
/// connection counters (`stub_status`) on the last.
fn backends_body(ports: &[u16]) -> String {
    let (serving, status) = ports.split_at(BACKEND_PORTS);
    let mut body = String::from("    server {\n");
    for port in serving {
        let _ = writeln!(body, "        listen 127.0.0.1:{port};");
    }
    body.push_str("        default_type text/plain;\n        return 200 \"ok\\n\";\n    }\n");
    let _ = writeln!(
        body,
        "    server {{\n        listen 127.0.0.1:{};\n        stub_status;\n    }}",
        status[0]
    );
    body
}

fn server_lines(peers: &[u16]) -> String {
    peers.iter().map(|p| format!("        server 127.0.0.1:{p};\n")).collect()
}

/// The upstream block of a scenario for the first `n` of `peers`; `seed` is B's one
/// configured server.
fn upstream(scenario: Scenario, n: usize, peers: &[u16], seed: u16) -> String {
    let peers = &peers[..n];
    let keepalive = keepalive_lines(n);
    let zoned = |name: &str| {
        format!(
            "    upstream {name}{n} {{\n        zone {name}{n} {ZONE_SIZE};\n{}{keepalive}    }}\n",
            server_lines(peers)
        )
    };
    match scenario {
        Scenario::A => format!("    upstream a{n} {{\n{}{keepalive}    }}\n", server_lines(peers)),
        Scenario::Z => zoned("z"),
        Scenario::M => zoned("m"),
        Scenario::B => format!(
            "    upstream b{n} {{\n        zone b{n} {ZONE_SIZE};\n        server 127.0.0.1:{seed};\n{keepalive}    }}\n"
        ),
        Scenario::C => format!(
            "    upstream c{n} {{
        server 0.0.0.1;   # a placeholder: the balancer below picks every peer
        balancer_by_lua_block {{
            require(\"bench\").balance[{n}]()
        }}
{keepalive}    }}
"
        ),
        Scenario::D => unreachable!("D is B's upstream"),
    }
}

/// The upstreams and servers of `scenarios` at every peer count: the i-th count's on ports
/// `i * scenarios.len()` and up, in the order of `scenarios`.
fn proxy_body(scenarios: &[Scenario], ports: &[u16], peers: &[u16], seed: u16) -> String {
    let mut body = String::new();
    for (i, &n) in PEER_COUNTS.iter().enumerate() {
        for (k, &scenario) in scenarios.iter().enumerate() {
            let upstream_block = upstream(scenario, n, peers, seed);
            body.push_str(&upstream_block);
            let name = format!("{}{n}", format!("{scenario:?}").to_lowercase());
            body.push_str(&proxy_server(ports[i * scenarios.len() + k], &name));
        }
    }
    body
}

/// `lua/bench.lua` of the modules' instance, with the ports of this run.
fn bench_lua(peers: &[u16], extras: &[u16]) -> String {
    let lua_list = |ports: &[u16]| {
        let lines: Vec<String> = ports
            .chunks(16)
            .map(|chunk| chunk.iter().map(u16::to_string).collect::<Vec<_>>().join(", "))
            .collect();
        format!("{{\n        {}\n    }}", lines.join(",\n        "))
    };
    let peer_table: String =
        PEER_COUNTS.iter().map(|&n| format!("\n    [{n}] = {},", lua_list(&peers[..n]))).collect();
    BENCH_LUA
        .replace("@PEERS@", &format!("{{{peer_table}\n}}"))
        .replace("@EXTRAS@", &lua_list(extras))
        .replace("@SEED@", &format!("127.0.0.1:{}", extras[0]))
        .replace("@RATE@", &CHURN_RATE.to_string())
}

/// The upstream blocks at 3 peers, with this run's ports, for the report.
fn upstreams_at_3(instances: &Instances) -> BTreeMap<Scenario, String> {
    let ports = instances.backends.ports();
    let max = PEER_COUNTS[PEER_COUNTS.len() - 1];
    [Scenario::A, Scenario::Z, Scenario::B, Scenario::C]
        .into_iter()
        .map(|s| (s, upstream(s, 3, ports, ports[max])))
        .collect()
}

/// `lua/bench.lua`, loaded by `init_by_lua_file`: the `bench` module shared by B's setup, C's
/// balancers and D's changes.
const BENCH_LUA: &str = r#"-- The `bench` module of the data plane's nginx with the modules (generated by
-- crates/bench/src/data_plane.rs): B's setup, C's balancers and D's changes.

local balancer = require "ngx.balancer"

local bench = {
    -- Backend ports of the measured peers, per peer count.
    peers = @PEERS@,
    -- Backend ports of D's extra peers.
    extras = @EXTRAS@,
    -- B's one configured server, removed once its peers are added.
    seed = "@SEED@",
    balance = {},
}
package.loaded.bench = bench

-- C: round robin over a Lua array, per worker, as APISIX and Kong balance.
for n, ports in pairs(bench.peers) do
    local i, count = 0, #ports
    bench.balance[n] = function()
        i = i % count + 1
        local ok, err = balancer.set_current_peer("127.0.0.1", ports[i])
        if not ok then
            ngx.log(ngx.ERR, "set_current_peer: ", err)
            return ngx.exit(500)
        end
    end
end

-- D: changes at a steady RATE a second, made by a timer every PERIOD seconds that
-- catches up with the clock (a timer that fires late makes more changes).
local RATE, PERIOD, MAX_BATCH = @RATE@, 0.01, 100
local churn = { generation = 0, present = {} }

-- The k-th change. All extras go through add (down), up, down and remove, a phase at a
-- time: they are added down, point to healthy backends when up, and are never one of
-- the measured peers.
local function change(upstream, k)
    local dynamic = require "ngx.dynamic"
    local count = #bench.extras
    local slot = k % count + 1
    local server = "127.0.0.1:" .. bench.extras[slot]
    local phase = math.floor(k / count) % 4
    if phase == 0 then
        local ok, err = dynamic.add_peer(upstream, server, { down = true })
        if ok then
            churn.present[slot] = true
        end
        return ok, err
    elseif phase == 1 then
        return dynamic.set_peer_down(upstream, server, false)
    elseif phase == 2 then
        return dynamic.set_peer_down(upstream, server, true)
    end
    local ok, err = dynamic.remove_peer(upstream, server)
    if ok then
        churn.present[slot] = nil
    end
    return ok, err
end

local function failed(err)
    churn.errors = churn.errors + 1
    churn.first_error = churn.first_error or err
end

local function tick(premature, generation)
    if premature or generation ~= churn.generation then
        return
    end
    ngx.update_time()
    local due = math.floor((ngx.now() - churn.started) * RATE) - churn.done
    for _ = 1, math.min(due, MAX_BATCH) do
        local ok, err = change(churn.upstream, churn.done)
        churn.done = churn.done + 1
        if not ok then
            failed(err)
        end
    end
    local ok, err = ngx.timer.at(PERIOD, tick, generation)
    if not ok then
        failed("ngx.timer.at: " .. err)
    end
end

function bench.churn_start(n)
    churn.generation = churn.generation + 1
    churn.upstream = "b" .. n
    churn.done, churn.errors, churn.first_error = 0, 0, nil
    ngx.update_time()
    churn.started = ngx.now()
    return ngx.timer.at(0, tick, churn.generation)
end

-- Stops the changes (the pending timer sees a newer generation) and removes the extras
-- still in the upstream. Returns changes, seconds, errors and the first error.
function bench.churn_stop()
    churn.generation = churn.generation + 1
    ngx.update_time()
    local seconds = ngx.now() - churn.started
    local dynamic = require "ngx.dynamic"
    for slot in pairs(churn.present) do
        local ok, err = dynamic.remove_peer(churn.upstream, "127.0.0.1:" .. bench.extras[slot])
        if not ok then
            failed(err)
        end
        churn.present[slot] = nil
    end
    return churn.done, seconds, churn.errors, churn.first_error or "-"
end
"#;

/// The admin server of the modules' instance.
const LUA_ADMIN: &str = r#"    server {
        listen 127.0.0.1:@PORT@;
        default_type text/plain;

        # B: add the measured peers, then remove the seed.
        location = /setup {
            content_by_lua_block {
                local dynamic = require "ngx.dynamic"
                local bench = require "bench"
                local n = tonumber(ngx.var.arg_n)
                for _, port in ipairs(bench.peers[n]) do
                    local ok, err = dynamic.add_peer("b" .. n, "127.0.0.1:" .. port)
                    if not ok then
                        return ngx.say("add_peer: ", err)
                    end
                end
                local ok, err = dynamic.remove_peer("b" .. n, bench.seed)
                ngx.say(ok and "ok" or ("remove_peer: " .. err))
            }
        }

        # B holds exactly the measured peers, in order, up and without failures.
        location = /verify {
            content_by_lua_block {
                local dynamic = require "ngx.dynamic"
                local bench = require "bench"
                local n = tonumber(ngx.var.arg_n)
                local peers, err = dynamic.describe_zone("b" .. n)
                if not peers then
                    return ngx.say(err)
                end
                if #peers ~= n then
                    return ngx.say(#peers, " peers, expected ", n)
                end
                for i, peer in ipairs(peers) do
                    if peer.name ~= "127.0.0.1:" .. bench.peers[n][i] or peer.down or peer.fails > 0 then
                        return ngx.say("peer ", i, ": ", peer.name, " down ", tostring(peer.down),
                                       " fails ", peer.fails)
                    end
                end
                ngx.say("ok")
            }
        }

        location = /churn/start {
            content_by_lua_block {
                local ok, err = require("bench").churn_start(tonumber(ngx.var.arg_n))
                ngx.say(ok and "ok" or err)
            }
        }

        location = /churn/stop {
            content_by_lua_block {
                ngx.say(table.concat({ require("bench").churn_stop() }, " "))
            }
        }
    }
"#;
