//! What `/proc` and signals tell about an nginx master's processes (Linux only, as is nginx's
//! use here).

use std::fs;
use std::io;
use std::process::{Child, Command};
use std::sync::{mpsc, Mutex, OnceLock, PoisonError};
use std::thread;

/// A process seen in `/proc`.
pub(crate) struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    /// Exited but not yet reaped. Orphans killed with their master are reparented to a PID 1
    /// that may never reap them: such zombies run no code and hold no port, so they are ignored.
    pub zombie: bool,
    /// The title nginx gives it, e.g. `nginx: worker process`.
    pub cmdline: String,
}

/// Every process currently visible in `/proc` (those that vanish while reading are skipped).
pub(crate) fn all_processes() -> Vec<ProcInfo> {
    let entries = fs::read_dir("/proc").expect("read /proc");
    entries
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name in parentheses may contain spaces: the fields follow the last ')'.
            let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
            let zombie = fields.next()? == "Z";
            let ppid = fields.next()?.parse().ok()?;
            let pgrp = fields.next()?.parse().ok()?;
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).trim_end_matches('\0').replace('\0', " ");
            Some(ProcInfo { pid, ppid, pgrp, zombie, cmdline })
        })
        .collect()
}

/// Sends `signal` to `pid` (a negative `pid` addresses a process group). A process that is
/// already gone is not an error: stopping races with nginx's own exits.
pub(crate) fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "kill({pid}, {signal}): {err}");
    }
}

/// Spawns `command` from one thread that lives as long as the test process.
///
/// nginx gets `PR_SET_PDEATHSIG` so that it shuts down if the test process dies without
/// stopping it (e.g. killed on a timeout). That signal fires when the *thread* that forked it
/// ends, so forking from the test's own thread would stop nginx whenever a test starts it in a
/// helper thread; forking from this thread ties it to the process instead.
pub(crate) fn spawn_from_lasting_thread(command: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("nginx-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    // The requester waits for the reply, so it is still there to receive it.
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("spawn the nginx spawner thread");
        Mutex::new(tx)
    });
    let (reply, result) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((command, reply))
        .expect("the spawner thread runs as long as the process");
    result.recv().expect("the spawner thread answers every request")
}
