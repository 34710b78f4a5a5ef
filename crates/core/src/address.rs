//! The `server` argument of `add_peer`, `remove_peer`, `set_peer_down` and `update_peer`.
//!
//! A Lua caller names a peer the way nginx's `server` directive does, and this module turns that
//! string into something the nginx glue can connect to ([`Endpoint`]) plus the peer's identity
//! ([`ServerAddress::name`]).
//!
//! # Accepted forms
//!
//! | form | example | canonical name |
//! |---|---|---|
//! | `IPv4:port` | `127.0.0.1:8080` | `127.0.0.1:8080` |
//! | `[IPv6]:port` | `[2001:DB8:0::1]:80` | `[2001:db8::1]:80` |
//! | `unix:/absolute/path` | `unix:/run/app.sock` | `unix:/run/app.sock` |
//!
//! The port is **required** (1..=65535), although nginx's `server` directive defaults it to 80:
//! a peer is identified by its name, and `127.0.0.1` silently meaning `127.0.0.1:80` would make
//! `remove_peer(u, "127.0.0.1")` look like it names something it does not. Leading zeros in the
//! port are accepted, as nginx accepts them (`127.0.0.1:080` is `127.0.0.1:80`).
//!
//! IP literals are parsed strictly, in the standard text forms of [`std::net`]. That refuses a
//! few spellings nginx's own parser lets through: IPv4 octets with leading zeros (nginx reads
//! `010` as decimal 10, `inet_aton` and most tools as octal 8, so the caller's intent is
//! ambiguous), empty IPv4 octets (`1..2.3`) and a lone leading or trailing colon in IPv6
//! (`[:1::2]`, `[1::2:]`). IPv6 zone ids (`[fe80::1%eth0]`) are refused, as nginx refuses them.
//! Every address nginx can be configured with still has an accepted spelling: its canonical name.
//!
//! A host name is refused with its own error: resolving it here would block the worker.
//! The `unix:` prefix is matched without regard to case, as nginx does; the path must be absolute
//! (a relative one would depend on the worker's working directory) and fit in `sun_path` with its
//! terminating NUL, the same limit nginx's `ngx_parse_unix_domain_url` enforces.
//! Whitespace and control characters (NUL included) are refused everywhere: a stray space from
//! the caller would otherwise become part of a socket path, and a NUL would truncate it in C.
//! (The price: a unix socket configured with a space in its quoted path cannot be managed.)
//!
//! # Peer identity
//!
//! nginx sets each configured peer's `name` by printing its socket address with
//! `ngx_sock_ntop(..., port = 1)`. [`ServerAddress::name`] is exactly that text for the parsed
//! address ([`canonical_name`] implements nginx's rules, including its IPv6 quirks), so peers
//! are matched by name, never by the caller's spelling: `[::0:1]:80` and `[0::1]:80` both name
//! the configured peer `[::1]:80`. `[::ffff:127.0.0.1]:80` and `127.0.0.1:80` stay different
//! peers, as they are different sockets to nginx.
//!
//! One exception: for a configured `unix:` server nginx keeps the text as written, so
//! `server UNIX:/run/a.sock;` yields the name `UNIX:/run/a.sock`, while the canonical name here
//! is always `unix:/run/a.sock`. The glue should therefore compare against the canonical text of
//! each configured peer's sockaddr (`ngx_sock_ntop(peer->sockaddr, peer->socklen, ..., 1)`),
//! which equals `peer->name` in every other case.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// The longest `server` string looked at; longer ones are refused before any parsing.
///
/// The longest valid address is a `unix:` path of [`MAX_UNIX_PATH_LEN`] bytes (112 in all), so
/// this leaves room for leading zeros in a port while keeping the work done on a hostile
/// multi-megabyte Lua string trivial.
pub const MAX_SERVER_LEN: usize = 256;

/// The longest unix domain socket path: Linux's `sun_path` is 108 bytes and nginx keeps one for
/// the terminating NUL.
pub const MAX_UNIX_PATH_LEN: usize = 107;

/// How many bytes of a refused input an error message repeats, so that a huge string cannot turn
/// into a huge error (and log line).
const ECHO_LIMIT: usize = 128;

/// A validated `server` string: where to connect, and the peer's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    server: String,
    name: String,
    endpoint: Endpoint,
}

/// Where a peer's socket is: what the nginx glue turns into a `sockaddr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An IPv4 or IPv6 socket address with a non-zero port (for IPv6, flow info and scope id 0).
    Ip(SocketAddr),
    /// An absolute unix domain socket path of at most [`MAX_UNIX_PATH_LEN`] bytes, without NUL
    /// bytes, so it can be copied into `sun_path` as is.
    Unix(String),
}

impl ServerAddress {
    /// Parses a `server` string as a Lua caller passes it (bytes, not necessarily UTF-8).
    pub fn parse(input: &[u8]) -> Result<ServerAddress, AddressError> {
        let invalid =
            |reason| Err(AddressError { input: echo(input), problem: Problem::Invalid(reason) });

        if input.is_empty() {
            return invalid("empty");
        }
        if input.len() > MAX_SERVER_LEN {
            return invalid("too long");
        }
        if input.iter().any(|&b| b <= b' ' || b == 0x7f) {
            return invalid("contains whitespace or a control character");
        }
        let Ok(text) = std::str::from_utf8(input) else {
            return invalid("not valid UTF-8");
        };

        let parsed = if input.len() >= 5 && input[..5].eq_ignore_ascii_case(b"unix:") {
            parse_unix(&text[5..])
        } else if let Some(bracketed) = text.strip_prefix('[') {
            parse_bracketed(bracketed)
        } else {
            parse_unbracketed(text)
        };

        match parsed {
            Ok(endpoint) => {
                let name = match &endpoint {
                    Endpoint::Ip(addr) => canonical_name(addr),
                    Endpoint::Unix(path) => format!("unix:{path}"),
                };
                Ok(ServerAddress { server: text.to_owned(), name, endpoint })
            }
            Err(problem) => Err(AddressError { input: echo(input), problem }),
        }
    }

    /// The string as the caller wrote it: what `describe_zone` reports as `server`, the way nginx
    /// keeps a configured peer's `server` as written in the configuration.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The peer's identity: the text `ngx_sock_ntop` prints for this address with its port, which
    /// is what nginx stores as a configured peer's `name` (see the module documentation).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where to connect.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// The text nginx's `ngx_sock_ntop(sa, socklen, text, len, 1)` writes for an IP socket address:
/// `a.b.c.d:port` or `[ipv6]:port`. IPv6 flow info and scope id are not printed, as in nginx.
///
/// nginx's IPv6 text is RFC 5952's (lowercase hex without leading zeros, the longest run of two
/// or more zero groups, the first of equally long ones, written `::`) except that an address
/// starting with five zero groups and `ffff`, six zero groups, or seven zero groups followed by a
/// group whose high byte is non-zero and low byte is not 1, ends in dotted IPv4 form:
/// `::ffff:1.2.3.4`, `::1.2.3.4`, `::0.0.1.2`. Rust's own `Display` differs for the last two
/// (`::102:304`, `::102`), which is why this exists.
pub fn canonical_name(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("[{}]:{}", ipv6_text(v6.ip()), v6.port()),
    }
}

/// nginx's `ngx_inet6_ntop` text of an IPv6 address (rules in [`canonical_name`]).
fn ipv6_text(ip: &Ipv6Addr) -> String {
    let groups = ip.segments();
    let octets = ip.octets();

    // The longest run of at least two zero groups; on a tie the first one wins.
    let (mut run_start, mut run_len) = (0, 0);
    let mut i = 0;
    while i < groups.len() {
        let len = groups[i..].iter().take_while(|&&g| g == 0).count();
        if len >= 2 && len > run_len {
            (run_start, run_len) = (i, len);
        }
        i += len.max(1);
    }

    let dotted_tail = run_start == 0
        && match run_len {
            5 => groups[5] == 0xffff,
            6 => true,
            7 => octets[14] != 0 && octets[15] != 1,
            _ => false,
        };
    if dotted_tail {
        let prefix = if run_len == 5 { "::ffff:" } else { "::" };
        let [.., a, b, c, d] = octets;
        return format!("{prefix}{a}.{b}.{c}.{d}");
    }

    let hex = |gs: &[u16]| gs.iter().map(|g| format!("{g:x}")).collect::<Vec<_>>().join(":");
    if run_len == 0 {
        hex(&groups)
    } else {
        format!("{}::{}", hex(&groups[..run_start]), hex(&groups[run_start + run_len..]))
    }
}

fn parse_unix(path: &str) -> Result<Endpoint, Problem> {
    if path.is_empty() {
        return Err(Problem::Invalid("no path in the unix domain socket"));
    }
    if !path.starts_with('/') {
        return Err(Problem::Invalid("the unix domain socket path must be absolute"));
    }
    if path.len() > MAX_UNIX_PATH_LEN {
        return Err(Problem::Invalid(
            "too long path in the unix domain socket (at most 107 bytes)",
        ));
    }
    Ok(Endpoint::Unix(path.to_owned()))
}

/// `text` is what follows the opening `[`.
fn parse_bracketed(text: &str) -> Result<Endpoint, Problem> {
    let Some((host, rest)) = text.split_once(']') else {
        return Err(Problem::Invalid("missing \"]\""));
    };
    if host.contains('%') {
        return Err(Problem::Invalid("IPv6 zone ids are not supported"));
    }
    let Ok(ip) = host.parse::<Ipv6Addr>() else {
        return Err(Problem::Invalid("invalid IPv6 address"));
    };
    let port = match rest.strip_prefix(':') {
        Some(port) => parse_port(port)?,
        None if rest.is_empty() => return Err(Problem::Invalid("a port is required")),
        None => return Err(Problem::Invalid("unexpected characters after \"]\"")),
    };
    Ok(Endpoint::Ip(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))))
}

fn parse_unbracketed(text: &str) -> Result<Endpoint, Problem> {
    if text.contains("://") {
        return Err(Problem::Invalid("a URL scheme is not allowed"));
    }
    if text.matches(':').count() >= 2 && looks_like_ipv6(text) {
        return Err(Problem::Invalid("an IPv6 address must be enclosed in brackets"));
    }
    let (host, port) = match text.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    if host.is_empty() {
        return Err(Problem::Invalid("no host"));
    }

    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        let Some(port) = port else {
            return Err(Problem::Invalid("a port is required"));
        };
        return Ok(Endpoint::Ip(SocketAddr::new(ip.into(), parse_port(port)?)));
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(Problem::Invalid("invalid IPv4 address"));
    }
    if !is_host_name(host) {
        return Err(Problem::Invalid("invalid host"));
    }
    // A host name is refused whatever its port, unless the port is not even a number: then the
    // caller gets told about the port too, once the host name is fixed.
    match port {
        Some(port) if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) => {
            Err(Problem::Invalid(PORT_RANGE))
        }
        _ => Err(Problem::HostName),
    }
}

/// Whether an unbracketed string with two or more colons is an IPv6 address, possibly with a
/// zone id or a port appended: the caller forgot the brackets.
fn looks_like_ipv6(text: &str) -> bool {
    let without_zone = text.split_once('%').map_or(text, |(addr, _)| addr);
    without_zone.parse::<Ipv6Addr>().is_ok()
        || without_zone.rsplit_once(':').is_some_and(|(addr, _)| addr.parse::<Ipv6Addr>().is_ok())
}

/// RFC 1123 host name syntax (plus `_`, which real-world names contain), with an optional
/// trailing dot: what nginx would have handed to the resolver.
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

const PORT_RANGE: &str = "the port must be an integer from 1 to 65535";

fn parse_port(text: &str) -> Result<u16, Problem> {
    let mut port: u32 = 0;
    for b in text.bytes() {
        if !b.is_ascii_digit() {
            return Err(Problem::Invalid(PORT_RANGE));
        }
        // Saturating: leading zeros are fine, any value past 65535 is out of range anyway.
        port = (port * 10 + u32::from(b - b'0')).min(65536);
    }
    match u16::try_from(port) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(Problem::Invalid(PORT_RANGE)),
    }
}

/// A refused `server` string. `Display` gives the exact text returned to Lua.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressError {
    /// The input as shown in the message: escaped and truncated by [`echo`].
    input: String,
    problem: Problem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    HostName,
    Invalid(&'static str),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problem {
            Problem::HostName => write!(f, "host names are not supported: \"{}\"", self.input),
            Problem::Invalid(reason) => {
                write!(f, "invalid server address \"{}\": {reason}", self.input)
            }
        }
    }
}

impl std::error::Error for AddressError {}

/// The refused input as it appears between quotes in an error: printable ASCII as is, `"` and
/// `\` escaped, every other byte as `\xNN` (so neither a terminal nor a log parser sees raw
/// control or invalid UTF-8 bytes), cut after [`ECHO_LIMIT`] bytes with `...`.
pub(crate) fn echo(input: &[u8]) -> String {
    let mut out = String::new();
    for &b in input.iter().take(ECHO_LIMIT) {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x21..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if input.len() > ECHO_LIMIT {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(input: &str) -> ServerAddress {
        ServerAddress::parse(input.as_bytes()).unwrap_or_else(|e| panic!("{input:?}: {e}"))
    }

    fn refusal(input: &[u8]) -> String {
        match ServerAddress::parse(input) {
            Ok(a) => panic!("{input:?} accepted as {a:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn accepts_ipv4() {
        let a = parse("127.0.0.1:8080");
        assert_eq!(a.server(), "127.0.0.1:8080");
        assert_eq!(a.name(), "127.0.0.1:8080");
        assert_eq!(a.endpoint(), &Endpoint::Ip("127.0.0.1:8080".parse().unwrap()));

        for (input, name) in [
            ("0.0.0.0:1", "0.0.0.0:1"),
            ("255.255.255.255:65535", "255.255.255.255:65535"),
            ("10.0.0.1:080", "10.0.0.1:80"),
            ("10.0.0.1:00065535", "10.0.0.1:65535"),
        ] {
            let a = parse(input);
            assert_eq!((a.server(), a.name()), (input, name));
        }
    }

    #[test]
    fn accepts_ipv6() {
        let a = parse("[::1]:8080");
        assert_eq!(a.server(), "[::1]:8080");
        assert_eq!(a.name(), "[::1]:8080");
        assert_eq!(a.endpoint(), &Endpoint::Ip("[::1]:8080".parse().unwrap()));

        for (input, name) in [
            ("[2001:db8::1]:80", "[2001:db8::1]:80"),
            ("[2001:DB8:0:0:0:0:0:1]:80", "[2001:db8::1]:80"),
            ("[::0:1]:80", "[::1]:80"),
            ("[0::1]:80", "[::1]:80"),
            ("[0000:0000:0000:0000:0000:0000:0000:0001]:80", "[::1]:80"),
            ("[::]:443", "[::]:443"),
            ("[::ffff:127.0.0.1]:80", "[::ffff:127.0.0.1]:80"),
            ("[::FFFF:7f00:1]:80", "[::ffff:127.0.0.1]:80"),
            ("[::1.2.3.4]:80", "[::1.2.3.4]:80"),
            ("[::102]:80", "[::0.0.1.2]:80"),
            ("[1:0:0:2:0:0:0:3]:1", "[1:0:0:2::3]:1"),
            ("[fe80::1]:65535", "[fe80::1]:65535"),
        ] {
            let a = parse(input);
            assert_eq!((a.server(), a.name()), (input, name));
        }
    }

    #[test]
    fn accepts_unix() {
        let a = parse("unix:/run/app.sock");
        assert_eq!(a.server(), "unix:/run/app.sock");
        assert_eq!(a.name(), "unix:/run/app.sock");
        assert_eq!(a.endpoint(), &Endpoint::Unix("/run/app.sock".into()));

        // nginx matches the prefix without regard to case; the name is always lower case.
        let a = parse("UNIX:/run/app.sock");
        assert_eq!((a.server(), a.name()), ("UNIX:/run/app.sock", "unix:/run/app.sock"));

        // The path is everything after the prefix, colons and non-ASCII included.
        assert_eq!(parse("unix:/tmp/a:b").endpoint(), &Endpoint::Unix("/tmp/a:b".into()));
        assert_eq!(parse("unix:/tmp/sökét").name(), "unix:/tmp/sökét");
        assert_eq!(parse("unix:/").name(), "unix:/");

        let longest = format!("unix:/{}", "a".repeat(MAX_UNIX_PATH_LEN - 1));
        assert_eq!(parse(&longest).name(), longest);
    }

    #[test]
    fn refuses_with_exact_messages() {
        #[rustfmt::skip]
        let cases: &[(&[u8], &str)] = &[
            (b"", r#"invalid server address "": empty"#),
            (b"127.0.0.1", r#"invalid server address "127.0.0.1": a port is required"#),
            (b"[::1]", r#"invalid server address "[::1]": a port is required"#),
            (b"127.0.0.1:", r#"invalid server address "127.0.0.1:": the port must be an integer from 1 to 65535"#),
            (b"127.0.0.1:0", r#"invalid server address "127.0.0.1:0": the port must be an integer from 1 to 65535"#),
            (b"127.0.0.1:65536", r#"invalid server address "127.0.0.1:65536": the port must be an integer from 1 to 65535"#),
            (b"127.0.0.1:99999999999999999999", r#"invalid server address "127.0.0.1:99999999999999999999": the port must be an integer from 1 to 65535"#),
            (b"127.0.0.1:-1", r#"invalid server address "127.0.0.1:-1": the port must be an integer from 1 to 65535"#),
            (b"127.0.0.1:+80", r#"invalid server address "127.0.0.1:+80": the port must be an integer from 1 to 65535"#),
            (b"127.0.0.1:80x", r#"invalid server address "127.0.0.1:80x": the port must be an integer from 1 to 65535"#),
            (b"127.0.0.1:80/", r#"invalid server address "127.0.0.1:80/": the port must be an integer from 1 to 65535"#),
            (b"127.0.0.1:80:90", r#"invalid server address "127.0.0.1:80:90": the port must be an integer from 1 to 65535"#),
            (b"[::1]:0", r#"invalid server address "[::1]:0": the port must be an integer from 1 to 65535"#),
            (b"[::1]:http", r#"invalid server address "[::1]:http": the port must be an integer from 1 to 65535"#),
            (b"[::1]80", r#"invalid server address "[::1]80": unexpected characters after "]""#),
            (b"[::1]:80]", r#"invalid server address "[::1]:80]": the port must be an integer from 1 to 65535"#),
            (b"[::1:80", r#"invalid server address "[::1:80": missing "]""#),
            (b"[]:80", r#"invalid server address "[]:80": invalid IPv6 address"#),
            (b"[1.2.3.4]:80", r#"invalid server address "[1.2.3.4]:80": invalid IPv6 address"#),
            (b"[::g]:80", r#"invalid server address "[::g]:80": invalid IPv6 address"#),
            (b"[1:2:3:4:5:6:7:8:9]:80", r#"invalid server address "[1:2:3:4:5:6:7:8:9]:80": invalid IPv6 address"#),
            (b"[:1:2:3:4:5:6:7:8]:80", r#"invalid server address "[:1:2:3:4:5:6:7:8]:80": invalid IPv6 address"#),
            (b"[1::2:]:80", r#"invalid server address "[1::2:]:80": invalid IPv6 address"#),
            (b"[fe80::1%eth0]:80", r#"invalid server address "[fe80::1%eth0]:80": IPv6 zone ids are not supported"#),
            (b"::1", r#"invalid server address "::1": an IPv6 address must be enclosed in brackets"#),
            (b"::1:80", r#"invalid server address "::1:80": an IPv6 address must be enclosed in brackets"#),
            (b"2001:db8::1", r#"invalid server address "2001:db8::1": an IPv6 address must be enclosed in brackets"#),
            (b"fe80::1%eth0", r#"invalid server address "fe80::1%eth0": an IPv6 address must be enclosed in brackets"#),
            (b"256.0.0.1:80", r#"invalid server address "256.0.0.1:80": invalid IPv4 address"#),
            (b"1.2.3:80", r#"invalid server address "1.2.3:80": invalid IPv4 address"#),
            (b"1.2.3.4.5:80", r#"invalid server address "1.2.3.4.5:80": invalid IPv4 address"#),
            (b"1..2.3:80", r#"invalid server address "1..2.3:80": invalid IPv4 address"#),
            (b"010.0.0.1:80", r#"invalid server address "010.0.0.1:80": invalid IPv4 address"#),
            (b"8080", r#"invalid server address "8080": invalid IPv4 address"#),
            (b":80", r#"invalid server address ":80": no host"#),
            (b"*:80", r#"invalid server address "*:80": invalid host"#),
            (b"1.2.3.4/24:80", r#"invalid server address "1.2.3.4/24:80": invalid host"#),
            (b"-bad-.com:80", r#"invalid server address "-bad-.com:80": invalid host"#),
            (b"http://127.0.0.1:80", r#"invalid server address "http://127.0.0.1:80": a URL scheme is not allowed"#),
            (b"example.com:80", r#"host names are not supported: "example.com:80""#),
            (b"example.com", r#"host names are not supported: "example.com""#),
            (b"localhost:8080", r#"host names are not supported: "localhost:8080""#),
            (b"my_service.local.:0", r#"host names are not supported: "my_service.local.:0""#),
            (b"example.com:http", r#"invalid server address "example.com:http": the port must be an integer from 1 to 65535"#),
            (b"unix:", r#"invalid server address "unix:": no path in the unix domain socket"#),
            (b"unix:run/app.sock", r#"invalid server address "unix:run/app.sock": the unix domain socket path must be absolute"#),
            (b"unix:/tmp/a\0b", r#"invalid server address "unix:/tmp/a\x00b": contains whitespace or a control character"#),
            (b"127.0.0.1:80\0", r#"invalid server address "127.0.0.1:80\x00": contains whitespace or a control character"#),
            (b" 127.0.0.1:80", r#"invalid server address "\x20127.0.0.1:80": contains whitespace or a control character"#),
            (b"127.0.0.1:80\n", r#"invalid server address "127.0.0.1:80\x0a": contains whitespace or a control character"#),
            (b"unix:/tmp/my sock", r#"invalid server address "unix:/tmp/my\x20sock": contains whitespace or a control character"#),
            (b"127.0.0.1:80\x7f", r#"invalid server address "127.0.0.1:80\x7f": contains whitespace or a control character"#),
            (b"unix:/tmp/\xff", r#"invalid server address "unix:/tmp/\xff": not valid UTF-8"#),
            (b"\"quoted\\\":80", r#"invalid server address "\"quoted\\\":80": invalid host"#),
        ];
        assert!(cases.len() >= 30);
        for (input, message) in cases {
            assert_eq!(refusal(input), *message, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn huge_inputs_give_short_errors() {
        let huge = vec![b'1'; 1 << 20];
        let message = refusal(&huge);
        assert_eq!(message, format!("invalid server address \"{}...\": too long", "1".repeat(128)));

        let message = refusal(&[0u8; 300]);
        assert_eq!(message.len(), 4 * 128 + "invalid server address \"...\": too long".len());

        // Exactly at the limit nothing is cut; one past it is refused.
        let at_limit = format!("example.com:{}", "0".repeat(MAX_SERVER_LEN - 12));
        assert!(refusal(at_limit.as_bytes()).starts_with("host names are not supported"));
        assert!(refusal(format!("{at_limit}0").as_bytes()).ends_with("...\": too long"));
    }

    #[test]
    fn unix_path_limit() {
        let path = format!("/{}", "a".repeat(MAX_UNIX_PATH_LEN));
        assert_eq!(
            refusal(format!("unix:{path}").as_bytes()),
            format!(
                "invalid server address \"unix:{path}\": \
                 too long path in the unix domain socket (at most {MAX_UNIX_PATH_LEN} bytes)"
            )
        );
    }

    /// Outputs of nginx 1.22.1's own `ngx_sock_ntop(..., 1)`, taken by compiling its
    /// `src/core/ngx_inet.c` into a test harness and printing sockaddr_in6 values with port 80.
    /// (The function is unchanged up to nginx 1.29.)
    #[test]
    fn canonical_names_match_nginx() {
        let known = [
            ("::", "[::]:80"),
            ("::1", "[::1]:80"),
            ("::2", "[::2]:80"),
            ("::101", "[::101]:80"),
            ("::102", "[::0.0.1.2]:80"),
            ("::ff00", "[::0.0.255.0]:80"),
            ("::1:0", "[::0.1.0.0]:80"),
            ("::1.2.3.4", "[::1.2.3.4]:80"),
            ("::ffff:1.2.3.4", "[::ffff:1.2.3.4]:80"),
            ("::fffe:0:0", "[::fffe:0:0]:80"),
            ("::1:ffff:1.2.3.4", "[::1:ffff:102:304]:80"),
            ("1::", "[1::]:80"),
            ("1::1", "[1::1]:80"),
            ("2001:db8::1", "[2001:db8::1]:80"),
            ("1:0:2:3:4:5:6:7", "[1:0:2:3:4:5:6:7]:80"),
            ("1:0:0:2:0:0:3:4", "[1::2:0:0:3:4]:80"),
            ("1:0:0:2:0:0:0:3", "[1:0:0:2::3]:80"),
            ("0:0:1:0:0:0:0:2", "[0:0:1::2]:80"),
            (
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:80",
            ),
            ("fe80::abcd:ef01", "[fe80::abcd:ef01]:80"),
        ];
        for (ip, name) in known {
            let addr = SocketAddr::new(ip.parse::<Ipv6Addr>().unwrap().into(), 80);
            assert_eq!(canonical_name(&addr), name, "{ip}");
        }
        // Where Rust's own text differs (the reason `canonical_name` exists).
        assert_eq!("::1.2.3.4".parse::<Ipv6Addr>().unwrap().to_string(), "::102:304");
        assert_eq!("::102".parse::<Ipv6Addr>().unwrap().to_string(), "::102");

        let v4 = SocketAddr::new(Ipv4Addr::new(1, 2, 3, 4).into(), 65535);
        assert_eq!(canonical_name(&v4), "1.2.3.4:65535");
    }

    /// IPv6 addresses with many zero groups (and `ffff` ones), where the compression and
    /// dotted-tail rules matter; a uniformly random address almost never has any.
    fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
        let group =
            prop_oneof![4 => Just(0u16), 1 => Just(0xffff), 1 => 0..=0xffu16, 2 => any::<u16>()];
        prop::array::uniform8(group).prop_map(Ipv6Addr::from)
    }

    fn socket_addr() -> impl Strategy<Value = SocketAddr> {
        let ip = prop_oneof![
            any::<[u8; 4]>().prop_map(std::net::IpAddr::from),
            ipv6().prop_map(std::net::IpAddr::from),
        ];
        (ip, 1..=u16::MAX).prop_map(|(ip, port)| SocketAddr::new(ip, port))
    }

    proptest! {
        /// Whatever spelling Rust prints for an address, parsing it finds that address and its
        /// nginx name; and the name is itself accepted and names the same address.
        #[test]
        fn rust_spelling_round_trips(addr in socket_addr()) {
            let parsed = parse(&addr.to_string());
            prop_assert_eq!(parsed.endpoint(), &Endpoint::Ip(addr));
            prop_assert_eq!(parsed.name(), canonical_name(&addr));

            let again = parse(parsed.name());
            prop_assert_eq!(again.endpoint(), &Endpoint::Ip(addr));
            prop_assert_eq!(again.name(), parsed.name());
        }

        /// Outside nginx's dotted-tail cases its text is RFC 5952's, which Rust implements.
        #[test]
        fn ipv6_text_is_rfc5952_except_dotted_tails(ip in ipv6()) {
            let text = ipv6_text(&ip);
            if text.contains('.') {
                prop_assert!(ip.segments()[..5] == [0; 5]);
            } else {
                prop_assert_eq!(text, ip.to_string());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..300)) {
            check_outcome(&input);
        }

        /// Bytes drawn from the characters addresses are made of reach far deeper into the
        /// parser than uniformly random ones.
        #[test]
        fn address_like_bytes_never_panic(
            input in prop::collection::vec(prop::sample::select(b"0123456789afxAF:.[]%/unix_- \0\xff".to_vec()), 0..60),
        ) {
            check_outcome(&input);
        }
    }

    fn check_outcome(input: &[u8]) {
        match ServerAddress::parse(input) {
            Ok(a) => {
                assert_eq!(a.server().as_bytes(), input);
                assert_eq!(parse(a.name()).name(), a.name());
            }
            Err(e) => assert!(e.to_string().len() <= 4 * ECHO_LIMIT + 100),
        }
    }
}

/// Is a peer whose nginx `name` is `peer_name` the one a parsed address names?
///
/// Names are compared exactly, except that the `unix:` prefix of a configured peer keeps the case
/// it was written in (nginx copies that text as is), while [`ServerAddress::name`] is lower case.
pub fn names_peer(peer_name: &[u8], name: &str) -> bool {
    let name = name.as_bytes();
    if peer_name == name {
        return true;
    }
    let prefix = b"unix:".len();
    name.starts_with(b"unix:")
        && peer_name.len() == name.len()
        && peer_name[..prefix].eq_ignore_ascii_case(b"unix:")
        && peer_name[prefix..] == name[prefix..]
}

#[cfg(test)]
mod names_peer_tests {
    use super::names_peer;

    #[test]
    fn exact_and_unix_prefix_case() {
        assert!(names_peer(b"127.0.0.1:80", "127.0.0.1:80"));
        assert!(!names_peer(b"127.0.0.1:8", "127.0.0.1:80"));
        assert!(names_peer(b"UNIX:/run/a.sock", "unix:/run/a.sock"));
        assert!(!names_peer(b"UNIX:/run/A.sock", "unix:/run/a.sock"));
        assert!(!names_peer(b"[::1]:80", "unix:/x"));
    }
}
