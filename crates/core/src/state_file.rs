//! The state file of an upstream: the snapshot of its peers that survives a reload or restart.
//!
//! After every runtime change the module writes the upstream's peers to its state file, and at
//! configuration time it reads them back in place of the configured ones. The file is in the
//! syntax of nginx's `server` directive, one peer per line, so that an operator can read it,
//! diff it, and copy a line into `nginx.conf`:
//!
//! ```text
//! # ngx.dynamic state of upstream "backends"; written by nginx, do not edit while it runs
//! server 127.0.0.1:8081;
//! server 127.0.0.1:8082 weight=2 max_fails=3 fail_timeout=7s max_conns=10;
//! server [::1]:8083 down;
//! server unix:/run/app.sock backup;
//! ```
//!
//! [`format`](fn@format) writes each peer's canonical name (see [`ServerAddress::name`]) and
//! only the parameters that differ from nginx's defaults ([`PeerSettings::default`]), always in
//! the order `weight`, `max_fails`, `fail_timeout`, `max_conns`, `down`, `backup`, so the same
//! peers always give the same bytes and a change shows up as a one-line diff.
//!
//! # Why [`parse`] is strict
//!
//! The file decides where traffic goes after a reload, so a misread is worse than a refusal:
//! a refused file fails loudly at configuration time with the file's line number, while a
//! silently skipped line would drop a peer. Every line is therefore either blank, a comment (`#`
//! after optional whitespace), or exactly one `server <address> [parameters];`, with addresses
//! validated by [`ServerAddress::parse`] and values by [`PeerOptions::validate_configured`], so
//! errors read like the Lua API's. Each parameter may appear once per line, and the file must hold
//! at least one server that is not `backup`, as nginx itself requires. A peer both `down` and
//! `backup` is accepted, as nginx accepts it.
//!
//! # Whatever the writer writes, the reader reads
//!
//! The module writes the file from the peers in shared memory, and those include the peers of
//! `nginx.conf`, so [`parse`] accepts whatever nginx accepts there and [`format`](fn@format) can
//! write:
//! - Values in nginx's configuration ranges ([`PeerOptions::validate_configured`], up to
//!   4294967295), not just the Lua API's: `weight=1000001` or `fail_timeout=400d` (written as
//!   `fail_timeout=34560000s`) in `nginx.conf` end up in the file after any runtime change.
//! - The same address more than once: nginx allows it on two `server` lines, as two peers. Such
//!   lines are read as separate peers, in file order, as nginx reads them.
//!
//! Signs of a damaged file are refused with a hint:
//! - The writer ends every line with `;` and a newline, so a file cut short by a crash or a full
//!   disk in the middle of a line lacks its final newline (or the `;` of a line). A cut exactly
//!   at a line boundary cannot be seen in the content; the writer must replace the file
//!   atomically (write a temporary file, then rename it).
//! - A NUL byte: after a crash some file systems leave the unwritten tail of a file zero-filled.
//!
//! Errors about the file as a whole (no servers at all, no primary server) are reported at its
//! last line (line 1 for an empty file), where the reader found out.
//!
//! # What is accepted beyond what [`format`](fn@format) writes
//!
//! Hand-edited and copied files are read the way nginx would read the same lines: any mix of
//! spaces, tabs and carriage returns separates words and may surround a line (so CRLF line ends
//! work), whitespace may precede the `;`, explicit default values are fine, parameters may come
//! in any order, any address spelling [`ServerAddress::parse`] accepts is taken (and the peer is
//! named canonically), and `fail_timeout` takes nginx's time units `s`, `m` and `h` as well as
//! plain seconds. Other nginx time syntax (`ms`, `d`, combinations like `1m30s`) is refused, as
//! are parameters this module cannot manage (`resolve`, `slow_start`, ...). Comments are not
//! read at all, so they may hold any bytes but NUL; elsewhere bytes that are not UTF-8 can only
//! be part of a word that is refused anyway (the address parser names them).
//!
//! Only the `;` that ends the line ends the directive. Any other `;` is refused as the end of a
//! directive followed by more text (a second directive, or a comment, which must be on a line of
//! its own), except inside a unix socket path: the address parser accepts any `;` there, so such
//! a peer must read back, although nginx itself would need its path quoted.

use std::fmt;

use crate::address::{echo, ServerAddress};
use crate::options::{PeerOptions, PeerSettings};

/// One peer of an upstream as the state file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePeer {
    /// Written as its canonical name, so a peer read back has that as its `server()` too.
    pub address: ServerAddress,
    pub settings: PeerSettings,
}

/// Its line in the state file, without the newline: `server <name> <parameters>;`.
///
/// The settings are written as they are. Every value [`PeerSettings`] can hold reads back (see
/// [`PeerOptions::validate_configured`]) except `weight=0`, which no nginx peer has.
impl fmt::Display for StatePeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, default) = (&self.settings, PeerSettings::default());
        write!(f, "server {}", self.address.name())?;
        if s.weight != default.weight {
            write!(f, " weight={}", s.weight)?;
        }
        if s.max_fails != default.max_fails {
            write!(f, " max_fails={}", s.max_fails)?;
        }
        if s.fail_timeout != default.fail_timeout {
            write!(f, " fail_timeout={}s", s.fail_timeout)?;
        }
        if s.max_conns != default.max_conns {
            write!(f, " max_conns={}", s.max_conns)?;
        }
        if s.down {
            f.write_str(" down")?;
        }
        if s.backup {
            f.write_str(" backup")?;
        }
        f.write_str(";")
    }
}

/// The state file of `upstream` holding `peers`, in their order (the module passes the primary
/// peers, then the backup ones): a header comment naming the upstream, then one line per peer.
/// Always ends with a newline.
pub fn format(upstream: &str, peers: &[StatePeer]) -> String {
    let mut text = format!(
        "# ngx.dynamic state of upstream \"{}\"; written by nginx, do not edit while it runs\n",
        echo(upstream.as_bytes())
    );
    for peer in peers {
        text.push_str(&peer.to_string());
        text.push('\n');
    }
    text
}

/// Why a state file was refused. `Display` gives `line N: <reason>`, which the module prefixes
/// with the file's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFileError {
    /// 1-based; for a problem of the file as a whole, its last line (1 if it is empty).
    pub line: usize,
    /// One line of text; any part of the file it repeats is escaped and cut short.
    pub reason: String,
}

impl fmt::Display for StateFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for StateFileError {}

/// Reads a state file (the rules are in the module documentation). Returns the peers in file
/// order, duplicates included, or the first problem in line order.
pub fn parse(text: &[u8]) -> Result<Vec<StatePeer>, StateFileError> {
    let newlines = text.iter().filter(|&&b| b == b'\n').count();
    let mut peers: Vec<StatePeer> = Vec::new();

    for (index, line) in text.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let refuse = |reason: String| StateFileError { line: number, reason };
        if line.contains(&0) {
            return Err(refuse("a NUL byte: the file may be damaged".into()));
        }
        // `split` yields the text after the last newline too: empty in a well-ended file.
        if index == newlines {
            if line.is_empty() {
                break;
            }
            return Err(refuse(
                "no newline at the end of the file: it may have been cut short".into(),
            ));
        }
        let Some(peer) = parse_line(line).map_err(refuse)? else { continue };
        peers.push(peer);
    }

    let refuse =
        |reason: &str| Err(StateFileError { line: newlines.max(1), reason: reason.into() });
    if peers.is_empty() {
        return refuse("no servers: an upstream needs at least one");
    }
    if peers.iter().all(|peer| peer.settings.backup) {
        return refuse("no primary server: an upstream needs at least one that is not \"backup\"");
    }
    Ok(peers)
}

/// What nginx's configuration parser takes for whitespace within a line.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r')
}

fn trim(mut line: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = line {
        if !is_space(*first) {
            break;
        }
        line = rest;
    }
    while let [rest @ .., last] = line {
        if !is_space(*last) {
            break;
        }
        line = rest;
    }
    line
}

/// One line without its newline: `None` for a blank or comment line.
fn parse_line(line: &[u8]) -> Result<Option<StatePeer>, String> {
    let line = trim(line);
    if line.is_empty() || line[0] == b'#' {
        return Ok(None);
    }

    let keyword_end = line.iter().position(|&b| is_space(b) || b == b';').unwrap_or(line.len());
    let (keyword, rest) = line.split_at(keyword_end);
    if keyword != b"server" {
        return Err(format!("unknown directive \"{}\" (expected \"server\")", echo(keyword)));
    }
    let Some(body) = rest.strip_suffix(b";") else {
        return Err(if rest.contains(&b';') {
            TEXT_AFTER_SEMICOLON.into()
        } else {
            "missing \";\": the line may have been cut short".into()
        });
    };

    let mut words = body.split(|&b| is_space(b)).filter(|word| !word.is_empty());
    let Some(address) = words.next() else {
        return Err("no address after \"server\"".into());
    };
    // Only the `;` ending the line ends the directive: another one means that more text follows
    // the directive, unless it is part of a unix socket path, which may contain any `;`.
    if words.clone().any(|word| word.contains(&b';')) {
        return Err(TEXT_AFTER_SEMICOLON.into());
    }
    let address = ServerAddress::parse(address).map_err(|e| {
        if address.contains(&b';') {
            TEXT_AFTER_SEMICOLON.into()
        } else {
            e.to_string()
        }
    })?;

    let mut options = PeerOptions::default();
    for word in words {
        let (name, value) = match word.iter().position(|&b| b == b'=') {
            Some(at) => (&word[..at], Some(&word[at + 1..])),
            None => (word, None),
        };
        match (name, value) {
            (b"weight", Some(value)) => set(&mut options.weight, "weight", integer(value))?,
            (b"max_fails", Some(value)) => {
                set(&mut options.max_fails, "max_fails", integer(value))?
            }
            (b"fail_timeout", Some(value)) => {
                set(&mut options.fail_timeout, "fail_timeout", seconds(value))?
            }
            (b"max_conns", Some(value)) => {
                set(&mut options.max_conns, "max_conns", integer(value))?
            }
            (b"down", None) => set(&mut options.down, "down", true)?,
            (b"backup", None) => set(&mut options.backup, "backup", true)?,
            _ => return Err(format!("unknown parameter \"{}\"", echo(word))),
        }
        // Checked as each one is read, so the first bad parameter on the line is reported.
        options.validate_configured().map_err(|e| e.to_string())?;
    }
    let settings = options.validate_configured().map_err(|e| e.to_string())?.with_defaults();
    Ok(Some(StatePeer { address, settings }))
}

const TEXT_AFTER_SEMICOLON: &str =
    "unexpected text after \";\": one server per line, comments on lines of their own";

fn set<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("duplicate parameter \"{name}\""));
    }
    *slot = Some(value);
    Ok(())
}

/// A plain decimal integer (leading zeros allowed, as nginx allows them). Anything else becomes
/// NaN, which [`PeerOptions::validate_configured`] refuses with the option's range text, the same
/// answer a Lua caller gets for a fraction.
fn integer(digits: &[u8]) -> f64 {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return f64::NAN;
    }
    // Saturating far above every range (u32::MAX is below 2^32), so that a huge number is out of
    // range, not wrapped; 2^40 times any unit is still exact in an f64 and cannot overflow a u64.
    let value = digits.iter().fold(0u64, |n, &d| (n * 10 + u64::from(d - b'0')).min(SATURATED));
    value as f64
}

/// Where [`integer`] stops counting.
const SATURATED: u64 = 1 << 40;
const _: () = assert!(SATURATED > u32::MAX as u64 + 1);

/// Seconds from `N`, `Ns`, `Nm` or `Nh` (see the module documentation); NaN as for [`integer`].
fn seconds(time: &[u8]) -> f64 {
    let (digits, unit) = match time {
        [digits @ .., b's'] => (digits, 1.0),
        [digits @ .., b'm'] => (digits, 60.0),
        [digits @ .., b'h'] => (digits, 3600.0),
        digits => (digits, 1.0),
    };
    integer(digits) * unit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{canonical_name, MAX_UNIX_PATH_LEN};
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};

    fn peer(address: &str, settings: PeerSettings) -> StatePeer {
        StatePeer { address: ServerAddress::parse(address.as_bytes()).unwrap(), settings }
    }

    fn plain(address: &str) -> StatePeer {
        peer(address, PeerSettings::default())
    }

    fn accepted(text: &[u8]) -> Vec<StatePeer> {
        parse(text).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(text)))
    }

    fn refusal(text: &[u8]) -> String {
        match parse(text) {
            Ok(peers) => panic!("{:?} accepted as {peers:?}", String::from_utf8_lossy(text)),
            Err(e) => e.to_string(),
        }
    }

    const EXAMPLE: &str = "\
# ngx.dynamic state of upstream \"backends\"; written by nginx, do not edit while it runs
server 127.0.0.1:8081;
server 127.0.0.1:8082 weight=2 max_fails=3 fail_timeout=7s max_conns=10;
server [::1]:8083 down;
server unix:/run/app.sock backup;
";

    fn example_peers() -> Vec<StatePeer> {
        let default = PeerSettings::default();
        vec![
            plain("127.0.0.1:8081"),
            peer(
                "127.0.0.1:8082",
                PeerSettings { weight: 2, max_fails: 3, fail_timeout: 7, max_conns: 10, ..default },
            ),
            peer("[::1]:8083", PeerSettings { down: true, ..default }),
            peer("unix:/run/app.sock", PeerSettings { backup: true, ..default }),
        ]
    }

    #[test]
    fn formats_the_example() {
        assert_eq!(format("backends", &example_peers()), EXAMPLE);
    }

    #[test]
    fn parses_the_example() {
        assert_eq!(accepted(EXAMPLE.as_bytes()), example_peers());
    }

    #[test]
    fn formats_every_parameter_in_fixed_order() {
        let all = PeerSettings {
            weight: u32::MAX,
            max_fails: 0,
            fail_timeout: 0,
            max_conns: u32::MAX,
            down: true,
            backup: true,
        };
        assert_eq!(
            peer("[2001:DB8::1]:443", all).to_string(),
            "server [2001:db8::1]:443 weight=4294967295 max_fails=0 fail_timeout=0s \
             max_conns=4294967295 down backup;"
        );
        // Explicit defaults are not written.
        assert_eq!(peer("UNIX:/a", PeerSettings::default()).to_string(), "server unix:/a;");
    }

    #[test]
    fn header_names_the_upstream_on_one_line() {
        assert_eq!(
            format("odd \"name\"\n# x", &[]),
            "# ngx.dynamic state of upstream \"odd\\x20\\\"name\\\"\\x0a#\\x20x\"; \
             written by nginx, do not edit while it runs\n"
        );
        let long = "u".repeat(300);
        assert!(format(&long, &[]).contains(&format!("\"{}...\"", "u".repeat(128))));
    }

    #[test]
    fn accepts_what_nginx_would_read_the_same_way() {
        let expected = vec![
            peer("127.0.0.1:80", PeerSettings { weight: 3, ..PeerSettings::default() }),
            plain("127.0.0.1:81"),
        ];
        for text in [
            // No header, CRLF line ends.
            "server 127.0.0.1:80 weight=3;\r\nserver 127.0.0.1:81;\r\n",
            // Indentation, tabs, runs of spaces, whitespace around the `;`.
            "  server\t127.0.0.1:80   weight=3 ;  \n\tserver 127.0.0.1:81\t;\t\n",
            // A carriage return anywhere is whitespace, as in nginx.
            "server\r127.0.0.1:80\rweight=3;\nserver 127.0.0.1:81;\r\r\n",
            // Blank lines, comments anywhere, with leading whitespace, and blank-looking ones.
            "\n# a\n   # b; c\nserver 127.0.0.1:80 weight=3;\n \t\r\n#\nserver 127.0.0.1:81;\n\n",
            // Other spellings of the same addresses and an explicit default.
            "server 127.0.0.1:080 weight=03;\nserver 127.0.0.1:81 weight=1;\n",
        ] {
            let named = |peers: &[StatePeer]| -> Vec<(String, PeerSettings)> {
                peers.iter().map(|p| (p.address.name().to_owned(), p.settings)).collect()
            };
            assert_eq!(named(&accepted(text.as_bytes())), named(&expected), "{text:?}");
        }
    }

    #[test]
    fn accepts_parameters_in_any_order_with_nginx_time_units() {
        let peers = accepted(
            b"server 10.0.0.1:1 backup down max_conns=5 fail_timeout=30 max_fails=0 weight=9;\n\
              server 10.0.0.2:1 fail_timeout=2m;\n\
              server 10.0.0.3:1 fail_timeout=8760h;\n\
              server 10.0.0.4:1 fail_timeout=0s max_fails=1000000 max_conns=0;\n",
        );
        let default = PeerSettings::default();
        let settings: Vec<_> = peers.iter().map(|p| p.settings).collect();
        assert_eq!(
            settings,
            [
                PeerSettings {
                    weight: 9,
                    max_fails: 0,
                    fail_timeout: 30,
                    max_conns: 5,
                    down: true,
                    backup: true,
                },
                PeerSettings { fail_timeout: 120, ..default },
                PeerSettings { fail_timeout: 31_536_000, ..default },
                PeerSettings { fail_timeout: 0, max_fails: 1_000_000, ..default },
            ]
        );
    }

    /// Values nginx accepts in `nginx.conf` but the Lua API refuses: the module writes them
    /// from shared memory, so they must read back.
    #[test]
    fn accepts_nginx_configuration_ranges() {
        let peers = accepted(
            b"server 127.0.0.1:9000 weight=1000001;\n\
              server 127.0.0.1:9001 max_fails=2000000 max_conns=2000000 fail_timeout=34560000s;\n\
              server 127.0.0.1:9002 weight=4294967295 max_fails=4294967295 \
                fail_timeout=4294967295 max_conns=4294967295;\n\
              server 127.0.0.1:9003 fail_timeout=71582788m;\n\
              server 127.0.0.1:9004 fail_timeout=1193046h;\n\
              server 127.0.0.1:9005 weight=0004294967295;\n",
        );
        let default = PeerSettings::default();
        let settings: Vec<_> = peers.iter().map(|p| p.settings).collect();
        assert_eq!(
            settings,
            [
                PeerSettings { weight: 1_000_001, ..default },
                PeerSettings {
                    max_fails: 2_000_000,
                    fail_timeout: 34_560_000,
                    max_conns: 2_000_000,
                    ..default
                },
                PeerSettings {
                    weight: u32::MAX,
                    max_fails: u32::MAX,
                    fail_timeout: u32::MAX,
                    max_conns: u32::MAX,
                    ..default
                },
                PeerSettings { fail_timeout: 71_582_788 * 60, ..default },
                PeerSettings { fail_timeout: 1_193_046 * 3600, ..default },
                PeerSettings { weight: u32::MAX, ..default },
            ]
        );
        assert_eq!(accepted(format("u", &peers).as_bytes()), peers);
    }

    /// nginx allows one address on two `server` lines, as two peers, so the module may write it
    /// twice; every line is a peer of its own, in file order.
    #[test]
    fn accepts_duplicate_servers_as_separate_peers() {
        let default = PeerSettings::default();
        let cases: [(&[u8], Vec<StatePeer>); 4] = [
            (
                b"# h\nserver 127.0.0.1:8081;\nserver 127.0.0.1:08081 down;\n",
                vec![
                    plain("127.0.0.1:8081"),
                    peer("127.0.0.1:8081", PeerSettings { down: true, ..default }),
                ],
            ),
            (
                b"server [::1]:80;\n\nserver [::0:1]:80 backup;\n",
                vec![plain("[::1]:80"), peer("[::1]:80", PeerSettings { backup: true, ..default })],
            ),
            (b"server unix:/a;\nserver UNIX:/a;\n", vec![plain("unix:/a"), plain("unix:/a")]),
            (
                b"server 1.2.3.4:80 weight=2;\nserver 1.2.3.4:81;\nserver 1.2.3.4:80 weight=3;\n\
                  server 1.2.3.4:80 weight=2;\n",
                vec![
                    peer("1.2.3.4:80", PeerSettings { weight: 2, ..default }),
                    plain("1.2.3.4:81"),
                    peer("1.2.3.4:80", PeerSettings { weight: 3, ..default }),
                    peer("1.2.3.4:80", PeerSettings { weight: 2, ..default }),
                ],
            ),
        ];
        for (text, expected) in cases {
            let peers = accepted(text);
            assert_eq!(canonical(&peers), expected, "{:?}", String::from_utf8_lossy(text));
            assert_eq!(accepted(format("u", &peers).as_bytes()), expected);
        }
    }

    #[test]
    fn accepts_peers_down_and_backup_and_all_down() {
        let peers = accepted(b"server 10.0.0.1:1 down;\nserver 10.0.0.2:1 down backup;\n");
        assert!(peers.iter().all(|p| p.settings.down));
        assert_eq!(peers.iter().map(|p| p.settings.backup).collect::<Vec<_>>(), [false, true]);
    }

    #[test]
    fn peers_are_named_canonically() {
        let peers = accepted(b"server [::0:1]:80;\nserver UNIX:/run/a.sock;\nserver [::102]:8;\n");
        let names: Vec<_> = peers.iter().map(|p| p.address.name()).collect();
        assert_eq!(names, ["[::1]:80", "unix:/run/a.sock", "[::0.0.1.2]:8"]);
    }

    #[test]
    fn unix_paths_with_special_characters_round_trip() {
        let mut peers: Vec<_> = ["unix:/a;b", "unix:/a;", "unix:/a;;#b\"{}", "unix:/tmp/sökét"]
            .into_iter()
            .map(plain)
            .collect();
        // A path ending in `;`, followed by a parameter.
        peers.push(peer("unix:/;", PeerSettings { down: true, ..PeerSettings::default() }));
        let text = format("u", &peers);
        assert!(text.contains("\nserver unix:/a;;\n"));
        assert!(text.ends_with("\nserver unix:/; down;\n"));
        assert_eq!(accepted(text.as_bytes()), peers);
    }

    #[test]
    fn comments_are_not_read() {
        let peers =
            accepted(b"# \xff\xfe not UTF-8, \x01 control; server 1.2.3.4:5;\nserver 1.2.3.4:6;\n");
        assert_eq!(peers, [plain("1.2.3.4:6")]);
    }

    #[test]
    fn error_display() {
        let error = StateFileError { line: 3, reason: "no servers".into() };
        assert_eq!(error.to_string(), "line 3: no servers");
        assert_eq!(
            parse(b"# h\nserver 1.2.3.4:0;\n").unwrap_err(),
            StateFileError {
                line: 2,
                reason: "invalid server address \"1.2.3.4:0\": \
                         the port must be an integer from 1 to 65535"
                    .into()
            }
        );
    }

    #[test]
    fn refuses_with_exact_messages_and_lines() {
        const WEIGHT: &str = "weight must be an integer from 1 to 4294967295";
        const MAX_FAILS: &str = "max_fails must be an integer from 0 to 4294967295";
        const FAIL_TIMEOUT: &str = "fail_timeout must be an integer from 0 to 4294967295";
        const MAX_CONNS: &str = "max_conns must be an integer from 0 to 4294967295";
        const AFTER: &str =
            "unexpected text after \";\": one server per line, comments on lines of their own";
        const CUT: &str = "no newline at the end of the file: it may have been cut short";
        const NO_SERVERS: &str = "no servers: an upstream needs at least one";
        const NO_PRIMARY: &str =
            "no primary server: an upstream needs at least one that is not \"backup\"";
        const NUL: &str = "a NUL byte: the file may be damaged";
        let weight = |value: &str| format!("server 1.2.3.4:80 weight={value};\n");

        #[rustfmt::skip]
        let cases: Vec<(Vec<u8>, String)> = [
            // Not a server line.
            (&b"hello world\n"[..], "line 1: unknown directive \"hello\" (expected \"server\")"),
            (b"\x89PNG\r\n\x1a\n", "line 1: unknown directive \"\\x89PNG\" (expected \"server\")"),
            (b"# h\nupstream backends {\n", "line 2: unknown directive \"upstream\" (expected \"server\")"),
            (b"Server 1.2.3.4:80;\n", "line 1: unknown directive \"Server\" (expected \"server\")"),
            (b"servers 1.2.3.4:80;\n", "line 1: unknown directive \"servers\" (expected \"server\")"),
            (b";\n", "line 1: unknown directive \"\" (expected \"server\")"),
            (b"server\x0c1.2.3.4:80;\n", "line 1: unknown directive \"server\\x0c1.2.3.4:80\" (expected \"server\")"),
            (b"server;\n", "line 1: no address after \"server\""),
            (b"server ;\n", "line 1: no address after \"server\""),
            // The `;`.
            (b"# h\nserver 1.2.3.4:80\n", "line 2: missing \";\": the line may have been cut short"),
            (b"server 1.2.3.4:80 weight=2\nserver 1.2.3.4:81;\n", "line 1: missing \";\": the line may have been cut short"),
            (b"server 1.2.3.4:80; server 1.2.3.4:81;\n", &format!("line 1: {AFTER}")),
            (b"server 1.2.3.4:80; # main\n", &format!("line 1: {AFTER}")),
            (b"server 1.2.3.4:80;# main\n", &format!("line 1: {AFTER}")),
            (b"server 1.2.3.4:80 ; down;\n", &format!("line 1: {AFTER}")),
            (b"server 1.2.3.4:80;;\n", &format!("line 1: {AFTER}")),
            (b"server 1.2.3.4:80 weight=0; down;\n", &format!("line 1: {AFTER}")),
            (b"server unix:/a; # main\n", &format!("line 1: {AFTER}")),
            // Addresses, with the address parser's texts.
            (b"server 1.2.3.4:0;\n", "line 1: invalid server address \"1.2.3.4:0\": the port must be an integer from 1 to 65535"),
            (b"server 1.2.3.4;\n", "line 1: invalid server address \"1.2.3.4\": a port is required"),
            (b"server example.com:80;\n", "line 1: host names are not supported: \"example.com:80\""),
            (b"server ::1:80;\n", "line 1: invalid server address \"::1:80\": an IPv6 address must be enclosed in brackets"),
            (b"server unix:run/a.sock;\n", "line 1: invalid server address \"unix:run/a.sock\": the unix domain socket path must be absolute"),
            (b"server unix:/tmp/\xff;\n", "line 1: invalid server address \"unix:/tmp/\\xff\": not valid UTF-8"),
            // Values out of nginx's configuration ranges or not integers, in the Lua API's shape.
            (weight("0").as_bytes(), &format!("line 1: {WEIGHT}")),
            (weight("4294967296").as_bytes(), &format!("line 1: {WEIGHT}")),
            (weight("00004294967296").as_bytes(), &format!("line 1: {WEIGHT}")),
            (weight("1099511627776").as_bytes(), &format!("line 1: {WEIGHT}")),
            (weight("18446744073709551616").as_bytes(), &format!("line 1: {WEIGHT}")),
            (weight("99999999999999999999999999").as_bytes(), &format!("line 1: {WEIGHT}")),
            (weight("-1").as_bytes(), &format!("line 1: {WEIGHT}")),
            (weight("+1").as_bytes(), &format!("line 1: {WEIGHT}")),
            (weight("1.5").as_bytes(), &format!("line 1: {WEIGHT}")),
            (weight("2x").as_bytes(), &format!("line 1: {WEIGHT}")),
            (weight("").as_bytes(), &format!("line 1: {WEIGHT}")),
            (b"server 1.2.3.4:80 max_fails=4294967296;\n", &format!("line 1: {MAX_FAILS}")),
            (b"server 1.2.3.4:80 max_fails=-0;\n", &format!("line 1: {MAX_FAILS}")),
            (b"server 1.2.3.4:80 fail_timeout=4294967296;\n", &format!("line 1: {FAIL_TIMEOUT}")),
            (b"server 1.2.3.4:80 fail_timeout=4294967296s;\n", &format!("line 1: {FAIL_TIMEOUT}")),
            (b"server 1.2.3.4:80 fail_timeout=71582789m;\n", &format!("line 1: {FAIL_TIMEOUT}")),
            (b"server 1.2.3.4:80 fail_timeout=1193047h;\n", &format!("line 1: {FAIL_TIMEOUT}")),
            (b"server 1.2.3.4:80 fail_timeout=99999999999999999999999h;\n", &format!("line 1: {FAIL_TIMEOUT}")),
            (b"server 1.2.3.4:80 fail_timeout=500ms;\n", &format!("line 1: {FAIL_TIMEOUT}")),
            (b"server 1.2.3.4:80 fail_timeout=1d;\n", &format!("line 1: {FAIL_TIMEOUT}")),
            (b"server 1.2.3.4:80 fail_timeout=1m30s;\n", &format!("line 1: {FAIL_TIMEOUT}")),
            (b"server 1.2.3.4:80 fail_timeout=s;\n", &format!("line 1: {FAIL_TIMEOUT}")),
            (b"server 1.2.3.4:80 fail_timeout=1.5s;\n", &format!("line 1: {FAIL_TIMEOUT}")),
            (b"server 1.2.3.4:80 max_conns=4294967296;\n", &format!("line 1: {MAX_CONNS}")),
            // The first bad parameter in line order is reported.
            (b"server 1.2.3.4:80 max_fails=-1 weight=0;\n", &format!("line 1: {MAX_FAILS}")),
            // Unknown and repeated parameters.
            (b"server 1.2.3.4:80 slow_start=10s;\n", "line 1: unknown parameter \"slow_start=10s\""),
            (b"server 1.2.3.4:80 weight;\n", "line 1: unknown parameter \"weight\""),
            (b"server 1.2.3.4:80 down=1;\n", "line 1: unknown parameter \"down=1\""),
            (b"server 1.2.3.4:80 Weight=2;\n", "line 1: unknown parameter \"Weight=2\""),
            (b"server 1.2.3.4:80 weight=2 weight=2;\n", "line 1: duplicate parameter \"weight\""),
            (b"server 1.2.3.4:80 fail_timeout=60 fail_timeout=1m;\n", "line 1: duplicate parameter \"fail_timeout\""),
            (b"server 1.2.3.4:80 down down;\n", "line 1: duplicate parameter \"down\""),
            (b"server 1.2.3.4:80 backup weight=0 backup;\n", &format!("line 1: {WEIGHT}")),
            // A cut-short file.
            (b"server 1.2.3.4:80;\nserver 1.2.3.4:81", &format!("line 2: {CUT}")),
            (b"server 1.2.3.4:80;\nserver 1.2.3.4:81 weig", &format!("line 2: {CUT}")),
            (b"server 1.2.3.4:80;", &format!("line 1: {CUT}")),
            (b"server 1.2.3.4:80;\n# end", &format!("line 2: {CUT}")),
            (b"server 1.2.3.4:80;\n  ", &format!("line 2: {CUT}")),
            // An earlier line's problem is reported first.
            (b"server example.com:80;\nserver 1.2.3.4:81", "line 1: host names are not supported: \"example.com:80\""),
            // NUL bytes, wherever they are.
            (b"server 1.2.3.4:80;\n\0\0\0\0\0\0", &format!("line 2: {NUL}")),
            (b"# \0\nserver 1.2.3.4:80;\n", &format!("line 1: {NUL}")),
            (b"server 1.2.3.4:80\0;\n", &format!("line 1: {NUL}")),
            // No servers, no primary server: reported at the last line.
            (b"", &format!("line 1: {NO_SERVERS}")),
            (b"\n", &format!("line 1: {NO_SERVERS}")),
            (b"# ngx.dynamic state of upstream \"u\"\n\n# nothing\n", &format!("line 3: {NO_SERVERS}")),
            (b"server 1.2.3.4:80 backup;\nserver [::1]:80 down backup;\n", &format!("line 2: {NO_PRIMARY}")),
            (b"server unix:/a backup;\n\n\n", &format!("line 3: {NO_PRIMARY}")),
        ]
        .into_iter()
        .map(|(text, message)| (text.to_vec(), message.to_owned()))
        .collect();

        assert!(cases.len() >= 25);
        for (text, message) in &cases {
            assert_eq!(&refusal(text), message, "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn long_lines_give_short_errors() {
        let garbage = format!("{}\n", "x".repeat(1 << 20));
        assert_eq!(
            refusal(garbage.as_bytes()),
            format!("line 1: unknown directive \"{}...\" (expected \"server\")", "x".repeat(128))
        );
        let parameter = format!("server 1.2.3.4:80 {};\n", "y".repeat(1 << 20));
        assert_eq!(
            refusal(parameter.as_bytes()),
            format!("line 1: unknown parameter \"{}...\"", "y".repeat(128))
        );
    }

    /// IPv6 addresses with many zero and `ffff` groups, where canonical names are irregular.
    fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
        let group =
            prop_oneof![4 => Just(0u16), 1 => Just(0xffff), 1 => 0..=0xffu16, 2 => any::<u16>()];
        prop::array::uniform8(group).prop_map(Ipv6Addr::from)
    }

    /// The text of any address a peer can have, in its canonical spelling or not.
    fn address_text() -> impl Strategy<Value = String> {
        let ip =
            prop_oneof![any::<[u8; 4]>().prop_map(IpAddr::from), ipv6().prop_map(IpAddr::from)];
        let ip = (ip, 1..=u16::MAX).prop_map(|(ip, port)| SocketAddr::new(ip, port));
        // Every character a path may hold that matters to a line parser, plus plain ones.
        let path_char = prop::sample::select(vec!['a', '/', ';', '#', '"', '=', '{', 'é', '.']);
        let path = prop::collection::vec(path_char, 0..MAX_UNIX_PATH_LEN).prop_map(|chars| {
            let mut path = String::from("/");
            for c in chars {
                if path.len() + c.len_utf8() > MAX_UNIX_PATH_LEN {
                    break;
                }
                path.push(c);
            }
            path
        });
        prop_oneof![
            (ip, any::<bool>()).prop_map(|(addr, rust_spelling)| if rust_spelling {
                addr.to_string()
            } else {
                canonical_name(&addr)
            }),
            path.prop_map(|path| format!("unix:{path}")),
        ]
    }

    /// Settings anywhere in nginx's configuration ranges (`PeerOptions::validate_configured`),
    /// each often at its default, a bound of those or of the Lua API's, or within the API's range.
    fn settings() -> impl Strategy<Value = PeerSettings> {
        fn value(default: u32, min: u32, api_max: u32) -> impl Strategy<Value = u32> {
            prop_oneof![
                Just(default),
                Just(min),
                Just(api_max),
                Just(api_max + 1),
                Just(u32::MAX),
                min..=api_max,
                min..=u32::MAX,
            ]
        }
        (
            value(1, 1, 1_000_000),
            value(1, 0, 1_000_000),
            value(10, 0, 31_536_000),
            value(0, 0, 1_000_000),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(weight, max_fails, fail_timeout, max_conns, down, backup)| {
                PeerSettings { weight, max_fails, fail_timeout, max_conns, down, backup }
            })
    }

    /// What an upstream can hold: one to a dozen peers, one of them primary. As in nginx, an
    /// address may be there more than once: often a repeat of an earlier peer's, spelled as that
    /// one was or canonically.
    fn valid_peers() -> impl Strategy<Value = Vec<StatePeer>> {
        let repeat = prop::option::weighted(0.3, (any::<prop::sample::Index>(), any::<bool>()));
        prop::collection::vec((address_text(), settings(), repeat), 1..12).prop_map(|entries| {
            let mut texts: Vec<String> = Vec::new();
            let mut peers: Vec<StatePeer> = Vec::new();
            for (text, settings, repeat) in entries {
                let text = match repeat {
                    Some((index, canonically)) if !peers.is_empty() => {
                        let index = index.index(peers.len());
                        if canonically {
                            peers[index].address.name().to_owned()
                        } else {
                            texts[index].clone()
                        }
                    }
                    _ => text,
                };
                peers.push(peer(&text, settings));
                texts.push(text);
            }
            peers[0].settings.backup = false;
            peers
        })
    }

    /// The addresses the file gives back: written by their canonical names.
    fn canonical(peers: &[StatePeer]) -> Vec<StatePeer> {
        peers.iter().map(|p| peer(p.address.name(), p.settings)).collect()
    }

    fn check_error(error: &StateFileError, text: &[u8]) {
        let lines = text.iter().filter(|&&b| b == b'\n').count() + 1;
        assert!((1..=lines).contains(&error.line), "{error} of {lines} lines");
        let message = error.to_string();
        assert!(!message.contains('\n') && message.len() <= 700, "{message}");
    }

    proptest! {
        #[test]
        fn round_trips(upstream in any::<String>(), peers in valid_peers()) {
            let text = format(&upstream, &peers);
            prop_assert!(text.ends_with('\n'));
            prop_assert_eq!(text.lines().count(), peers.len() + 1);
            let parsed = parse(text.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&parsed, &canonical(&peers));
            // The same peers always give the same bytes.
            prop_assert_eq!(format(&upstream, &parsed), text);
        }

        /// A cut in the middle of a line is always noticed; a cut at a line boundary leaves
        /// a shorter valid file (or no server, or no primary one), which is why the module must
        /// replace the file atomically.
        #[test]
        fn cuts_are_noticed_unless_at_a_line_end(
            peers in valid_peers(),
            cut in any::<prop::sample::Index>(),
        ) {
            let text = format("u", &peers);
            let cut = cut.index(text.len());
            let prefix = &text.as_bytes()[..cut];
            match parse(prefix) {
                Ok(parsed) => {
                    prop_assert!(prefix.ends_with(b"\n"));
                    prop_assert_eq!(&parsed[..], &canonical(&peers)[..parsed.len()]);
                }
                Err(e) => {
                    check_error(&e, prefix);
                    let at_line_end = cut == 0 || prefix.ends_with(b"\n");
                    prop_assert_eq!(
                        e.reason.starts_with("no newline at the end of the file"),
                        !at_line_end,
                        "{}", e
                    );
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(text in prop::collection::vec(any::<u8>(), 0..400)) {
            if let Err(e) = parse(&text) {
                check_error(&e, &text);
            }
        }

        /// Lines made of the words of state files reach every branch of the line parser.
        #[test]
        fn state_file_like_text_never_panics(
            words in prop::collection::vec(
                prop::sample::select(vec![
                    "server", " ", "\t", "\r", "\n", ";", "#", "=", "1.2.3.4:80", "[::1]:80",
                    "unix:/a", "weight", "max_fails", "fail_timeout", "max_conns", "down",
                    "backup", "0", "7", "1000000", "4294967295", "4294967296", "s", "m", "h",
                    "\0", "example.com:80",
                ]),
                0..40,
            ),
        ) {
            let text = words.concat();
            match parse(text.as_bytes()) {
                Ok(peers) => {
                    prop_assert!(peers.iter().any(|p| !p.settings.backup));
                    prop_assert_eq!(parse(format("u", &peers).as_bytes()).ok(), Some(peers));
                }
                Err(e) => check_error(&e, text.as_bytes()),
            }
        }
    }
}
