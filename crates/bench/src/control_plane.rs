//! Control plane: the cost of each `ngx.dynamic` call, measured inside one nginx worker by
//! LuaJIT itself with a monotonic clock (`clock_gettime(CLOCK_MONOTONIC)` through the FFI),
//! so that neither HTTP nor the bench's process is part of the figure.
//!
//! Each case (a call or a pair of calls, at a zone size) is calibrated to about
//! [`ROUND_MS`] of calls, then every case runs once per round, rounds alternating forward and
//! backward through the cases: a ratio between two zone sizes compares runs of the same round.

use integration_tests::get;
use serde::Serialize;

use crate::server::{Modules, Server, Spec};
use crate::stats::Summary;
use crate::Budget;

/// Zone sizes (peers) of the per-peer calls.
pub const SIZES: [usize; 4] = [3, 10, 1000, 10_000];
/// Zone sizes of `describe_zone`.
const DESCRIBE_SIZES: [usize; 3] = [10, 1000, 10_000];
/// Zones in the configuration when `list_zones` is measured.
pub const ZONES: usize = 100;
const ROUNDS: usize = 15;
/// Time one case runs per round.
const ROUND_MS: u32 = 10;

/// The calls measured. A pair counts as one call: its time is that of both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `add_peer` of a new peer then `remove_peer` of it.
    AddRemovePair,
    /// `set_peer_down` of the last peer, then `set_peer_down(..., false)`.
    DownUpPair,
    /// `add_peer` of a new peer (100 in a row, then removed untimed).
    AddPeer,
    /// `remove_peer` of a peer added just before (100 added untimed, then removed).
    RemovePeer,
    /// `update_peer` of the last peer's weight (alternately 1 and 2).
    UpdatePeer,
    DescribeZone,
    ListZones,
    /// `zone_usage`: the floor of a call that names an upstream and crosses the FFI.
    ZoneUsage,
}

impl Op {
    const ALL: [Op; 8] = [
        Op::AddRemovePair,
        Op::DownUpPair,
        Op::AddPeer,
        Op::RemovePeer,
        Op::UpdatePeer,
        Op::DescribeZone,
        Op::ListZones,
        Op::ZoneUsage,
    ];

    /// The calls that name one peer, compared across zone sizes.
    pub const PER_PEER: [Op; 5] =
        [Op::AddRemovePair, Op::DownUpPair, Op::AddPeer, Op::RemovePeer, Op::UpdatePeer];

    /// The name the Lua side prints.
    fn lua_name(self) -> &'static str {
        match self {
            Op::AddRemovePair => "add_remove_pair",
            Op::DownUpPair => "down_up_pair",
            Op::AddPeer => "add_peer",
            Op::RemovePeer => "remove_peer",
            Op::UpdatePeer => "update_peer",
            Op::DescribeZone => "describe_zone",
            Op::ListZones => "list_zones",
            Op::ZoneUsage => "zone_usage",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Op::AddRemovePair => "add_peer + remove_peer (pair)",
            Op::DownUpPair => "set_peer_down down + up (pair), last peer",
            Op::AddPeer => "add_peer alone",
            Op::RemovePeer => "remove_peer alone, of a peer near the end",
            Op::UpdatePeer => "update_peer (weight), last peer",
            Op::DescribeZone => "describe_zone",
            Op::ListZones => "list_zones",
            Op::ZoneUsage => "zone_usage (the floor of a call)",
        }
    }

    /// The figure of the original C module (2019), as given in the issue, for comparison.
    pub fn reference(self, size: usize) -> Option<&'static str> {
        match (self, size) {
            (Op::AddRemovePair, 3) => Some("0.29"),
            (Op::AddRemovePair, 1000) => Some("5.3–5.5"),
            (Op::DownUpPair, 1000) => Some("3.4–3.9 (one call)"),
            (Op::DescribeZone, 1000) => Some("210–222"),
            _ => None,
        }
    }
}

/// One call at one zone size.
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub op: Op,
    /// Peers in the zone, or zones for `list_zones`.
    pub size: usize,
    /// Calls per round.
    pub iterations: u64,
    pub us_per_call: Summary,
}

/// A case at 10,000 (or 1,000) peers over the same case at 10, round by round.
#[derive(Clone, Debug, Serialize)]
pub struct SizeRatio {
    pub op: Op,
    pub size: usize,
    pub base_size: usize,
    pub ratio: Summary,
}

#[derive(Debug, Serialize)]
pub struct ControlPlane {
    pub rounds: usize,
    pub round_ms: u32,
    /// `ngx.config.ngx_lua_version` (as 0.10.23) and `jit.version` of the worker.
    pub lua_module_version: String,
    pub luajit_version: String,
    pub cases: Vec<Case>,
    pub ratios: Vec<SizeRatio>,
}

impl ControlPlane {
    pub fn case(&self, op: Op, size: usize) -> &Case {
        self.cases
            .iter()
            .find(|c| c.op == op && c.size == size)
            .unwrap_or_else(|| panic!("no case {op:?} at {size}"))
    }

    pub fn ratio(&self, op: Op, size: usize) -> &SizeRatio {
        self.ratios
            .iter()
            .find(|r| r.op == op && r.size == size)
            .unwrap_or_else(|| panic!("no ratio {op:?} at {size}"))
    }
}

/// Runs the control-plane benchmark in one worker bound to `cpu`.
pub fn run(cpu: Option<usize>, budget: &Budget) -> ControlPlane {
    budget.check("control plane");
    let spec = Spec {
        name: "control",
        modules: Modules::LuaAndDynamic,
        workers: 1,
        cpu,
        ports: 1,
        files: vec![("lua/cp.lua", cp_lua())],
    };
    let server = Server::start(&spec, |ports| {
        upstreams() + &LUA_CP.replace("@PORT@", &ports[0].to_string())
    });
    let response = get(server.port(0), "/cp");
    assert_eq!(response.status, 200, "/cp: {}\n{}", response.body, server.error_log());
    server.stop();
    let result = parse(&response.body);
    println!("{}  control plane done", budget.elapsed());
    result
}

/// Parses `/cp`'s lines: `lua <ngx_lua_version> <jit.version...>`, then per case
/// `case <op> <size> <iterations>` and per round `us <op> <size> <round> <µs per call>`.
fn parse(text: &str) -> ControlPlane {
    let mut lua_module_version = String::new();
    let mut luajit_version = String::new();
    let mut cases: Vec<(Op, usize, u64)> = Vec::new();
    let mut samples: Vec<(Op, usize, usize, f64)> = Vec::new();
    let op = |name: &str| {
        Op::ALL.into_iter().find(|o| o.lua_name() == name).unwrap_or_else(|| panic!("op {name}"))
    };
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| -> f64 {
            fields[i].parse().unwrap_or_else(|_| panic!("bad /cp line {line:?}"))
        };
        match fields.first() {
            Some(&"lua") => {
                // ngx_lua_version is 10023 for 0.10.23.
                let v = number(1) as u64;
                lua_module_version = format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000);
                luajit_version = fields[2..].join(" ");
            }
            Some(&"case") => cases.push((op(fields[1]), number(2) as usize, number(3) as u64)),
            Some(&"us") => {
                samples.push((op(fields[1]), number(2) as usize, number(3) as usize, number(4)));
            }
            _ => panic!("bad /cp line {line:?} in:\n{text}"),
        }
    }
    // Per-round times of a case, in round order.
    let series = |op: Op, size: usize| -> Vec<f64> {
        let mut rounds: Vec<(usize, f64)> =
            samples.iter().filter(|s| s.0 == op && s.1 == size).map(|s| (s.2, s.3)).collect();
        rounds.sort_by_key(|r| r.0);
        assert_eq!(rounds.len(), ROUNDS, "rounds of {op:?} at {size}");
        rounds.into_iter().map(|r| r.1).collect()
    };
    let ratios = Op::PER_PEER
        .into_iter()
        .chain([Op::DescribeZone])
        .flat_map(|op| [(op, 1000), (op, 10_000)])
        .map(|(op, size)| SizeRatio {
            op,
            size,
            base_size: 10,
            ratio: Summary::of_ratios(&series(op, size), &series(op, 10)),
        })
        .collect();
    ControlPlane {
        rounds: ROUNDS,
        round_ms: ROUND_MS,
        lua_module_version,
        luajit_version,
        cases: cases
            .into_iter()
            .map(|(op, size, iterations)| Case {
                op,
                size,
                iterations,
                us_per_call: Summary::of(series(op, size)),
            })
            .collect(),
        ratios,
    }
}

/// Peer `i` (0-based) of the benchmark's zones: distinct addresses where nothing listens (no
/// request is ever proxied to them).
fn peer(i: usize) -> String {
    format!("127.2.{}.{}:80", i / 250, i % 250 + 1)
}

/// Upstreams `cp<size>` for every size, and enough small ones to make [`ZONES`] zones.
fn upstreams() -> String {
    let mut body = String::new();
    for size in SIZES {
        // 10,000 peers take about 6 MB (8 on nginx >= 1.27.3); 1 MB holds 1,000 and the peers
        // the timings add only on nginx < 1.27.3.
        let zone = if size >= 1000 { "16m" } else { "1m" };
        body.push_str(&format!("    upstream cp{size} {{\n        zone cp{size} {zone};\n"));
        for i in 0..size {
            body.push_str(&format!("        server {};\n", peer(i)));
        }
        body.push_str("    }\n");
    }
    for z in SIZES.len()..ZONES {
        body.push_str(&format!(
            "    upstream lz{z} {{\n        zone lz{z} 64k;\n        server {};\n    }}\n",
            peer(0)
        ));
    }
    body
}

/// `lua/cp.lua` with the sizes and peers of [`upstreams`].
fn cp_lua() -> String {
    let sizes = |sizes: &[usize]| sizes.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
    let last: Vec<String> = SIZES.iter().map(|&n| format!("[{n}] = \"{}\"", peer(n - 1))).collect();
    CP_LUA
        .replace("@SIZES@", &sizes(&SIZES))
        .replace("@DESCRIBE_SIZES@", &sizes(&DESCRIBE_SIZES))
        .replace("@LAST@", &last.join(", "))
        .replace("@ZONES@", &ZONES.to_string())
        .replace("@ROUNDS@", &ROUNDS.to_string())
        .replace("@ROUND_MS@", &ROUND_MS.to_string())
}

/// The `/cp` server. The cdef runs once, at startup; the benchmark is `lua/cp.lua`.
const LUA_CP: &str = r#"    init_by_lua_block {
        require("ffi").cdef [[
            struct bench_timespec { long tv_sec; long tv_nsec; };
            int clock_gettime(int clock_id, struct bench_timespec *tp);
        ]]
    }

    server {
        listen 127.0.0.1:@PORT@;
        default_type text/plain;

        location = /cp {
            content_by_lua_file lua/cp.lua;
        }
    }
"#;

/// `lua/cp.lua`: the whole control-plane benchmark, run by one request.
const CP_LUA: &str = r#"-- Generated by crates/bench/src/control_plane.rs.
local ffi = require "ffi"
local dynamic = require "ngx.dynamic"

local CLOCK_MONOTONIC = 1
local ts = ffi.new("struct bench_timespec")
local function now_ns()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
end

local LAST = { @LAST@ }
local EXTRA = "127.3.0.1:80"
-- New peers of the add_peer and remove_peer cases, added and removed BATCH at a time.
local BATCH = 100
local NEW = {}
for i = 1, BATCH do
    NEW[i] = "127.3.1." .. i .. ":80"
end
-- Hoisted so that update_peer's figure is the call's, not the allocator's.
local WEIGHTS = { { weight = 1 }, { weight = 2 } }

-- Each case: f(i) makes one call (or pair) on an upstream and checks it. A case with a
-- batch runs at most `batch` calls between its untimed before(n) and after(n).
local cases = {}
local function case(op, size, f, batch, before, after)
    cases[#cases + 1] = { op = op, size = size, f = f, batch = batch, before = before,
                          after = after }
end
local function add_new(u)
    return function(n)
        for i = 1, n do
            assert(dynamic.add_peer(u, NEW[i]))
        end
    end
end
local function remove_new(u)
    return function(n)
        for i = 1, n do
            assert(dynamic.remove_peer(u, NEW[i]))
        end
    end
end

for _, n in ipairs { @SIZES@ } do
    local u, last = "cp" .. n, LAST[n]
    case("add_remove_pair", n, function()
        assert(dynamic.add_peer(u, EXTRA))
        assert(dynamic.remove_peer(u, EXTRA))
    end)
    case("add_peer", n, function(i)
        assert(dynamic.add_peer(u, NEW[i]))
    end, BATCH, nil, remove_new(u))
    case("remove_peer", n, function(i)
        assert(dynamic.remove_peer(u, NEW[i]))
    end, BATCH, add_new(u), nil)
    case("down_up_pair", n, function()
        assert(dynamic.set_peer_down(u, last))
        assert(dynamic.set_peer_down(u, last, false))
    end)
    case("update_peer", n, function(i)
        assert(dynamic.update_peer(u, last, WEIGHTS[i % 2 + 1]))
    end)
end
for _, n in ipairs { @DESCRIBE_SIZES@ } do
    local u = "cp" .. n
    case("describe_zone", n, function()
        assert(#assert(dynamic.describe_zone(u)) == n)
    end)
end
case("list_zones", @ZONES@, function()
    assert(#assert(dynamic.list_zones()) == @ZONES@)
end)
case("zone_usage", 3, function()
    assert(dynamic.zone_usage("cp3"))
end)

-- Nanoseconds taken by `iterations` calls (batches excluding their before and after).
local function time(c, iterations)
    local f, batch, total, done = c.f, c.batch or iterations, 0, 0
    while done < iterations do
        local n = math.min(batch, iterations - done)
        if c.before then
            c.before(n)
        end
        local start = now_ns()
        for i = 1, n do
            f(i)
        end
        total = total + now_ns() - start
        if c.after then
            c.after(n)
        end
        done = done + n
    end
    return total
end

-- Calibration: double the calls until they take a millisecond, then size a round to
-- ROUND_MS (an even count, so update_peer ends on weight 1).
local ROUND_NS = @ROUND_MS@ * 1e6
for _, c in ipairs(cases) do
    time(c, 2)
    local n = 2
    while true do
        local ns = time(c, n)
        if ns >= 1e6 then
            c.iterations = math.max(2, 2 * math.ceil(ROUND_NS * n / ns / 2))
            break
        end
        n = n * 2
    end
    ngx.say("case ", c.op, " ", c.size, " ", c.iterations)
end

ngx.say("lua ", ngx.config.ngx_lua_version, " ", jit.version)
for round = 1, @ROUNDS@ do
    local first, last, step = 1, #cases, 1
    if round % 2 == 0 then
        first, last, step = #cases, 1, -1
    end
    for k = first, last, step do
        local c = cases[k]
        -- Earlier cases' garbage is not this case's cost.
        collectgarbage()
        local ns = time(c, c.iterations)
        ngx.say("us ", c.op, " ", c.size, " ", round, " ", ns / c.iterations / 1e3)
    end
end
"#;
