//! A small HTTP/1.1 client over a plain `TcpStream`, plus the message parsing it shares with
//! [`crate::Backend`]. Just enough of HTTP for tests: no TLS, no pipelining.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long one read or write may block: generous, since a 10,000-peer describe on 2 busy
/// cores is slow, yet bounded so a hung nginx fails the test instead of hanging it.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Header fields as (name, value), in the order received.
pub type Headers = Vec<(String, String)>;

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Headers,
    /// The decoded (de-chunked) body.
    pub body: String,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// `GET path` from 127.0.0.1:`port` with `Connection: close`. Panics with the reason if the
/// exchange fails: a test cannot go on without the response.
pub fn get(port: u16, path: &str) -> Response {
    let context = || format!("GET http://127.0.0.1:{port}{path}");
    let stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("{}: connect: {e}", context()));
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("set read timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("set write timeout");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    (&stream)
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("{}: send request: {e}", context()));
    read_response(&mut BufReader::new(stream))
        .unwrap_or_else(|e| panic!("{}: read response: {e}", context()))
}

/// Reads one response from `reader`: the body by `Content-Length`, chunked, or up to the end of
/// the connection. Leaves the connection at the next response, so it serves keep-alive too.
pub fn read_response(reader: &mut impl BufRead) -> io::Result<Response> {
    let (status_line, headers) =
        read_head(reader)?.ok_or_else(|| invalid("connection closed before the status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let body = if matches!(status, 100..=199 | 204 | 304) {
        Vec::new()
    } else {
        read_body(reader, &headers, true)?
    };
    let body = String::from_utf8(body).map_err(|e| invalid(format!("body is not UTF-8: {e}")))?;
    Ok(Response { status, headers, body })
}

/// Reads a start line and headers; `None` if the connection ends cleanly before any of it
/// (a keep-alive peer closing between messages).
pub(crate) fn read_head(reader: &mut impl BufRead) -> io::Result<Option<(String, Headers)>> {
    let start = read_line(reader)?;
    if start.is_empty() {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) =
            line.split_once(':').ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Ok(Some((start.trim_end_matches(['\r', '\n']).to_owned(), headers)))
}

/// Reads a message body framed as `headers` say. Without framing the body runs to the end of
/// the connection if `until_eof` (responses), else it is empty (requests).
pub(crate) fn read_body(
    reader: &mut impl BufRead,
    headers: &[(String, String)],
    until_eof: bool,
) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if header(headers, "transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        loop {
            let line = read_line(reader)?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !read_line(reader)?.trim_end_matches(['\r', '\n']).is_empty() {}
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            if !read_line(reader)?.trim_end_matches(['\r', '\n']).is_empty() {
                return Err(invalid("chunk data not followed by CRLF"));
            }
        }
    } else if let Some(length) = header(headers, "content-length") {
        let length =
            length.parse().map_err(|_| invalid(format!("bad Content-Length {length:?}")))?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else if until_eof {
        reader.read_to_end(&mut body)?;
    }
    Ok(body)
}

/// The first header named `name` (case-insensitive) in `headers`.
pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// One line including its line end; empty only at the end of the stream. An end of stream in
/// the middle of a line is an error: the peer cut the message short.
fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.is_empty() && !line.ends_with('\n') {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-line"));
    }
    Ok(line)
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}
