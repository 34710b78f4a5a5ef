//! Real HTTP/1.1 upstream servers for nginx to proxy to.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::http::{header, read_body, read_head, IO_TIMEOUT};

/// A keep-alive HTTP/1.1 server on 127.0.0.1 (or another loopback address, [`Backend::start_on`])
/// answering every request with 200 and the body `backend <port>\n`, so a test sees which peer
/// nginx chose. One thread per connection: it serves tens of concurrent proxied keep-alive
/// connections. Stopped (listener and every connection closed) on drop.
pub struct Backend {
    ip: Ipv4Addr,
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    requests: AtomicU64,
    next_connection: AtomicU64,
    /// Open connections, so drop can shut them down; each thread removes its own when done.
    connections: Mutex<HashMap<u64, TcpStream>>,
}

impl Backend {
    /// Starts a backend on 127.0.0.1, on a port of the kernel's choosing.
    pub fn start() -> Backend {
        Backend::start_on(Ipv4Addr::LOCALHOST)
    }

    /// Starts a backend on the loopback address `ip` (any of 127.0.0.0/8, so that many peers
    /// with distinct addresses can all be healthy), on a port of the kernel's choosing.
    pub fn start_on(ip: Ipv4Addr) -> Backend {
        Backend::start_at(ip, 0).unwrap_or_else(|e| panic!("bind a backend on {ip}:0: {e}"))
    }

    /// Starts backends on each of `ips`, all on one port, in the order of `ips`: the peers
    /// nginx's `server name:port resolve` makes differ in their address only.
    pub fn start_sharing_port(ips: &[Ipv4Addr]) -> Vec<Backend> {
        for _ in 0..100 {
            let first = Backend::start_on(ips[0]);
            let port = first.port();
            let mut backends = vec![first];
            for &ip in &ips[1..] {
                match Backend::start_at(ip, port) {
                    Ok(backend) => backends.push(backend),
                    // Taken on that address by someone else: try another port for all of them.
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => break,
                    Err(e) => panic!("bind a backend on {ip}:{port}: {e}"),
                }
            }
            if backends.len() == ips.len() {
                return backends;
            }
        }
        panic!("found no port free on all of {ips:?}");
    }

    /// Starts a backend on the loopback address `ip` and `port` (0: of the kernel's choosing),
    /// or gives the error of binding it (e.g. `AddrInUse`).
    fn start_at(ip: Ipv4Addr, port: u16) -> std::io::Result<Backend> {
        assert!(ip.is_loopback(), "backends listen on loopback only, not {ip}");
        let listener = TcpListener::bind((ip, port))?;
        let port = listener.local_addr().expect("backend listener address").port();
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("backend-{port}"))
                .spawn(move || accept_loop(&listener, port, &shared))
                .expect("spawn a backend accept thread")
        };
        Ok(Backend { ip, port, shared, acceptor: Some(acceptor) })
    }

    /// Starts `n` backends.
    pub fn start_many(n: usize) -> Vec<Backend> {
        (0..n).map(|_| Backend::start()).collect()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address it listens on (127.0.0.1 unless started with [`Backend::start_on`]).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `<ip>:<port>` (`127.0.0.1:<port>` by default), as written in an nginx `server` line.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The body this backend answers with.
    pub fn body(&self) -> String {
        format!("backend {}\n", self.port)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); it sees `stopping` and returns.
        let _ = TcpStream::connect((self.ip, self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let lock = || self.shared.connections.lock().unwrap_or_else(PoisonError::into_inner);
        for stream in lock().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Connection threads notice the shutdown at once; wait (bounded) until they are gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lock().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn accept_loop(listener: &TcpListener, port: u16, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        // Accept errors (e.g. the client already reset) concern that client only.
        let Ok(stream) = stream else { continue };
        let Ok(registered) = stream.try_clone() else { continue };
        let id = shared.next_connection.fetch_add(1, Ordering::SeqCst);
        shared.connections.lock().unwrap_or_else(PoisonError::into_inner).insert(id, registered);
        let shared = Arc::clone(shared);
        let spawned =
            thread::Builder::new().name(format!("backend-{port}-{id}")).spawn(move || {
                // An I/O error ends this connection only, as for any real server.
                let _ = serve(stream, port, &shared);
                shared.connections.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
            });
        spawned.expect("spawn a backend connection thread");
    }
}

/// Answers requests on one connection until the client closes it or asks to.
fn serve(stream: TcpStream, port: u16, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream);
    let body = format!("backend {port}\n");
    while let Some((request_line, headers)) = read_head(&mut reader)? {
        read_body(&mut reader, &headers, false)?;
        // Counted before answering, so a client that has its response sees the count.
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let http10 = request_line.ends_with("HTTP/1.0");
        let close = match header(&headers, "connection") {
            Some(c) if c.eq_ignore_ascii_case("close") => true,
            Some(c) if c.eq_ignore_ascii_case("keep-alive") => false,
            _ => http10,
        };
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" },
        )?;
        writer.flush()?;
        if close {
            break;
        }
    }
    Ok(())
}
