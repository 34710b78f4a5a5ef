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

/// A Lua string literal holding `text` exactly (a long bracket string whose level is chosen so
/// that `text` cannot close it; a leading newline is doubled because Lua drops the first one).
pub fn lua_string(text: &str) -> String {
    let mut level = 0;
    while text.contains(&format!("]{}]", "=".repeat(level))) {
        level += 1;
    }
    let eq = "=".repeat(level);
    let newline = if text.starts_with('\n') { "\n" } else { "" };
    format!("[{eq}[{newline}{text}]{eq}]")
}
