//! nginx instances for the benchmarks, started from a complete generated configuration.
//!
//! The integration harness ([`integration_tests::Config`]) fixes `worker_connections` at 1024,
//! which a proxy keeping 1,000 idle keep-alive connections per upstream (and a backend serving
//! all of them on 1,000 listening sockets) cannot live with, and it logs every request. So the
//! benchmarks write their own `nginx.conf`, but take every path from the harness's
//! [`integration_tests::settings`] (`DYNUP_NGINX`, `DYNUP_MODULE`, `DYNUP_LUA_MODULES_DIR`,
//! `DYNUP_LUA_PACKAGE_PATH`), so a run against another nginx build needs only those variables.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::settings;

/// How long nginx gets to start or stop: far more than it needs on an idle machine.
const TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
/// Starts attempted when another process takes one of our ports first.
const START_ATTEMPTS: usize = 3;
/// Error-log markers that invalidate a benchmark: a crash, a bug, or a proxied request that
/// failed (a benchmark of failing requests measures nothing).
const BAD_LOG_MARKERS: [&str; 5] = ["[emerg]", "[alert]", "[crit]", "[error]", "exited on signal"];

/// The copy of our module every instance loads: see [`snapshot_module`].
static MODULE: OnceLock<PathBuf> = OnceLock::new();

/// Copies our module (`DYNUP_MODULE`) into `dir` once, before any nginx starts, and makes every
/// instance load the copy. Rebuilding a module rewrites its file in place, and a running nginx
/// that has it mapped then dies of SIGBUS: a rebuild during the run (another `make`) must not
/// crash the benchmark, nor switch builds halfway through it.
pub fn snapshot_module(dir: &Path) {
    MODULE.get_or_init(|| {
        let source = &settings().module;
        assert!(
            source.exists(),
            "{} not found: make module, or set DYNUP_MODULE",
            source.display()
        );
        let copy = dir.join("ngx_http_lua_dynamic_upstream_module.so");
        // A new file renamed over the old one: an nginx still running on the old copy keeps it.
        let partial = dir.join(".module.so.partial");
        fs::copy(source, &partial)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", source.display(), partial.display()));
        fs::rename(&partial, &copy)
            .unwrap_or_else(|e| panic!("rename {} to {}: {e}", partial.display(), copy.display()));
        copy
    });
}

fn module() -> &'static Path {
    MODULE.get().expect("snapshot_module runs before any nginx starts")
}

/// Which dynamic modules an instance loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modules {
    /// nginx alone: the baselines, which must not pay for any module.
    None,
    /// ndk, lua-nginx-module and ours.
    LuaAndDynamic,
}

/// What to start: everything but the `http {}` body, which is built from the ports chosen.
pub struct Spec {
    /// Short name, for the prefix directory and messages.
    pub name: &'static str,
    pub modules: Modules,
    pub workers: u32,
    /// CPU every worker is bound to (`worker_cpu_affinity`), or `None` to let the kernel choose.
    pub cpu: Option<usize>,
    /// Loopback ports to reserve; the body's first `listen` must be on the first one, which
    /// [`Server::start`] waits for.
    pub ports: usize,
    /// Files to write into the prefix (path relative to it, contents) before nginx starts,
    /// e.g. Lua for `init_by_lua_file`: a `*_by_lua_block` must fit nginx's 4 KiB
    /// configuration buffer.
    pub files: Vec<(&'static str, String)>,
}

/// A running nginx master and its workers, in a private prefix under the temp directory.
/// Stopped (and its error log checked) by [`Server::stop`]; killed on drop otherwise.
pub struct Server {
    name: &'static str,
    child: Child,
    prefix: PathBuf,
    ports: Vec<u16>,
    workers: usize,
    stopped: bool,
}

impl Server {
    /// Starts nginx with the `http {}` body `body(ports)` and waits until every worker runs and
    /// the first port accepts. Retries on fresh ports if one was taken meanwhile.
    pub fn start(spec: &Spec, body: impl Fn(&[u16]) -> String) -> Server {
        for attempt in 1..=START_ATTEMPTS {
            let ports = free_ports(spec.ports);
            let prefix = create_prefix(spec.name);
            for (path, contents) in &spec.files {
                let path = prefix.join(path);
                let dir = path.parent().expect("a file in the prefix");
                fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
                fs::write(&path, contents)
                    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            }
            let conf = prefix.join("conf/nginx.conf");
            fs::write(&conf, config(spec, &prefix, &body(&ports)))
                .unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
            let child = spawn(&prefix, &conf);
            let mut server = Server {
                name: spec.name,
                child,
                prefix,
                ports,
                workers: spec.workers as usize,
                stopped: false,
            };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(log) if log.contains("Address already in use") && attempt < START_ATTEMPTS => {
                    server.kill();
                }
                Err(log) => {
                    server.kill();
                    panic!("nginx {} did not start:\n{log}", spec.name);
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The `i`th reserved port.
    pub fn port(&self, i: usize) -> u16 {
        self.ports[i]
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The pids of the serving workers.
    pub fn worker_pids(&self) -> Vec<i32> {
        let master = i32::try_from(self.child.id()).expect("pid fits in i32");
        let mut pids: Vec<i32> = fs::read_dir("/proc")
            .expect("read /proc")
            .filter_map(|entry| {
                let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let ppid: i32 = stat_fields(&stat)?.nth(1)?.parse().ok()?;
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                (ppid == master && cmdline.starts_with(b"nginx: worker process")).then_some(pid)
            })
            .collect();
        pids.sort_unstable();
        pids
    }

    /// CPU time its workers used so far (user + system), in clock ticks, from
    /// `/proc/<pid>/stat`. Only workers count: the master does nothing while serving.
    pub fn worker_cpu_ticks(&self) -> u64 {
        self.worker_pids()
            .iter()
            .map(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
                // After the name: state, ppid, ..., utime is the 12th field, stime the 13th.
                let mut fields = stat_fields(&stat).expect("a well-formed stat line").skip(11);
                let mut next = || -> u64 {
                    fields.next().and_then(|f| f.parse().ok()).expect("utime and stime")
                };
                next() + next()
            })
            .sum()
    }

    /// The error log so far.
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.prefix.join("logs/error.log")).unwrap_or_default()
    }

    /// Stops nginx gracefully and panics if its error log shows anything that invalidates the
    /// results. The prefix is removed when all went well.
    pub fn stop(mut self) {
        self.stopped = true;
        let master = i32::try_from(self.child.id()).expect("pid fits in i32");
        signal(master, libc::SIGQUIT);
        let deadline = Instant::now() + TIMEOUT;
        while self.child.try_wait().expect("poll the nginx master").is_none() {
            if Instant::now() > deadline {
                self.kill();
                panic!("nginx {} did not stop on SIGQUIT", self.name);
            }
            thread::sleep(POLL);
        }
        self.kill();
        let log = self.error_log();
        let bad: Vec<&str> =
            log.lines().filter(|l| BAD_LOG_MARKERS.iter().any(|m| l.contains(m))).collect();
        assert!(
            bad.is_empty(),
            "nginx {} logged problems (files kept in {}):\n{}",
            self.name,
            self.prefix.display(),
            bad.join("\n")
        );
        let _ = fs::remove_dir_all(&self.prefix);
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the nginx master") {
                let output = fs::read_to_string(self.prefix.join("logs/stderr.log"));
                return Err(format!(
                    "exited ({status}):\n{}{}",
                    self.error_log(),
                    output.unwrap_or_default()
                ));
            }
            if self.worker_pids().len() == self.workers
                && std::net::TcpStream::connect(("127.0.0.1", self.ports[0])).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not up after {TIMEOUT:?}:\n{}", self.error_log()));
            }
            thread::sleep(POLL);
        }
    }

    /// SIGKILLs the whole process group and reaps the master.
    fn kill(&mut self) {
        self.stopped = true;
        let group = i32::try_from(self.child.id()).expect("pid fits in i32");
        signal(-group, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.stopped {
            self.kill();
            eprintln!("nginx {} killed; files kept in {}", self.name, self.prefix.display());
        }
    }
}

/// `n` distinct loopback ports that were free a moment ago. (The harness's `free_ports` stops
/// at 1,000, fewer than the backends need.) All are bound at once, so the kernel cannot repeat
/// one; another process may still take one before nginx does, which [`Server::start`] retries.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port"))
        .collect();
    listeners.iter().map(|l| l.local_addr().expect("a bound listener's address").port()).collect()
}

/// The fields of a `/proc/<pid>/stat` line after the command name (which may hold spaces).
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// A fresh prefix with `conf`, `logs` and `temp`, readable by the `nobody` workers.
fn create_prefix(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("dynup-bench-{}-{name}", std::process::id()));
    if path.exists() {
        fs::remove_dir_all(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
    for dir in ["", "conf", "logs", "temp"] {
        let dir = path.join(dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
    }
    path
}

/// The whole `nginx.conf`. Connection limits are far above what 1,000 peers with keep-alive
/// need; the access log is off (it would be the most expensive part of a proxied request), and
/// client and upstream keep-alive connections live through a whole run.
fn config(spec: &Spec, prefix: &Path, body: &str) -> String {
    let settings = settings();
    let dir = prefix.display();
    let mut conf = String::from("# Generated by crates/bench.\n");
    if spec.modules == Modules::LuaAndDynamic {
        for module in [
            settings.lua_modules_dir.join("ndk_http_module.so"),
            settings.lua_modules_dir.join("ngx_http_lua_module.so"),
            module().to_owned(),
        ] {
            assert!(
                module.exists(),
                "{} not found (make module, or DYNUP_* settings)",
                module.display()
            );
            // Writing to a String cannot fail.
            let _ = writeln!(conf, "load_module {};", module.display());
        }
    }
    let _ = writeln!(conf, "worker_processes {};", spec.workers);
    if let Some(cpu) = spec.cpu {
        // nginx's mask has CPU 0 as its rightmost digit.
        let mask: String = (0..=cpu).rev().map(|bit| if bit == cpu { '1' } else { '0' }).collect();
        let _ = writeln!(conf, "worker_cpu_affinity {mask};");
    }
    let _ = write!(
        conf,
        "worker_rlimit_nofile 16384;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log notice;

events {{
    worker_connections 8192;
}}

http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    client_body_temp_path {dir}/temp/client_body;
    proxy_temp_path {dir}/temp/proxy;
    fastcgi_temp_path {dir}/temp/fastcgi;
    uwsgi_temp_path {dir}/temp/uwsgi;
    scgi_temp_path {dir}/temp/scgi;
"
    );
    if let (Modules::LuaAndDynamic, Some(path)) = (spec.modules, &settings.lua_package_path) {
        let _ = writeln!(conf, "    lua_package_path \"{path}\";");
    }
    let _ = write!(conf, "\n{body}}}\n");
    conf
}

/// Starts the master in its own process group (so that it and its workers can be killed
/// together), with its output in `logs/stderr.log`.
fn spawn(prefix: &Path, conf: &Path) -> Child {
    let nginx = &settings().nginx;
    let output_path = prefix.join("logs/stderr.log");
    let output = fs::File::create(&output_path)
        .unwrap_or_else(|e| panic!("create {}: {e}", output_path.display()));
    let mut command = Command::new(nginx);
    command
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .arg(prefix.join("logs/error.log"))
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("clone the nginx output file"))
        .stderr(output)
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and makes one
    // async-signal-safe system call.
    unsafe {
        // If the bench dies (Ctrl-C, the make timeout), nginx shuts down with it. The signal is
        // tied to the forking thread: every instance is started from the main thread, which
        // lives as long as the bench.
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command.spawn().unwrap_or_else(|e| panic!("start {}: {e}", nginx.display()))
}

/// kill(2); a process that is already gone is not an error.
fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "kill({pid}, {signal}): {err}");
    }
}
