//! A real nginx master with its workers, run from a generated config in a private prefix.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{self, Response};
use crate::ports::free_ports;
use crate::process::{all_processes, signal, spawn_from_lasting_thread};
use crate::settings::settings;

/// How long nginx gets to come up, reload or stop: far more than it needs, but tests share 2
/// cores with each other.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Starts attempted when another process takes one of our ports first.
const START_ATTEMPTS: usize = 5;
/// Poll interval while waiting for nginx.
const POLL: Duration = Duration::from_millis(20);
/// Error-log markers that fail every test: nginx's own signs of a bug or a crash.
const BAD_LOG_MARKERS: [&str; 3] = ["[alert]", "[emerg]", "exited on signal"];
/// The title nginx gives a serving worker (an old one is "... is shutting down").
const WORKER_TITLE: &str = "nginx: worker process";

/// A dynamic module to `load_module`, written in the order given to [`Config::modules`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Module {
    /// ndk_http_module.so, which the lua module needs before it.
    Ndk,
    /// ngx_http_lua_module.so.
    Lua,
    /// Ours: ngx_http_lua_dynamic_upstream_module.so.
    Dynamic,
}

impl Module {
    fn path(self) -> PathBuf {
        let settings = settings();
        match self {
            Module::Ndk => settings.lua_modules_dir.join("ndk_http_module.so"),
            Module::Lua => settings.lua_modules_dir.join("ngx_http_lua_module.so"),
            Module::Dynamic => settings.module.clone(),
        }
    }

    /// Panics with what to do if the module file is missing, instead of leaving the reader to
    /// decode nginx's dlopen() error.
    fn assert_exists(self) {
        let path = self.path();
        if path.exists() {
            return;
        }
        match self {
            Module::Dynamic => panic!(
                "our module {} does not exist: build it with `make module`, or set DYNUP_MODULE",
                path.display()
            ),
            Module::Ndk | Module::Lua => panic!(
                "lua module {} does not exist: set DYNUP_LUA_MODULES_DIR to the directory of \
                 ndk_http_module.so and ngx_http_lua_module.so",
                path.display()
            ),
        }
    }
}

/// An nginx configuration under construction.
///
/// The test supplies the `http {}` body; the harness adds everything that must differ per test
/// or must not touch the system's nginx: modules, `daemon off`, pid, logs (the error log at
/// `info`, so that no message of the module is filtered out) and every temp path inside a fresh
/// prefix directory. nginx runs as it would in production: the master as root, the workers as
/// the compiled-in user (`nobody`). In the body (and in main-context text), `%%PORT%%` stands
/// for a free loopback port chosen at start, `%%PORT_1%%`, `%%PORT_2%%`... for more of them, so
/// a start can be retried on other ports. [`Config::start`] waits for `%%PORT%%`, which the body
/// must therefore listen on.
#[derive(Clone, Debug)]
pub struct Config {
    modules: Vec<Module>,
    workers: u32,
    main: String,
    http: String,
}

impl Default for Config {
    /// ndk, lua and our module (in that order), 2 workers, nothing else.
    fn default() -> Config {
        Config {
            modules: vec![Module::Ndk, Module::Lua, Module::Dynamic],
            workers: 2,
            main: String::new(),
            http: String::new(),
        }
    }
}

impl Config {
    /// The usual setup: ndk, lua and our module, 2 workers.
    pub fn new() -> Config {
        Config::default()
    }

    /// No dynamic modules at all: nginx alone, for testing the harness itself.
    pub fn plain() -> Config {
        Config { modules: Vec::new(), ..Config::default() }
    }

    /// The modules to load, in this order.
    pub fn modules(mut self, modules: &[Module]) -> Config {
        self.modules = modules.to_vec();
        self
    }

    /// `worker_processes`.
    pub fn workers(mut self, workers: u32) -> Config {
        self.workers = workers;
        self
    }

    /// Appends main-context text (e.g. `env FOO;`), written before `events {}` and `http {}`.
    pub fn main(mut self, text: &str) -> Config {
        self.main.push_str(text);
        self.main.push('\n');
        self
    }

    /// Appends to the `http {}` body.
    pub fn http(mut self, body: &str) -> Config {
        self.http.push_str(body);
        self.http.push('\n');
        self
    }

    /// Starts nginx and waits until it accepts on `%%PORT%%` with all its workers running.
    /// Panics with the error log if it exits or does not come up in time; retries on fresh ports
    /// when one was taken meanwhile ("Address already in use").
    pub fn start(&self) -> Nginx {
        let text = format!("{}{}", self.main, self.http);
        assert!(
            text.contains("%%PORT%%") || text.contains("%%PORT_0%%"),
            "the http body must listen on 127.0.0.1:%%PORT%%: start() waits for it"
        );
        let port_count = self.port_count();
        self.assert_binaries_exist();
        for attempt in 1..=START_ATTEMPTS {
            let prefix = Prefix::create();
            let ports = free_ports(port_count);
            let mut nginx = self.spawn(prefix, ports);
            match nginx.wait_ready() {
                Ok(()) => return nginx,
                Err(log) if log.contains("Address already in use") && attempt < START_ATTEMPTS => {
                    nginx.discard();
                }
                Err(log) => {
                    // Already killed by wait_ready: nothing left for drop to do.
                    nginx.stopped = true;
                    let prefix = nginx.prefix.path.display();
                    panic!("nginx did not start (files kept in {prefix}):\n{log}");
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Runs `nginx -t` on this configuration: (whether the test passed, what nginx printed).
    pub fn check(&self) -> (bool, String) {
        self.assert_binaries_exist();
        let prefix = Prefix::create();
        let conf = self.write(&prefix, &free_ports(self.port_count()));
        let output = nginx_command()
            .arg("-t")
            .args(prefix.nginx_args(&conf))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {} -t: {e}", settings().nginx.display()));
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        prefix.remove();
        (output.status.success(), text)
    }

    /// Panics with what to do if a binary is missing, before any file is written.
    fn assert_binaries_exist(&self) {
        let nginx = &settings().nginx;
        assert!(nginx.exists(), "nginx {} not found: set DYNUP_NGINX", nginx.display());
        for module in &self.modules {
            module.assert_exists();
        }
    }

    /// How many `%%PORT...%%` placeholders the config needs: one more than the highest index.
    fn port_count(&self) -> usize {
        let text = format!("{}{}", self.main, self.http);
        let highest = text
            .match_indices("%%PORT")
            .filter_map(|(at, _)| {
                let rest = &text[at + "%%PORT".len()..];
                if rest.starts_with("%%") {
                    return Some(0);
                }
                let digits = rest.strip_prefix('_')?;
                let end = digits.find("%%")?;
                digits[..end].parse::<usize>().ok()
            })
            .max();
        highest.map_or(0, |n| n + 1)
    }

    /// Writes nginx.conf into `prefix` and returns its path.
    fn write(&self, prefix: &Prefix, ports: &[u16]) -> PathBuf {
        let dir = prefix.path.display();
        let mut conf = String::from("# Generated by the integration-tests harness.\n");
        for module in &self.modules {
            // Writing to a String cannot fail.
            let _ = writeln!(conf, "load_module {};", module.path().display());
        }
        let _ = write!(
            conf,
            "worker_processes {workers};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log info;
{main}
events {{
    worker_connections 1024;
}}

http {{
    access_log {dir}/logs/access.log;
    client_body_temp_path {dir}/temp/client_body;
    proxy_temp_path {dir}/temp/proxy;
    fastcgi_temp_path {dir}/temp/fastcgi;
    uwsgi_temp_path {dir}/temp/uwsgi;
    scgi_temp_path {dir}/temp/scgi;
",
            workers = self.workers,
            main = self.main,
        );
        if let (true, Some(path)) =
            (self.modules.contains(&Module::Lua), &settings().lua_package_path)
        {
            let _ = writeln!(conf, "    lua_package_path \"{path}\";");
        }
        let _ = write!(conf, "\n{}}}\n", self.http);
        let mut conf = match ports.first() {
            Some(port) => conf.replace("%%PORT%%", &port.to_string()),
            None => conf,
        };
        for (i, port) in ports.iter().enumerate() {
            conf = conf.replace(&format!("%%PORT_{i}%%"), &port.to_string());
        }
        let path = prefix.path.join("conf/nginx.conf");
        fs::write(&path, conf).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Starts the master (in its own process group, so that every process of it can be killed
    /// at once) without waiting for it.
    fn spawn(&self, prefix: Prefix, ports: Vec<u16>) -> Nginx {
        let conf = self.write(&prefix, &ports);
        let child = spawn_master(&prefix, &conf, false);
        Nginx {
            child,
            prefix,
            ports,
            workers: self.workers as usize,
            stopped: false,
            expected_log_lines: Vec::new(),
        }
    }

    /// Runs `nginx -t` on this configuration like [`Config::check`], but gives up after
    /// `timeout`: `None` then, with every process of the test killed (it may be stuck, e.g. on a
    /// lock). The second value of the answer is what nginx printed.
    pub fn check_within(&self, timeout: Duration) -> Option<(bool, String)> {
        self.assert_binaries_exist();
        let prefix = Prefix::create();
        let conf = self.write(&prefix, &free_ports(self.port_count()));
        let output_path = prefix.path.join("logs/check.log");
        let output = File::create(&output_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", output_path.display()));
        let mut command = nginx_command();
        command
            .arg("-t")
            .args(prefix.nginx_args(&conf))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the nginx -t output file"))
            .stderr(output)
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only makes one
        // async-signal-safe system call.
        unsafe {
            // Killed with this thread if the test dies while waiting for it.
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("run {} -t: {e}", settings().nginx.display()));
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("poll nginx -t") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let group = i32::try_from(child.id()).expect("pid fits in i32");
                signal(-group, libc::SIGKILL);
                child.wait().expect("reap nginx -t");
                break None;
            }
            thread::sleep(POLL);
        };
        let text = prefix.read("logs/check.log");
        prefix.remove();
        status.map(|status| (status.success(), text))
    }
}

/// Starts an nginx master on `conf` in `prefix`, in its own process group, without waiting for
/// it. Its output goes to `logs/stderr.log`, appended to if `append`.
fn spawn_master(prefix: &Prefix, conf: &Path, append: bool) -> Child {
    let output_path = prefix.path.join("logs/stderr.log");
    let output = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(&output_path)
        .unwrap_or_else(|e| panic!("create {}: {e}", output_path.display()));
    let mut command = nginx_command();
    command
        .args(prefix.nginx_args(conf))
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("clone the nginx output file"))
        .stderr(output)
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe system call.
    unsafe {
        // If the test process dies without stopping nginx (killed by a timeout), the master
        // gets SIGTERM, shuts its workers down and exits: nothing is left behind.
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    spawn_from_lasting_thread(command)
        .unwrap_or_else(|e| panic!("start {}: {e}", settings().nginx.display()))
}

/// A running nginx. Call [`Nginx::stop`] at the end of each test: it shuts nginx down and fails
/// the test if the error log shows an alert, an emergency or a crashed worker. (Dropping it
/// without `stop` does the same; dropping it while the test panics just kills every process
/// and prints the error log.)
///
/// If the test process dies without stopping it, the master gets SIGTERM and exits with its
/// workers.
pub struct Nginx {
    child: Child,
    prefix: Prefix,
    ports: Vec<u16>,
    workers: usize,
    stopped: bool,
    /// Error-log lines with a bad marker that the test caused on purpose
    /// ([`Nginx::reload_expecting_failure`]): not problems for [`Nginx::stop`].
    expected_log_lines: Vec<String>,
}

impl Nginx {
    /// The port `%%PORT%%` stood for.
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    /// All ports: `%%PORT%%` (= `%%PORT_0%%`), `%%PORT_1%%`, ...
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The prefix directory: config, logs and temp files of this nginx.
    pub fn prefix(&self) -> &Path {
        &self.prefix.path
    }

    /// The master's pid, which is also the process group of all of its processes.
    pub fn master_pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// `GET path` on `%%PORT%%`.
    pub fn get(&self, path: &str) -> Response {
        http::get(self.port(), path)
    }

    /// `GET path` on `%%PORT%%`, which must answer 200: returns the body, or panics with the
    /// response and the error log (where Lua errors are).
    pub fn get_ok(&self, path: &str) -> String {
        let response = self.get(path);
        assert!(
            response.status == 200,
            "GET {path}: status {}, body:\n{}\nerror log:\n{}",
            response.status,
            response.body,
            self.error_log()
        );
        response.body
    }

    /// The whole error log so far.
    pub fn error_log(&self) -> String {
        self.prefix.read("logs/error.log")
    }

    /// Waits until the error log has `needle` at least `count` times (e.g. once per worker) and
    /// returns the log; panics with the log after a while.
    pub fn wait_for_log(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let log = self.error_log();
            if log.matches(needle).count() >= count {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the error log did not show {needle:?} {count} times:\n{log}"
            );
            thread::sleep(POLL);
        }
    }

    /// The pids of the serving workers (not those of an older generation still shutting down).
    pub fn worker_pids(&self) -> Vec<i32> {
        let master = self.master_pid();
        let mut pids: Vec<i32> = all_processes()
            .into_iter()
            .filter(|p| p.ppid == master && !p.zombie && p.cmdline == WORKER_TITLE)
            .map(|p| p.pid)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Reloads the configuration (SIGHUP) and waits until a full new generation of workers
    /// serves and every old worker has exited, so whatever follows sees only the new one.
    pub fn reload(&mut self) {
        if let Err(since) = self.try_reload() {
            panic!("reload failed:\n{since}");
        }
    }

    /// [`Nginx::reload`], or, if the new configuration is refused (an `[emerg]` in the error
    /// log), the log lines added since the signal; the old workers then go on serving, and those
    /// `[emerg]` lines are not problems for [`Nginx::stop`].
    pub fn try_reload(&mut self) -> Result<(), String> {
        let old = self.worker_pids();
        let log_before = self.error_log().len();
        signal(self.master_pid(), libc::SIGHUP);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                panic!("nginx exited ({status}) during reload:\n{}", self.error_log());
            }
            let master = self.master_pid();
            let children: Vec<_> =
                all_processes().into_iter().filter(|p| p.ppid == master && !p.zombie).collect();
            let old_alive = children.iter().any(|p| old.contains(&p.pid));
            let new = children.iter().filter(|p| p.cmdline == WORKER_TITLE).count();
            if !old_alive && new == self.workers {
                return Ok(());
            }
            let log = self.error_log();
            let since = log.get(log_before..).unwrap_or_default();
            if since.contains("[emerg]") {
                self.expected_log_lines.extend(
                    since.lines().filter(|line| line.contains("[emerg]")).map(str::to_owned),
                );
                assert_eq!(
                    self.worker_pids(),
                    old,
                    "a failed reload changed the workers:\n{since}"
                );
                return Err(since.to_owned());
            }
            assert!(Instant::now() < deadline, "reload did not complete in time:\n{log}");
            thread::sleep(POLL);
        }
    }

    /// Sends a reload (SIGHUP) that must fail, e.g. after [`Nginx::rewrite_config`] with an
    /// error (see [`Nginx::try_reload`]); returns the log lines added since the signal.
    pub fn reload_expecting_failure(&mut self) -> String {
        match self.try_reload() {
            Ok(()) => panic!("the reload succeeded:\n{}", self.error_log()),
            Err(since) => since,
        }
    }

    /// Writes `config` as this nginx's configuration file, with the same prefix and ports
    /// (`%%PORT%%`... stand for the same ports as at start), for a [`Nginx::reload`] or
    /// [`Nginx::restart`] to pick up. Panics if `config` needs more ports than nginx was given.
    pub fn rewrite_config(&self, config: &Config) {
        assert!(
            config.port_count() <= self.ports.len(),
            "the new configuration needs {} ports, nginx was started with {}",
            config.port_count(),
            self.ports.len()
        );
        assert_eq!(
            config.workers as usize, self.workers,
            "the new configuration must keep the worker count"
        );
        config.write(&self.prefix, &self.ports);
    }

    /// Stops nginx gracefully (SIGQUIT, as [`Nginx::stop`] does) and starts it again with the
    /// same prefix, configuration file and ports, keeping its logs. Panics with the error log if
    /// the master does not exit cleanly, leaves a process behind, or the new one does not come
    /// up (e.g. another process took one of its ports in between).
    pub fn restart(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!("the master had exited early ({status}):\n{}", self.error_log());
        }
        let old_master = self.master_pid();
        signal(old_master, libc::SIGQUIT);
        match self.wait_exit() {
            Some(status) if status.success() => {}
            Some(status) => panic!("the master exited with {status}:\n{}", self.error_log()),
            None => {
                let _ = self.kill();
                panic!("the master did not exit on SIGQUIT:\n{}", self.error_log());
            }
        }
        // Reaps the master and makes sure none of its workers is left.
        if let Some(left) = self.kill() {
            panic!("processes left behind by the stopped nginx: {left}");
        }
        let conf = self.prefix.path.join("conf/nginx.conf");
        self.child = spawn_master(&self.prefix, &conf, true);
        if let Err(log) = self.wait_ready() {
            self.stopped = true;
            panic!(
                "nginx did not start again (files kept in {}):\n{log}",
                self.prefix.path.display()
            );
        }
    }

    /// Shuts nginx down gracefully (SIGQUIT; SIGKILL if it hangs), makes sure none of its
    /// processes is left, and fails the test if the error log shows an alert, an emergency or a
    /// crashed worker. Returns the final error log.
    pub fn stop(mut self) -> String {
        self.shutdown()
    }

    fn shutdown(&mut self) -> String {
        self.stopped = true;
        let mut problems = Vec::new();
        match self.try_wait() {
            Some(status) => problems.push(format!("the master had exited early ({status})")),
            None => {
                signal(self.master_pid(), libc::SIGQUIT);
                match self.wait_exit() {
                    Some(status) if status.success() => {}
                    Some(status) => problems.push(format!("the master exited with {status}")),
                    None => problems.push("the master did not exit on SIGQUIT".to_owned()),
                }
            }
        }
        if let Some(left) = self.kill() {
            problems.push(format!("processes left behind: {left}"));
        }
        let log = self.error_log();
        problems.extend(
            log.lines()
                .filter(|line| BAD_LOG_MARKERS.iter().any(|m| line.contains(m)))
                .filter(|line| !self.expected_log_lines.iter().any(|l| l == line))
                .map(|line| format!("error log: {line}")),
        );
        if problems.is_empty() {
            self.prefix.remove();
            return log;
        }
        panic!(
            "nginx (files kept in {}):\n{}\n\nfull error log:\n{log}",
            self.prefix.path.display(),
            problems.join("\n")
        );
    }

    /// Waits (bounded) until the master is up with all its workers and accepts on `%%PORT%%`.
    /// On failure, everything is killed and the error is the error log plus nginx's output.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                // The log says what went wrong; a process that would not die is no news then.
                let _ = self.kill();
                return Err(format!("nginx exited ({status}):\n{}", self.logs()));
            }
            if self.worker_pids().len() == self.workers
                && std::net::TcpStream::connect(("127.0.0.1", self.port())).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                // The log says what went wrong; a process that would not die is no news then.
                let _ = self.kill();
                return Err(format!("nginx did not come up in {TIMEOUT:?}:\n{}", self.logs()));
            }
            thread::sleep(POLL);
        }
    }

    /// Gets rid of a failed start attempt: processes are already gone, files are not needed.
    fn discard(mut self) {
        self.stopped = true;
        self.prefix.remove();
    }

    /// The error log and whatever nginx printed (startup errors go there before the log opens).
    fn logs(&self) -> String {
        format!("{}\nnginx output:\n{}", self.error_log(), self.prefix.read("logs/stderr.log"))
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("poll the nginx master")
    }

    /// Waits up to [`TIMEOUT`] for the master to exit.
    fn wait_exit(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            thread::sleep(POLL);
        }
        None
    }

    /// SIGKILLs the whole process group (master and workers, whatever state they are in),
    /// reaps the master and waits until the workers are dead too (a killed process takes a
    /// moment to die). Returns the processes still running after a while, if any.
    fn kill(&mut self) -> Option<String> {
        let group = self.master_pid();
        signal(-group, libc::SIGKILL);
        self.child.wait().expect("reap the nginx master");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left: Vec<String> = all_processes()
                .into_iter()
                .filter(|p| p.pgrp == group && !p.zombie)
                .map(|p| format!("{} ({})", p.pid, p.cmdline))
                .collect();
            if left.is_empty() {
                return None;
            }
            if Instant::now() > deadline {
                return Some(left.join(", "));
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        if thread::panicking() {
            // Never panic here: kill everything and leave the evidence.
            self.stopped = true;
            if let Some(left) = self.kill() {
                eprintln!("nginx processes survived SIGKILL: {left}");
            }
            eprintln!(
                "nginx killed because the test panicked (files kept in {}); error log:\n{}",
                self.prefix.path.display(),
                self.error_log()
            );
        } else {
            self.shutdown();
        }
    }
}

/// A test's own nginx prefix directory: config, logs, pid and temp files. Removed when the
/// test passes, kept for inspection when it fails.
struct Prefix {
    path: PathBuf,
}

impl Prefix {
    /// A fresh, empty prefix, readable by the `nobody` workers.
    fn create() -> Prefix {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name =
            format!("dynup-it-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let path = std::env::temp_dir().join(name);
        if path.exists() {
            // Left by an earlier process with the same pid.
            fs::remove_dir_all(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
        }
        for dir in ["", "conf", "logs", "temp"] {
            let dir = path.join(dir);
            fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
        }
        Prefix { path }
    }

    /// `-p`, `-c` and `-e` for nginx: the last (nginx >= 1.19.5) keeps even the earliest
    /// messages, logged before the config names a log, out of the compiled-in error log.
    fn nginx_args(&self, conf: &Path) -> [std::ffi::OsString; 6] {
        [
            "-p".into(),
            self.path.clone().into(),
            "-c".into(),
            conf.into(),
            "-e".into(),
            self.path.join("logs/error.log").into(),
        ]
    }

    /// A file of the prefix as text; empty if it does not exist (yet).
    fn read(&self, file: &str) -> String {
        fs::read(self.path.join(file))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    fn remove(&self) {
        // A leftover directory in the temp dir is harmless; failing a passed test is not.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A command running the nginx under test, with the memory checker's runtime when one is set
/// (`make asan`): for nginx alone, not the test process.
fn nginx_command() -> Command {
    let mut command = Command::new(&settings().nginx);
    if let Some(preload) = &settings().preload {
        command.env("LD_PRELOAD", preload);
    }
    command
}
