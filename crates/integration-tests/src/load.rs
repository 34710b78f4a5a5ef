//! A bounded load generator: client threads, each with one keep-alive HTTP/1.1 connection to
//! nginx on loopback, sending `GET path` back to back until told to stop, or until a request
//! count or a duration runs out, whichever comes first.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::http::{read_response, Response};

/// How long one read or write of a load client may block: a request that takes longer is a
/// failure (nginx answers these in milliseconds), and it keeps a hung nginx from hanging a test.
const LOAD_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Failures kept in full per client; the rest are only counted.
const KEPT_FAILURES: usize = 20;

/// What a [`Load`] sends and how long it may run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// The nginx port on 127.0.0.1.
    pub port: u16,
    /// The request path, e.g. `/`.
    pub path: String,
    /// Concurrent keep-alive connections, one thread each.
    pub clients: usize,
    /// Requests at most, over all clients.
    pub max_requests: u64,
    /// Time at most, from [`Load::start`].
    pub max_duration: Duration,
}

/// A request that did not end in a 2xx response.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Time since the load started.
    pub at: Duration,
    /// The response status, or `None` when the exchange itself failed (connect, I/O, parsing).
    pub status: Option<u16>,
    /// The response body, or the I/O error.
    pub detail: String,
}

/// What a load did, once stopped.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Requests sent (answered or not).
    pub requests: u64,
    /// Requests answered with a 2xx status.
    pub ok: u64,
    /// Answers with another status.
    pub non_2xx: u64,
    /// Exchanges that failed without a response.
    pub transport_errors: u64,
    /// The first failures of each client, in full (see [`Failure`]).
    pub failures: Vec<Failure>,
    /// 2xx answers by body, e.g. `backend 41234\n` for a [`crate::Backend`].
    pub bodies: BTreeMap<String, u64>,
    /// Connections opened (a client reconnects when nginx closes a keep-alive connection).
    pub connections: u64,
    /// How long the load ran.
    pub elapsed: Duration,
    /// Requests sent again on a new connection because nginx had closed the reused keep-alive
    /// connection before answering any byte (only with [`Load::start_retrying_closed_keepalive`]).
    pub retried: u64,
}

/// Running client threads; [`Load::stop`] ends them and collects their [`LoadReport`].
pub struct Load {
    shared: Arc<Shared>,
    clients: Vec<JoinHandle<LoadReport>>,
    started: Instant,
}

struct Shared {
    /// Resend a request once, on a new connection, when a reused keep-alive connection turns out
    /// closed before any byte of the response.
    retry_closed_keepalive: bool,
    stop: AtomicBool,
    sent: AtomicU64,
    done: AtomicU64,
}

impl Load {
    /// Starts the clients; they run until [`Load::stop`] or until a limit of `spec` is reached.
    pub fn start(spec: &LoadSpec) -> Load {
        Load::start_with(spec, false)
    }

    /// [`Load::start`], with clients that behave as HTTP clients do when a server closes an idle
    /// keep-alive connection just as they reuse it (RFC 9112, section 9.3.1): if a reused
    /// connection ends (closed or reset) before any byte of the response, the request is sent
    /// once more on a new connection, and counted in [`LoadReport::retried`]. nginx closes idle
    /// keep-alive connections whenever a worker exits (reload, stop), so a load across reloads
    /// needs this to tell that race from failed requests. A failure on the new connection, or
    /// after any byte of a response, is a failure as usual.
    pub fn start_retrying_closed_keepalive(spec: &LoadSpec) -> Load {
        Load::start_with(spec, true)
    }

    fn start_with(spec: &LoadSpec, retry_closed_keepalive: bool) -> Load {
        let shared = Arc::new(Shared {
            retry_closed_keepalive,
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            done: AtomicU64::new(0),
        });
        let started = Instant::now();
        let clients = (0..spec.clients)
            .map(|i| {
                let shared = Arc::clone(&shared);
                let spec = spec.clone();
                thread::Builder::new()
                    .name(format!("load-client-{i}"))
                    .spawn(move || client(&spec, &shared, started))
                    .expect("spawn a load client thread")
            })
            .collect();
        Load { shared, clients, started }
    }

    /// Requests done so far (answered with any status, or failed), for progress reports.
    pub fn done(&self) -> u64 {
        self.shared.done.load(Ordering::SeqCst)
    }

    /// Are all clients done (a limit reached)?
    pub fn finished(&self) -> bool {
        self.clients.iter().all(JoinHandle::is_finished)
    }

    /// Stops the clients after their current request and merges what they saw.
    pub fn stop(self) -> LoadReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        let mut report = LoadReport::default();
        for client in self.clients {
            let part = client.join().expect("a load client thread panicked");
            report.requests += part.requests;
            report.ok += part.ok;
            report.non_2xx += part.non_2xx;
            report.transport_errors += part.transport_errors;
            report.failures.extend(part.failures);
            report.connections += part.connections;
            report.retried += part.retried;
            for (body, n) in part.bodies {
                *report.bodies.entry(body).or_default() += n;
            }
        }
        report.failures.sort_by_key(|f| f.at);
        report.elapsed = self.started.elapsed();
        report
    }
}

/// One client: a keep-alive connection, reopened whenever nginx or an error closes it.
fn client(spec: &LoadSpec, shared: &Shared, started: Instant) -> LoadReport {
    let mut report = LoadReport::default();
    let request = format!("GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", spec.path, spec.port);
    let mut connection: Option<BufReader<TcpStream>> = None;
    // Requests sent on the current connection before this one.
    let mut served_on_connection = 0u64;
    let fail = |report: &mut LoadReport, status: Option<u16>, detail: String| {
        if report.failures.len() < KEPT_FAILURES {
            report.failures.push(Failure { at: started.elapsed(), status, detail });
        }
    };
    loop {
        if shared.stop.load(Ordering::SeqCst) || started.elapsed() >= spec.max_duration {
            break;
        }
        if shared.sent.fetch_add(1, Ordering::SeqCst) >= spec.max_requests {
            break;
        }
        report.requests += 1;
        if connection.is_none() {
            match connect(spec.port) {
                Ok(stream) => {
                    report.connections += 1;
                    connection = Some(BufReader::new(stream));
                    served_on_connection = 0;
                }
                Err(e) => {
                    report.transport_errors += 1;
                    fail(&mut report, None, format!("connect: {e}"));
                    // Do not spin on a port that refuses: a short pause, still bounded by time.
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let reader = connection.as_mut().expect("connected just above");
        let reused = served_on_connection > 0;
        let mut exchange = send(reader, &request);
        if shared.retry_closed_keepalive && reused && matches!(exchange, Err(Exchange::Closed(_))) {
            report.retried += 1;
            connection = None;
            served_on_connection = 0;
            exchange = match connect(spec.port) {
                Ok(stream) => {
                    report.connections += 1;
                    let reader = connection.insert(BufReader::new(stream));
                    send(reader, &request)
                }
                Err(e) => Err(Exchange::Failed(format!("connect: {e}"))),
            };
        }
        let exchange = exchange.map_err(|e| match e {
            Exchange::Closed(e) | Exchange::Failed(e) => e,
        });
        served_on_connection += 1;
        shared.done.fetch_add(1, Ordering::SeqCst);
        match exchange {
            Ok(response) => {
                let close =
                    response.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
                if (200..300).contains(&response.status) {
                    report.ok += 1;
                    *report.bodies.entry(response.body).or_default() += 1;
                } else {
                    report.non_2xx += 1;
                    let detail = format!("{:?}\n{}", response.headers, response.body);
                    fail(&mut report, Some(response.status), detail);
                }
                if close {
                    connection = None;
                }
            }
            Err(e) => {
                report.transport_errors += 1;
                fail(&mut report, None, format!("exchange: {e}"));
                connection = None;
            }
        }
    }
    report
}

/// Why an exchange failed: the connection ended before any byte of the response, or otherwise.
enum Exchange {
    Closed(String),
    Failed(String),
}

/// Sends `request` and reads the response.
fn send(reader: &mut BufReader<TcpStream>, request: &str) -> Result<Response, Exchange> {
    let closed = |e: &std::io::Error| {
        matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
        )
    };
    if let Err(e) = reader.get_mut().write_all(request.as_bytes()) {
        let text = format!("send: {e}");
        return Err(if closed(&e) { Exchange::Closed(text) } else { Exchange::Failed(text) });
    }
    match reader.fill_buf() {
        Ok([]) => return Err(Exchange::Closed("connection closed before the status line".into())),
        Ok(_) => {}
        Err(e) if closed(&e) => return Err(Exchange::Closed(e.to_string())),
        Err(e) => return Err(Exchange::Failed(e.to_string())),
    }
    read_response(reader).map_err(|e| Exchange::Failed(e.to_string()))
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(LOAD_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(LOAD_IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
