//! Driving `ngx.dynamic` from a test: an `/eval` location that runs Lua posted to it, and the
//! small vocabulary the write-API tests share to print results and compare zone states.
//!
//! Each test keeps one nginx and sends it many snippets, one request each: the test sees every
//! call's outcome, nginx's state between calls, and which worker ran each snippet (the
//! `X-Worker-Pid` response header).

use std::io::{BufReader, Write};
use std::net::TcpStream;

use crate::http::{read_response, Response, IO_TIMEOUT};
use crate::lua::LUA_SHOW;
use crate::nginx::Nginx;

/// Lua defined before every snippet [`Nginx::eval`] runs, after [`LUA_SHOW`]:
///
/// - `dynamic`: `require "ngx.dynamic"`;
/// - `outcome(f, ...)`: calls `f(...)` under `pcall` and returns one line: `raised: <error>`
///   for a Lua error, `nil, <type of err> <err>` for the API's `nil, err`, `table` for a table,
///   else `<type> <value>` (e.g. `boolean true`);
/// - `say(f, ...)`: `ngx.say(outcome(f, ...))`;
/// - `state(target, ...)`: prints, for each target, `show()` of its `describe_zone` and
///   `zone_usage` under `<target> peers` and `<target> usage` headings: compare two `state()`
///   outputs to tell whether anything changed.
pub const EVAL_PRELUDE: &str = r#"
local dynamic = require "ngx.dynamic"

local function outcome(f, ...)
    local ok, v, err = pcall(f, ...)
    if not ok then
        return "raised: " .. tostring(v)
    end
    if v == nil then
        return "nil, " .. type(err) .. " " .. tostring(err)
    end
    if type(v) == "table" then
        return "table"
    end
    return type(v) .. " " .. tostring(v)
end

local function say(f, ...)
    ngx.say(outcome(f, ...))
end

local function state(...)
    for _, target in ipairs({ ... }) do
        ngx.say(target, " peers")
        show_result(dynamic.describe_zone(target))
        ngx.say(target, " usage")
        show_result(dynamic.zone_usage(target))
    end
end
"#;

/// The chunk name of posted snippets: errors they raise start with `eval:<line>: `.
pub const EVAL_CHUNK: &str = "eval";

/// A `server` on `%%PORT%%` whose `location = /eval` runs the Lua code posted to it, with the
/// functions of [`LUA_SHOW`] and [`EVAL_PRELUDE`] in its environment, and answers with what it
/// prints, plus the serving worker's pid in `X-Worker-Pid`. A snippet that fails to compile or
/// raises answers 500 with the error.
pub fn eval_server() -> String {
    format!(
        "server {{
    listen 127.0.0.1:%%PORT%%;
    location = /eval {{
        default_type text/plain;
        client_max_body_size 16m;
        client_body_buffer_size 16m;
        content_by_lua_block {{
{LUA_SHOW}
{EVAL_PRELUDE}
            ngx.header[\"X-Worker-Pid\"] = tostring(ngx.worker.pid())
            ngx.req.read_body()
            local code = ngx.req.get_body_data() or \"\"
            local chunk, err = loadstring(code, \"={EVAL_CHUNK}\")
            if not chunk then
                ngx.status = 500
                ngx.say(\"compile error: \", err)
                return
            end
            setfenv(chunk, setmetatable({{
                show = show, show_result = show_result, dynamic = dynamic,
                outcome = outcome, say = say, state = state,
            }}, {{ __index = _G }}))
            local ok, err = pcall(chunk)
            if not ok then
                ngx.status = 500
                ngx.say(\"runtime error: \", tostring(err))
            end
        }}
    }}
}}
"
    )
}

/// `POST path` with `body` to 127.0.0.1:`port`, `Connection: close` (so each request is a new
/// connection, which either worker may accept). Panics if the exchange fails.
pub fn post(port: u16, path: &str, body: &str) -> Response {
    let context = || format!("POST http://127.0.0.1:{port}{path}");
    let stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("{}: connect: {e}", context()));
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("set read timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("set write timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    (&stream)
        .write_all(head.as_bytes())
        .and_then(|()| (&stream).write_all(body.as_bytes()))
        .unwrap_or_else(|e| panic!("{}: send request: {e}", context()));
    read_response(&mut BufReader::new(stream))
        .unwrap_or_else(|e| panic!("{}: read response: {e}", context()))
}

/// A response of `/eval`: what the snippet printed, and which worker ran it.
#[derive(Debug)]
pub struct Evaluated {
    pub body: String,
    pub worker: i32,
}

impl Nginx {
    /// Runs `lua` in `/eval` (see [`eval_server`]) on `%%PORT%%` and returns what it printed;
    /// panics with the response and the error log unless it answered 200.
    pub fn eval(&self, lua: &str) -> String {
        self.eval_on_worker(lua).body
    }

    /// [`Nginx::eval`], also saying which worker ran the snippet.
    pub fn eval_on_worker(&self, lua: &str) -> Evaluated {
        let response = post(self.port(), "/eval", lua);
        assert!(
            response.status == 200,
            "POST /eval: status {}, body:\n{}\nsnippet:\n{lua}\nerror log:\n{}",
            response.status,
            response.body,
            self.error_log()
        );
        let worker = response
            .header("x-worker-pid")
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no X-Worker-Pid in {response:?}"));
        Evaluated { body: response.body, worker }
    }
}

/// A peer as `show(describe_zone(...))` prints it, for building expected output: field name to
/// `<type> <value>`. [`ExpectedPeer::new`] is a peer with nginx's defaults before any traffic,
/// as `server <addr>;` configures it or `add_peer(target, addr)` adds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedPeer {
    fields: std::collections::BTreeMap<&'static str, String>,
}

impl ExpectedPeer {
    /// A peer whose `name` and `server` are both `addr`, with default settings.
    pub fn new(addr: &str) -> ExpectedPeer {
        ExpectedPeer::named(addr, addr)
    }

    /// A peer named `name` (nginx's text of its address) configured as `server`.
    pub fn named(name: &str, server: &str) -> ExpectedPeer {
        let number = |n: u32| format!("number {n}");
        let fields = [
            ("name", format!("string {name}")),
            ("server", format!("string {server}")),
            ("weight", number(1)),
            ("current_weight", number(0)),
            ("effective_weight", number(1)),
            ("max_fails", number(1)),
            ("fail_timeout", number(10)),
            ("fails", number(0)),
            ("max_conns", number(0)),
            ("conns", number(0)),
            ("accessed", number(0)),
            ("checked", number(0)),
        ];
        ExpectedPeer { fields: fields.into_iter().collect() }
    }

    /// Sets a numeric field; `weight` sets `effective_weight` too, as a new weight does.
    pub fn set(mut self, field: &'static str, value: u32) -> ExpectedPeer {
        self.fields.insert(field, format!("number {value}"));
        if field == "weight" {
            self.fields.insert("effective_weight", format!("number {value}"));
        }
        self
    }

    /// Sets or clears `down` (present and true only when down).
    pub fn down(mut self, down: bool) -> ExpectedPeer {
        if down {
            self.fields.insert("down", "boolean true".into());
        } else {
            self.fields.remove("down");
        }
        self
    }

    /// Marks it a backup peer.
    pub fn backup(mut self) -> ExpectedPeer {
        self.fields.insert("backup", "boolean true".into());
        self
    }

    /// What `show(peers)` prints for these peers, in this order.
    pub fn show(peers: &[ExpectedPeer]) -> String {
        let mut text = String::new();
        for (i, peer) in peers.iter().enumerate() {
            for (key, value) in &peer.fields {
                text.push_str(&format!("{}.{key}: {value}\n", i + 1));
            }
        }
        if peers.is_empty() {
            text.push_str("{}\n");
        }
        text
    }
}

/// `show()` output as a map from key path (e.g. `2.fails`) to `<type> <value>`.
pub fn parse_show(body: &str) -> std::collections::BTreeMap<String, String> {
    body.lines()
        .map(|line| {
            let (path, value) =
                line.split_once(": ").unwrap_or_else(|| panic!("bad line {line:?} in:\n{body}"));
            (path.to_owned(), value.to_owned())
        })
        .collect()
}
