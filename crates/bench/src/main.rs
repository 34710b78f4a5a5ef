//! `make bench`: benchmarks of lua-dynamic-upstream against plain nginx, on loopback.
//!
//! Four parts, each in its own nginx instances (see each module): the data plane (proxied
//! requests with peers added at runtime against static ones, with wrk), the control plane
//! (µs per `ngx.dynamic` call, timed inside a worker), propagation between workers, and zone
//! memory. Writes `build/<name>/results.json` (every sample) and `docs/<name>.md` with its plot,
//! `<name>` being `benchmarks` or `DYNUP_BENCH_NAME`. Nothing here asserts a figure: targets
//! are reported, met or not.
//!
//! Environment: `DYNUP_NGINX`, `DYNUP_MODULE`, `DYNUP_LUA_MODULES_DIR` and
//! `DYNUP_LUA_PACKAGE_PATH` choose the nginx build, as for the integration tests;
//! `DYNUP_BENCH_ROUNDS` and `DYNUP_BENCH_SECONDS` size the data plane; `DYNUP_BENCH_COMMAND`
//! is the command line the report quotes (`make bench`, set by scripts/bench.sh);
//! `DYNUP_BENCH_NAME` names the outputs (`benchmarks-nginx-1.28` for `make bench-1.28`).

mod control_plane;
mod data_plane;
mod memory;
mod plot;
mod propagation;
mod report;
mod server;
mod stats;
mod wrk;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::settings;

use crate::report::{Report, Setup};
use crate::wrk::Wrk;

/// The whole run must end within this: the issue's bound is 15 minutes, `make bench` kills
/// the bench at 14, and this check stops it cleanly (with its nginx instances) before that.
const BUDGET: Duration = Duration::from_secs(13 * 60);
/// wrk's connections: enough to keep one proxy worker busy, few enough that latency
/// percentiles stay about the proxy, not about queueing.
const CONNECTIONS: u32 = 16;
const WARMUP: Duration = Duration::from_secs(1);
/// Data-plane rounds and seconds per run: many short runs, so that a burst of noise from a
/// neighbour on a shared machine hits few of them, and the medians stay put.
pub const DEFAULT_ROUNDS: usize = 10;
pub const DEFAULT_SECONDS: u64 = 3;

/// The time the run started and the deadline every part checks before it begins.
pub struct Budget {
    started: Instant,
}

impl Budget {
    /// Panics (stopping every nginx of the bench) if the run has outlived [`BUDGET`].
    pub fn check(&self, next: &str) {
        assert!(
            self.started.elapsed() < BUDGET,
            "time budget of {BUDGET:?} exceeded before {next}: use fewer DYNUP_BENCH_ROUNDS or \
             DYNUP_BENCH_SECONDS"
        );
    }

    /// `[ 123s]`, for progress lines.
    pub fn elapsed(&self) -> String {
        format!("[{:>4}s]", self.started.elapsed().as_secs())
    }
}

fn main() {
    let budget = Budget { started: Instant::now() };
    let workspace = fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .expect("the workspace directory");
    let name = env::var("DYNUP_BENCH_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "benchmarks".into());
    assert!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'),
        "DYNUP_BENCH_NAME={name:?}: use letters, digits, '-', '_' and '.'"
    );
    let out_dir = workspace.join("build").join(if name == "benchmarks" { "bench" } else { &name });
    let docs = workspace.join("docs");
    let rounds = env_number("DYNUP_BENCH_ROUNDS", DEFAULT_ROUNDS as u64) as usize;
    let seconds = env_number("DYNUP_BENCH_SECONDS", DEFAULT_SECONDS);
    let (proxy_cpu, load_cpu) = cpus();
    let wrk = Wrk { connections: CONNECTIONS, cpu: load_cpu };
    let setup = setup(&workspace, rounds, seconds, &wrk);
    println!(
        "{}  bench: {} with {}, {} CPUs, {rounds} rounds of {seconds} s",
        budget.elapsed(),
        setup.nginx_binary,
        setup.nginx_version,
        setup.nproc
    );
    raise_open_file_limit();
    fs::create_dir_all(&out_dir).unwrap_or_else(|e| panic!("create {}: {e}", out_dir.display()));
    server::snapshot_module(&out_dir);

    // The short parts first: a failure there costs little time.
    let control_plane = control_plane::run(proxy_cpu, &budget);
    let propagation = propagation::run(&budget);
    let memory = memory::run(proxy_cpu, &budget);
    let data_plane = data_plane::run(
        &data_plane::Options {
            rounds,
            run: Duration::from_secs(seconds),
            warmup: WARMUP,
            wrk,
            proxy_cpu,
            load_cpu,
        },
        &budget,
    );

    let report = Report {
        targets: report::targets(&data_plane, &control_plane, &propagation),
        setup,
        runtime_seconds: budget.started.elapsed().as_secs_f64(),
        data_plane,
        control_plane,
        propagation,
        memory,
    };
    let json = out_dir.join("results.json");
    let text = serde_json::to_string_pretty(&report).expect("serialise the results");
    fs::write(&json, text + "\n").unwrap_or_else(|e| panic!("write {}: {e}", json.display()));
    let plot_name = format!("{name}-data-plane.svg");
    plot::draw(&report.data_plane, &docs.join(&plot_name));
    let md = docs.join(format!("{name}.md"));
    let results = json.strip_prefix(&workspace).unwrap_or(&json).display().to_string();
    fs::write(&md, report.markdown(&plot_name, &results))
        .unwrap_or_else(|e| panic!("write {}: {e}", md.display()));
    for t in &report.targets {
        println!(
            "{} {}: {} — {}",
            if t.met { "met   " } else { "MISSED" },
            t.area,
            t.goal,
            t.measured
        );
    }
    println!(
        "{}  wrote {}, {} and {}",
        budget.elapsed(),
        json.display(),
        md.display(),
        docs.join(plot_name).display()
    );
}

/// A positive whole number from the environment, or `default`.
fn env_number(name: &str, default: u64) -> u64 {
    match env::var(name) {
        Ok(value) if !value.is_empty() => match value.parse() {
            Ok(n) if n > 0 => n,
            _ => panic!("{name}={value:?} is not a positive whole number"),
        },
        _ => default,
    }
}

/// The proxy's CPU and the CPU of the load (wrk and the backends): the first two this process
/// may run on, or none on a single CPU.
fn cpus() -> (Option<usize>, Option<usize>) {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in /proc/self/status");
    // "0-1", "0,2-3"...
    let allowed: Vec<usize> = list
        .trim()
        .split(',')
        .flat_map(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            let number = |s: &str| s.parse::<usize>().expect("a CPU number");
            number(first)..=number(last)
        })
        .collect();
    match allowed.as_slice() {
        [proxy, load, ..] => (Some(*proxy), Some(*load)),
        _ => (None, None),
    }
}

/// What the report says about the machine and the software.
fn setup(workspace: &Path, rounds: usize, seconds: u64, wrk: &Wrk) -> Setup {
    let settings = settings();
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    Setup {
        date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command: command(),
        nproc: output("nproc", &[]),
        cpu_model,
        kernel: output("uname", &["-r"]),
        nginx_binary: settings.nginx.display().to_string(),
        nginx_version: output(&settings.nginx.display().to_string(), &["-v"])
            .trim_start_matches("nginx version: ")
            .to_owned(),
        module: absolute(&settings.module),
        revision: output(
            "git",
            &["-C", &workspace.display().to_string(), "describe", "--always", "--dirty"],
        ),
        lua_modules_dir: absolute(&settings.lua_modules_dir),
        // "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
        wrk_version: output("wrk", &["-v"])
            .lines()
            .next()
            .and_then(|line| line.split(" Copyright").next())
            .unwrap_or_default()
            .to_owned(),
        rounds,
        run_seconds: seconds,
        connections: wrk.connections,
    }
}

/// The command line that produced the report, with the settings that were overridden.
fn command() -> String {
    let program =
        env::var("DYNUP_BENCH_COMMAND").unwrap_or_else(|_| "cargo run --release -p bench".into());
    let mut words: Vec<String> = ["DYNUP_BENCH_ROUNDS", "DYNUP_BENCH_SECONDS"]
        .into_iter()
        .filter_map(|name| Some(format!("{name}={}", env::var(name).ok()?)))
        .collect();
    words.push(program);
    words.join(" ")
}

/// What a command printed (stdout, else stderr, where `nginx -v` and `wrk -v` write), trimmed.
fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e} (make bench installs what it needs)"));
    let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
    String::from_utf8_lossy(&text).trim().to_owned()
}

fn absolute(path: &Path) -> String {
    fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path)).display().to_string()
}

/// The data plane reserves over 1,000 loopback ports at once (each an open socket until nginx
/// takes it), more than the usual soft limit of 1,024 descriptors.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read or write the one struct passed, which lives here.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
