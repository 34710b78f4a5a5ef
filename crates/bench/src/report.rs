//! The results: everything measured, as JSON (`results.json`) and as `docs/benchmarks.md`,
//! with the targets of the issue checked against the medians.

use std::fmt::Write as _;

use serde::Serialize;

use crate::control_plane::{self, ControlPlane, Op};
use crate::data_plane::{self, DataPlane, Ratio, Scenario};
use crate::memory::{self, Memory};
use crate::propagation::Propagation;

/// Where and with what the benchmark ran.
#[derive(Debug, Serialize)]
pub struct Setup {
    /// UTC, ISO 8601.
    pub date: String,
    /// The command that produced the report (`make bench`, unless run otherwise).
    pub command: String,
    /// `nproc`.
    pub nproc: String,
    pub cpu_model: String,
    pub kernel: String,
    pub nginx_binary: String,
    /// `nginx -v`.
    pub nginx_version: String,
    /// Our module as given (the bench loads a copy of it, taken at the start).
    pub module: String,
    /// `git describe --always --dirty` of the workspace.
    pub revision: String,
    pub lua_modules_dir: String,
    /// `wrk -v`, first line.
    pub wrk_version: String,
    pub rounds: usize,
    pub run_seconds: u64,
    pub connections: u32,
}

/// One target of the issue and whether the medians reach it.
#[derive(Debug, Serialize)]
pub struct Target {
    pub area: &'static str,
    pub goal: String,
    pub measured: String,
    pub met: bool,
    /// For a missed target, what the run measured that explains it.
    pub why_missed: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub setup: Setup,
    pub runtime_seconds: f64,
    pub targets: Vec<Target>,
    pub data_plane: DataPlane,
    pub control_plane: ControlPlane,
    pub propagation: Propagation,
    pub memory: Memory,
}

/// The targets, checked against the medians; a missed one says what the other figures of the
/// run tell about why.
pub fn targets(data: &DataPlane, control: &ControlPlane, propagation: &Propagation) -> Vec<Target> {
    let mut targets = Vec::new();
    for ratio in data.ratios.iter().filter(|r| r.target.is_some()) {
        let goal = ratio.target.expect("filtered on a target");
        let met = ratio.met() == Some(true);
        targets.push(Target {
            area: "data plane",
            goal: format!("{} >= {goal} at {} peers", ratio.name, thousands(ratio.peers)),
            measured: format!(
                "throughput {}, requests per CPU-second {}",
                ratio.throughput.show(3),
                ratio.requests_per_cpu.show(3)
            ),
            met,
            why_missed: (!met).then(|| data_plane_miss(data, ratio)),
        });
    }
    let us = |op: Op, size: usize| control.case(op, size).us_per_call.median;
    let describe = &control.case(Op::DescribeZone, 1000).us_per_call;
    targets.push(Target {
        area: "control plane",
        goal: "describe_zone of 1,000 peers < 200 µs".into(),
        measured: format!("{} µs", describe.show(1)),
        met: describe.median < 200.0,
        why_missed: Some(format!(
            "{:.3} µs per peer described (Lua tables of 14 fields each)",
            describe.median / 1000.0
        )),
    });
    for op in [Op::AddRemovePair, Op::DownUpPair, Op::UpdatePeer] {
        let ratio = &control.ratio(op, 10_000).ratio;
        let (add, remove) =
            (control.ratio(Op::AddPeer, 10_000), control.ratio(Op::RemovePeer, 10_000));
        let per_peer_ns =
            (us(Op::RemovePeer, 10_000) - us(Op::RemovePeer, 10)) * 1000.0 / (10_000.0 - 10.0);
        targets.push(Target {
            area: "control plane",
            goal: format!("{} at 10,000 peers within 2x of 10", op.label()),
            measured: format!("{}x", ratio.show(2)),
            met: ratio.median <= 2.0,
            why_missed: Some(format!(
                "from 10 to 10,000 peers add_peer alone takes {}x and remove_peer alone {}x \
                 ({per_peer_ns:.1} ns more per peer in the list): the growth is remove_peer's, \
                 which walks the list",
                add.ratio.show(2),
                remove.ratio.show(1)
            )),
        });
    }
    for op in [Op::AddRemovePair, Op::DownUpPair] {
        let pair = &control.case(op, 3).us_per_call;
        targets.push(Target {
            area: "control plane",
            goal: format!("{} at 3 peers < 1 µs", op.label()),
            measured: format!("{} µs", pair.show(2)),
            met: pair.median < 1.0,
            why_missed: Some(format!(
                "a pair is two calls, and the cheapest call (zone_usage: arguments, the FFI, \
                 finding the upstream) takes {:.2} µs; at 3 peers add_peer alone takes {:.2} µs, \
                 remove_peer {:.2} µs, update_peer {:.2} µs",
                us(Op::ZoneUsage, 3),
                us(Op::AddPeer, 3),
                us(Op::RemovePeer, 3),
                us(Op::UpdatePeer, 3)
            )),
        });
    }
    targets.push(Target {
        area: "propagation",
        goal: format!("0 of {} looks stale", thousands(propagation.iterations)),
        measured: format!("{} stale, {} unexpected", propagation.stale, propagation.other),
        met: propagation.stale == 0 && propagation.other == 0,
        why_missed: None,
    });
    for t in targets.iter_mut().filter(|t| t.met) {
        t.why_missed = None;
    }
    targets
}

/// What the other ratios at the same peer count say about a missed data-plane target.
fn data_plane_miss(data: &DataPlane, missed: &Ratio) -> String {
    let find = |name: &str| {
        data.ratios
            .iter()
            .find(|r| r.name == name && r.peers == missed.peers)
            .expect("every ratio at every peer count")
    };
    let both = |r: &Ratio| format!("{} (CPU {})", r.throughput.show(3), r.requests_per_cpu.show(3));
    if missed.name == "D/B" {
        return format!(
            "D's timer made {} changes a second; the difference is what the changes and their \
             timer cost the proxy's one worker, with the run-to-run spread the min–max shows",
            data.churn_per_second.show(0)
        );
    }
    format!(
        "split by M (the same configured peers in B's nginx): M/Z {} is what having the lua \
         module and ours loaded costs, B/M {} what peers added at runtime cost against \
         configured ones",
        both(find("M/Z")),
        both(find("B/M"))
    )
}

impl Report {
    /// `docs/benchmarks.md`; `plot` is the SVG's path relative to it, `results` the path of the
    /// JSON results in the workspace.
    pub fn markdown(&self, plot: &str, results: &str) -> String {
        let mut md = String::new();
        self.write_intro(&mut md, results);
        self.write_data_plane(&mut md, plot);
        self.write_control_plane(&mut md);
        self.write_propagation_and_memory(&mut md);
        md
    }

    fn write_intro(&self, md: &mut String, results: &str) {
        let s = &self.setup;
        let _ = write!(
            md,
            "# Benchmarks

Generated by `{command}` on {date} in {minutes:.1} minutes; every run rewrites this file, its plot
and `{results}` (every sample, every run). Each figure is a median with the
minimum and maximum of its rounds; data-plane figures are ratios between configurations
measured alternately in the same run, never a single absolute time.

## Targets

| area | target | measured: median [min–max] | met |
|---|---|---|---|
",
            command = s.command,
            date = s.date,
            minutes = self.runtime_seconds / 60.0,
        );
        for t in &self.targets {
            let met = if t.met { "yes" } else { "**no**" };
            let _ = writeln!(md, "| {} | {} | {} | {met} |", t.area, t.goal, t.measured);
        }
        let missed: Vec<&Target> = self.targets.iter().filter(|t| !t.met).collect();
        if !missed.is_empty() {
            md.push_str("\nWhat the same run measured about each miss:\n\n");
            for t in missed {
                let why = t.why_missed.as_deref().unwrap_or("no other figure explains it");
                let _ = writeln!(md, "- {}: {why}.", t.goal);
            }
        }
        let _ = write!(
            md,
            "
## Setup

| | |
|---|---|
| machine | {nproc} CPUs (`nproc`), {cpu}, Linux {kernel} |
| nginx | `{binary}`: {version} |
| modules | `{module}` (source revision {revision}); lua-nginx-module {lua} from `{lua_dir}`, {luajit} |
| load | {wrk} |
| command | `{command}` |

`make bench` builds the module, installs wrk if it is missing (`apt-get install wrk`), builds
crates/bench and runs it (`target/release/bench`, stopped by `timeout` at 14 minutes; it stops
itself at 13). The nginx binary and modules come from `DYNUP_NGINX`, `DYNUP_MODULE`,
`DYNUP_LUA_MODULES_DIR` and `DYNUP_LUA_PACKAGE_PATH`, as for the integration tests (so another
nginx build is one set of variables away: `make bench-1.28` runs it on nginx 1.28);
`DYNUP_BENCH_ROUNDS` (default {rounds}) and `DYNUP_BENCH_SECONDS` (default {seconds}) size the
data plane. Everything runs on loopback. Each nginx has its own prefix under the temp directory
and loads a copy of the module taken at the start (a rebuild during the run cannot touch it);
its error log is checked at the end, and any error, alert or crash fails the run. On a shared
or virtual machine other work adds noise to every figure: the min–max ranges show how much.
",
            nproc = s.nproc,
            cpu = s.cpu_model,
            kernel = s.kernel,
            binary = s.nginx_binary,
            version = s.nginx_version,
            module = s.module,
            revision = s.revision,
            lua = self.control_plane.lua_module_version,
            lua_dir = s.lua_modules_dir,
            luajit = self.control_plane.luajit_version,
            wrk = s.wrk_version,
            command = s.command,
            rounds = crate::DEFAULT_ROUNDS,
            seconds = crate::DEFAULT_SECONDS,
        );
    }

    fn write_data_plane(&self, md: &mut String, plot: &str) {
        let d = &self.data_plane;
        let cpus = match (d.proxy_cpu, d.load_cpu) {
            (Some(proxy), Some(load)) => format!(
                "The proxy runs one worker bound to CPU {proxy}; the backends (one nginx worker) \
                 and wrk share CPU {load}, so the proxy has a core to itself and is the part \
                 whose cost the figures show."
            ),
            _ => "Fewer than 2 CPUs: nothing is bound to a CPU.".into(),
        };
        let _ = write!(
            md,
            "
## Data plane

Proxied `GET /` through one nginx to real backends on loopback, at {peers} peers:

| | configuration |
|---|---|
",
            peers = join(&data_plane::PEER_COUNTS.map(thousands)),
        );
        for s in Scenario::ALL {
            let _ = writeln!(md, "| {s:?} | {} |", s.description());
        }
        let _ = write!(
            md,
            "
A and Z run in an nginx without any module; B, C, D and M in one with the lua module and ours.
M splits B/Z in two: M/Z is what loading the modules costs a zoned upstream (our module wraps
each request's peer selection and sizes its `tried` bitmap to the list's capacity), B/M what
peers added at runtime cost against the same peers configured.
Every upstream keeps a keep-alive cache larger than its peers (`keepalive` peers + {spare},
`proxy_http_version 1.1`, `Connection \"\"`). The backends are one nginx worker answering
`return 200` on {backends} loopback ports. {cpus}

Each round runs every scenario for {secs} s ({order}, backwards in the next round),
{rounds} rounds per peer count after a {warmup} s warm-up of each; a ratio compares runs of the same
round. wrk: `{wrk}`. The proxy's CPU is its workers' utime + stime from `/proc/<pid>/stat`
over the run, divided by the requests served.

![Data-plane ratios]({plot})

Throughput is requests per second, numerator over denominator; CPU is requests per CPU-second of
the proxy, numerator over denominator (both: above 1, the numerator does better). Latencies are
the numerator's wrk percentile over the denominator's (below 1, the numerator answers sooner).

| ratio | peers | throughput | requests per CPU-second | p50 latency | p99 latency |
|---|---|---|---|---|---|
",
            backends = data_plane::BACKEND_PORTS,
            spare = data_plane::KEEPALIVE_SPARE,
            secs = d.run_seconds,
            order = Scenario::ROUND.map(|s| format!("{s:?}")).join(" "),
            rounds = d.rounds,
            warmup = d.warmup_seconds,
            wrk = d.wrk_command,
        );
        for r in &d.ratios {
            let _ = writeln!(
                md,
                "| {}{} | {} | {} | {} | {} | {} |",
                r.name,
                r.target.map_or(String::new(), |t| format!(" (target ≥ {t})")),
                thousands(r.peers),
                r.throughput.show(3),
                r.requests_per_cpu.show(3),
                r.p50.show(2),
                r.p99.show(2),
            );
        }
        let _ = write!(
            md,
            "
D's timer made {churn} changes a second (median [min–max] over its runs; the target
rate is {rate}) with {errors} refused.
",
            churn = d.churn_per_second.show(0),
            rate = data_plane::CHURN_RATE,
            errors = d.runs.iter().filter_map(|r| r.churn.as_ref()).map(|c| c.errors).sum::<u64>(),
        );
        let errors: u64 = d.runs.iter().map(|r| r.errors).sum();
        let _ = writeln!(
            md,
            "wrk saw {errors} socket errors or non-2xx answers in {} runs.",
            d.runs.len()
        );
        self.write_connections(md);
        self.write_round_robin_note(md);
        let _ = write!(
            md,
            "\nThe upstreams at 3 peers, as configured (ports of this run; M's is Z's, named \
             `m3`):\n\n```nginx\n"
        );
        for block in d.upstreams_at_3.values() {
            md.push_str(block);
        }
        md.push_str("```\n");
    }

    /// Backend connections opened during the measured runs (the backends' `stub_status`).
    fn write_connections(&self, md: &mut String) {
        let counts = data_plane::PEER_COUNTS.map(thousands);
        let _ = write!(
            md,
            "
Connections the proxy opened to the backends during the measured runs, all rounds together
(from the backends' `stub_status`), and per million requests. With keep-alive caches larger
than the peers, a connection is opened only when a peer has more requests in flight at once
than it had connections before:

| scenario | {} |
|---|{}
",
            counts.join(" peers | ") + " peers",
            "---|".repeat(counts.len())
        );
        for scenario in Scenario::ALL {
            let cells: Vec<String> = data_plane::PEER_COUNTS
                .iter()
                .map(|&n| {
                    let runs = self.data_plane.runs.iter();
                    let runs: Vec<_> =
                        runs.filter(|r| r.scenario == scenario && r.peers == n).collect();
                    let opened: u64 = runs.iter().map(|r| r.backend_connections).sum();
                    let requests: u64 = runs.iter().map(|r| r.requests).sum();
                    format!("{opened} ({:.1} per million)", opened as f64 * 1e6 / requests as f64)
                })
                .collect();
            let _ = writeln!(md, "| {scenario:?} | {} |", cells.join(" | "));
        }
    }

    /// B/A and C/A at the largest peer count, in words.
    fn write_round_robin_note(&self, md: &mut String) {
        let max = data_plane::PEER_COUNTS[data_plane::PEER_COUNTS.len() - 1];
        let find = |name: &str| {
            self.data_plane
                .ratios
                .iter()
                .find(|r| r.name == name && r.peers == max)
                .expect("every ratio at every peer count")
        };
        let (b, c) = (find("B/A"), find("C/A"));
        let verdict = if c.throughput.median > 1.0 { "faster" } else { "slower" };
        let _ = write!(
            md,
            "
nginx's round robin walks every peer of the list for each request (and the keep-alive cache
looks up its connection by address in a list), so its cost grows with the peer count; a Lua
picker that just takes the next array element does not. At {peers} peers, C/A is
{c_tp} in throughput and {c_cpu} in requests per CPU-second: the Lua picker is {verdict} than
nginx's round robin there. B/A is {b_tp} and {b_cpu}: B runs nginx's own round robin on
the same peers.
",
            peers = thousands(max),
            c_tp = c.throughput.show(3),
            c_cpu = c.requests_per_cpu.show(3),
            b_tp = b.throughput.show(3),
            b_cpu = b.requests_per_cpu.show(3),
        );
    }

    fn write_control_plane(&self, md: &mut String) {
        let c = &self.control_plane;
        let _ = write!(
            md,
            "
## Control plane

Microseconds per call, measured inside one nginx worker by LuaJIT with
`clock_gettime(CLOCK_MONOTONIC)` through the FFI: each case is calibrated to about {ms} ms of
calls, then runs once per round, {rounds} rounds, alternating the order of the cases. A pair
counts as one call. A call that names a configured peer names the last of its list. The zones' peers are configured
(distinct addresses where nothing listens); `list_zones` runs with {zones} zones configured.
The reference is the original C module's figure (as given in the issue).

| call | zone | µs per call | C module |
|---|---|---|---|
",
            ms = c.round_ms,
            rounds = c.rounds,
            zones = control_plane::ZONES,
        );
        for case in &c.cases {
            let zone = match case.op {
                Op::ListZones => format!("{} zones", thousands(case.size)),
                _ => format!("{} peers", thousands(case.size)),
            };
            let _ = writeln!(
                md,
                "| {} | {zone} | {} | {} |",
                case.op.label(),
                case.us_per_call.show(3),
                case.op.reference(case.size).unwrap_or("")
            );
        }
        let _ = write!(
            md,
            "
The same calls on a large zone over a 10-peer zone, round by round:

| call | 1,000 / 10 peers | 10,000 / 10 peers |
|---|---|---|
"
        );
        for op in Op::PER_PEER.into_iter().chain([Op::DescribeZone]) {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                op.label(),
                c.ratio(op, 1000).ratio.show(2),
                c.ratio(op, 10_000).ratio.show(2)
            );
        }
    }

    fn write_propagation_and_memory(&self, md: &mut String) {
        let p = &self.propagation;
        let m = &self.memory;
        let mib = 1024.0 * 1024.0;
        let _ = write!(
            md,
            "
## Propagation

Two workers, a keep-alive connection to each (every answer names its worker's pid). {n} times:
a change through one worker, then at once a request to the other that reads the extra peer
with `describe_zone`; the workers take turns. Changes: {changes}.

**{stale} of {n}** looks still saw the peer set from before the change ({other} saw something
else).

## Memory

From `zone_usage` (the slab allocator's free pages), with added peers named like `{addr}`:

| | |
|---|---|
| zone bytes per added peer | {bytes:.0} (over {sample} peers) |
| peers in a 1 MiB zone | {fill1} (then: `{err1}`) |
| peers in a 16 MiB zone | {fill16} (then: `{err16}`) |
| free bytes before / after {churn} changes | {before} / {after} ({verdict}, {churn_errors} refused) |

The churn adds, marks down, brings up and removes ten peers in turn. {bound} A 1 MiB zone holds
a peer per {per_mib:.0} bytes, all overheads included.
",
            bound = fill_bound(m),
            n = thousands(p.iterations),
            changes = p.changes,
            stale = p.stale,
            other = p.other,
            addr = m.address_example,
            bytes = m.bytes_per_peer,
            sample = memory::PER_PEER_SAMPLE,
            fill1 = thousands(m.fill_1m.peers),
            err1 = m.fill_1m.error,
            fill16 = thousands(m.fill_16m.peers),
            err16 = m.fill_16m.error,
            churn = thousands(memory::CHURN_CHANGES),
            before = m.churn.free_before,
            after = m.churn.free_after,
            verdict = if m.churn.free_before == m.churn.free_after { "unchanged" } else { "**changed**" },
            churn_errors = m.churn.errors,
            per_mib = mib / m.fill_1m.peers as f64,
        );
    }
}

/// What stopped the fills: the list's capacity (which the module sizes from the zone, at most
/// 16,384 peers) or the zone's memory.
fn fill_bound(m: &Memory) -> String {
    let by = |fill: &memory::Fill| {
        if fill.error.contains("is full") {
            "the list's capacity"
        } else {
            "the zone's memory"
        }
    };
    format!(
        "The 1 MiB fill stopped at {}, the 16 MiB one at {} (the module sizes each list's \
         capacity from its zone, at most 16,384 peers).",
        by(&m.fill_1m),
        by(&m.fill_16m)
    )
}

/// `1,000` for 1000: counts in the text read as in the issue.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `a, b and c`.
fn join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(3), "3");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(16_384), "16,384");
    }
}
