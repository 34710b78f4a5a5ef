//! Propagation: after a change made through one worker, does the other worker's very next
//! request see it? Two workers, one keep-alive connection to each (nginx keeps a connection on
//! the worker that accepted it, and every answer names its worker): a change on one
//! connection, then at once a look at the zone on the other, many times, alternating which
//! worker changes.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use integration_tests::read_response;
use serde::Serialize;

use crate::server::{Modules, Server, Spec};
use crate::Budget;

/// Changes made (and looks taken).
pub const ITERATIONS: usize = 10_000;
/// Connections opened at most while looking for one per worker.
const CONNECT_ATTEMPTS: usize = 200;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize)]
pub struct Propagation {
    pub iterations: usize,
    /// Looks that still saw the state before the change.
    pub stale: usize,
    /// Looks that saw neither the old nor the new state (0 unless something is broken).
    pub other: usize,
    /// The cycle of changes made to one extra peer.
    pub changes: &'static str,
}

/// The state the other worker must see after change `k`: the extra peer's weight and down
/// flag, or `absent` (see `/change` below).
fn expected(k: usize) -> &'static str {
    ["1 false", "1 true", "2 false", "absent"][k % 4]
}

/// A keep-alive connection to one worker.
struct Connection {
    reader: BufReader<TcpStream>,
    worker: i32,
}

impl Connection {
    fn open(port: u16) -> Connection {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("set a read timeout");
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        let mut connection = Connection { reader: BufReader::new(stream), worker: 0 };
        connection.worker = connection.get("/state").0;
        connection
    }

    /// `GET path` on this connection: (worker pid, body).
    fn get(&mut self, path: &str) -> (i32, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
        self.reader.get_mut().write_all(request.as_bytes()).expect("send a request");
        let response = read_response(&mut self.reader).expect("read a response");
        assert_eq!(response.status, 200, "GET {path}: {}", response.body);
        let worker = response
            .header("x-worker-pid")
            .and_then(|pid| pid.parse().ok())
            .expect("an X-Worker-Pid header");
        (worker, response.body.trim_end().to_owned())
    }
}

pub fn run(budget: &Budget) -> Propagation {
    budget.check("propagation");
    let spec = Spec {
        name: "propagation",
        modules: Modules::LuaAndDynamic,
        workers: 2,
        cpu: None,
        ports: 1,
        files: Vec::new(),
    };
    let server =
        Server::start(&spec, |ports| LUA_PROPAGATION.replace("@PORT@", &ports[0].to_string()));
    let workers = server.worker_pids();
    let mut connections: Vec<Connection> = Vec::new();
    for _ in 0..CONNECT_ATTEMPTS {
        let connection = Connection::open(server.port(0));
        if !connections.iter().any(|c| c.worker == connection.worker) {
            connections.push(connection);
        }
        if connections.len() == workers.len() {
            break;
        }
    }
    assert_eq!(connections.len(), 2, "no keep-alive connection to each of the workers {workers:?}");
    let (mut stale, mut other) = (0, 0);
    for k in 0..ITERATIONS {
        let (changer, looker) = if k % 2 == 0 { (0, 1) } else { (1, 0) };
        let (worker, answer) = connections[changer].get(&format!("/change?k={k}"));
        assert_eq!((worker, answer.as_str()), (connections[changer].worker, "ok"), "change {k}");
        let (worker, seen) = connections[looker].get("/state");
        assert_eq!(worker, connections[looker].worker, "the look after change {k}");
        if seen == expected(k + 3) {
            stale += 1;
        } else if seen != expected(k) {
            other += 1;
        }
    }
    server.stop();
    println!("{}  propagation done: {stale} stale of {ITERATIONS}", budget.elapsed());
    Propagation {
        iterations: ITERATIONS,
        stale,
        other,
        changes: "add_peer, set_peer_down, update_peer {weight = 2, down = false}, remove_peer \
                  of one extra peer, in turn",
    }
}

const LUA_PROPAGATION: &str = r#"    upstream prop {
        zone prop 1m;
        server 127.2.0.1:80;
        server 127.2.0.2:80;
        server 127.2.0.3:80;
    }

    server {
        listen 127.0.0.1:@PORT@ reuseport;
        default_type text/plain;
        header_filter_by_lua_block {
            ngx.header["X-Worker-Pid"] = ngx.worker.pid()
        }

        # Change k of the cycle add, down, up with weight 2, remove.
        location = /change {
            content_by_lua_block {
                local dynamic = require "ngx.dynamic"
                local extra = "127.3.0.1:80"
                local step = tonumber(ngx.var.arg_k) % 4
                local ok, err
                if step == 0 then
                    ok, err = dynamic.add_peer("prop", extra)
                elseif step == 1 then
                    ok, err = dynamic.set_peer_down("prop", extra)
                elseif step == 2 then
                    ok, err = dynamic.update_peer("prop", extra, { weight = 2, down = false })
                else
                    ok, err = dynamic.remove_peer("prop", extra)
                end
                ngx.say(ok and "ok" or err)
            }
        }

        # The extra peer as this worker sees it: "<weight> <down>" or "absent".
        location = /state {
            content_by_lua_block {
                local dynamic = require "ngx.dynamic"
                local peers = assert(dynamic.describe_zone("prop"))
                for _, peer in ipairs(peers) do
                    if peer.name == "127.3.0.1:80" then
                        return ngx.say(peer.weight, " ", tostring(peer.down == true))
                    end
                end
                ngx.say("absent")
            }
        }
    }
"#;
