//! A tiny authoritative DNS server on loopback, for nginx's `resolver` to ask: a test decides
//! what each name resolves to, and changes it while nginx runs (`server name:port resolve;`
//! on nginx >= 1.27.3 then adds and removes peers).
//!
//! It speaks just enough of the wire format (RFC 1035) for nginx's resolver: one question per
//! query, `A` answers from the test's table, an empty `NOERROR` for every other type of a known
//! name (so `AAAA` has no addresses), `NXDOMAIN` for an unknown name, `NOTIMP` for other opcodes
//! and classes, `FORMERR` for a query it cannot parse. Answers are authoritative, with their
//! name compressed to a pointer to the question.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// DNS header length.
const HEADER: usize = 12;
/// The largest UDP message without EDNS (RFC 1035 4.2.1): longer answers are truncated (`TC`).
const MAX_UDP: usize = 512;
/// One `A` record after a compressed name: pointer 2, type 2, class 2, TTL 4, length 2, address 4.
const A_RECORD: usize = 16;
/// How often the server thread looks at the stop flag when no query arrives.
const POLL: Duration = Duration::from_millis(100);

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;

/// Response codes (RFC 1035 4.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rcode {
    NoError = 0,
    FormErr = 1,
    NxDomain = 3,
    NotImp = 4,
}

/// What a name resolves to.
#[derive(Clone, Debug)]
struct Record {
    addrs: Vec<Ipv4Addr>,
    ttl: u32,
}

#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    queries: AtomicU64,
    /// Lowercase names without a trailing dot.
    records: Mutex<HashMap<String, Record>>,
}

/// A DNS server on 127.0.0.1, on a UDP port of the kernel's choosing, answering from a table
/// the test changes at any time ([`Dns::set`], [`Dns::remove`]). Names are matched without
/// regard to case or a trailing dot. Stopped on drop.
///
/// ```no_run
/// # use std::net::Ipv4Addr;
/// let dns = integration_tests::Dns::start();
/// dns.set("backends.test", &[Ipv4Addr::new(127, 0, 0, 2)], 1);
/// let resolver = format!("resolver 127.0.0.1:{} valid=1s ipv6=off;", dns.port());
/// ```
pub struct Dns {
    port: u16,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
}

impl Dns {
    /// Starts a server that knows no names yet.
    pub fn start() -> Dns {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a DNS socket");
        let port = socket.local_addr().expect("DNS socket address").port();
        socket.set_read_timeout(Some(POLL)).expect("set the DNS socket's read timeout");
        let shared = Arc::new(Shared::default());
        let server = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("dns-{port}"))
                .spawn(move || serve(&socket, &shared))
                .expect("spawn the DNS server thread")
        };
        Dns { port, shared, server: Some(server) }
    }

    /// The UDP port it answers on, at 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, as written after `resolver`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// From the next query on, `name` resolves to `addrs` (in this order) with this TTL in
    /// seconds. No addresses is an empty `NOERROR` answer: the name exists, with no `A` record.
    pub fn set(&self, name: &str, addrs: &[Ipv4Addr], ttl_secs: u32) {
        let record = Record { addrs: addrs.to_vec(), ttl: ttl_secs };
        self.records().insert(normalize(name), record);
    }

    /// From the next query on, `name` is unknown (`NXDOMAIN`).
    pub fn remove(&self, name: &str) {
        self.records().remove(&normalize(name));
    }

    /// Queries answered so far, whatever the answer.
    pub fn queries(&self) -> u64 {
        self.shared.queries.load(Ordering::SeqCst)
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.shared.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking receive at once (it would also give up within POLL).
        if let Ok(socket) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) {
            let _ = socket.send_to(&[], (Ipv4Addr::LOCALHOST, self.port));
        }
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn serve(socket: &UdpSocket, shared: &Shared) {
    let mut buf = [0u8; 4096];
    while !shared.stopping.load(Ordering::SeqCst) {
        let (len, from): (usize, SocketAddr) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            // E.g. ECONNREFUSED from an earlier answer's ICMP: that client only.
            Err(_) => continue,
        };
        let response = {
            let records = shared.records.lock().unwrap_or_else(PoisonError::into_inner);
            answer(&buf[..len], &records)
        };
        if let Some(response) = response {
            // Counted before it is sent, so that a client that has its answer sees it counted.
            shared.queries.fetch_add(1, Ordering::SeqCst);
            // A client that went away is no concern of the server's.
            let _ = socket.send_to(&response, from);
        }
    }
}

/// The question of a query: its name (lowercase, dot-separated), type and class, and where
/// the question ends in the message.
#[derive(Debug, PartialEq, Eq)]
struct Question {
    name: String,
    qtype: u16,
    qclass: u16,
    end: usize,
}

fn read_u16(message: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*message.get(at)?, *message.get(at + 1)?]))
}

/// Parses the one question after the header; `None` if it is malformed (a compression pointer,
/// which no query needs, counts as malformed).
fn parse_question(message: &[u8]) -> Option<Question> {
    let mut at = HEADER;
    let mut labels = Vec::new();
    let mut wire_len = 1;
    loop {
        let len = usize::from(*message.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        wire_len += len + 1;
        if wire_len > 255 {
            return None;
        }
        let label = message.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    let qtype = read_u16(message, at)?;
    let qclass = read_u16(message, at + 2)?;
    Some(Question { name: labels.join("."), qtype, qclass, end: at + 4 })
}

/// The response to `query`, or `None` for a message that gets none (a response, or too short
/// to have an ID).
fn answer(query: &[u8], records: &HashMap<String, Record>) -> Option<Vec<u8>> {
    let header = query.get(..HEADER)?;
    let flags = read_u16(header, 2)?;
    if flags & 0x8000 != 0 {
        return None;
    }
    let opcode = (flags >> 11) & 0xF;
    let recursion_desired = flags & 0x0100;
    let qdcount = read_u16(header, 4)?;
    let question = if qdcount == 1 { parse_question(query) } else { None };
    let (rcode, question_bytes, addrs, ttl) = match question {
        _ if opcode != 0 => (Rcode::NotImp, None, Vec::new(), 0),
        None => (Rcode::FormErr, None, Vec::new(), 0),
        Some(q) => {
            let bytes = Some(&query[HEADER..q.end]);
            match records.get(&q.name) {
                _ if q.qclass != CLASS_IN => (Rcode::NotImp, bytes, Vec::new(), 0),
                None => (Rcode::NxDomain, bytes, Vec::new(), 0),
                Some(record) if q.qtype == TYPE_A => {
                    (Rcode::NoError, bytes, record.addrs.clone(), record.ttl)
                }
                Some(_) => (Rcode::NoError, bytes, Vec::new(), 0),
            }
        }
    };
    let question_len = question_bytes.map_or(0, <[u8]>::len);
    let room = (MAX_UDP - HEADER - question_len) / A_RECORD;
    let truncated = addrs.len() > room;
    let addrs = &addrs[..addrs.len().min(room)];

    let mut response = Vec::with_capacity(HEADER + question_len + addrs.len() * A_RECORD);
    response.extend_from_slice(&header[..2]);
    // QR, AA, RD as asked, TC when answers were cut, the opcode echoed.
    let flags =
        0x8000 | (opcode << 11) | 0x0400 | recursion_desired | if truncated { 0x0200 } else { 0 };
    response.extend_from_slice(&(flags | rcode as u16).to_be_bytes());
    let counts = [
        u16::from(question_bytes.is_some()),
        u16::try_from(addrs.len()).expect("at most 31 answers fit"),
        0,
        0,
    ];
    for count in counts {
        response.extend_from_slice(&count.to_be_bytes());
    }
    if let Some(bytes) = question_bytes {
        response.extend_from_slice(bytes);
    }
    for addr in addrs {
        // The name is a pointer to the question's, at offset 12.
        response.extend_from_slice(&[0xC0, 0x0C]);
        response.extend_from_slice(&TYPE_A.to_be_bytes());
        response.extend_from_slice(&CLASS_IN.to_be_bytes());
        response.extend_from_slice(&ttl.to_be_bytes());
        response.extend_from_slice(&4u16.to_be_bytes());
        response.extend_from_slice(&addr.octets());
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPE_AAAA: u16 = 28;
    const TYPE_MX: u16 = 15;

    /// A query with ID `id`, flags `flags` and one question, built by hand.
    fn query(id: u16, flags: u16, name: &str, qtype: u16, qclass: u16) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&flags.to_be_bytes());
        q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(u8::try_from(label.len()).expect("short label"));
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&qclass.to_be_bytes());
        q
    }

    /// A standard query (RD set, as nginx sends) for `name`.
    fn a_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        query(id, 0x0100, name, qtype, CLASS_IN)
    }

    /// Sends `message` to the server and returns its response; panics after 5 s without one.
    fn exchange(dns: &Dns, message: &[u8]) -> Vec<u8> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a client socket");
        socket.set_read_timeout(Some(Duration::from_secs(5))).expect("set read timeout");
        socket.connect((Ipv4Addr::LOCALHOST, dns.port())).expect("connect to the DNS server");
        socket.send(message).expect("send a query");
        let mut buf = [0u8; 1024];
        let len = socket.recv(&mut buf).expect("a response within 5 s");
        buf[..len].to_vec()
    }

    /// A response taken apart.
    #[derive(Debug, PartialEq, Eq)]
    struct Parsed {
        id: u16,
        flags: u16,
        rcode: u16,
        counts: [u16; 4],
        question: Vec<u8>,
        /// (TTL, address) of each answer, after checking its fixed fields.
        answers: Vec<(u32, Ipv4Addr)>,
    }

    fn parse(response: &[u8], question_len: usize) -> Parsed {
        let u16_at = |at: usize| u16::from_be_bytes([response[at], response[at + 1]]);
        let counts = [u16_at(4), u16_at(6), u16_at(8), u16_at(10)];
        let question = response[HEADER..HEADER + question_len].to_vec();
        let mut answers = Vec::new();
        let mut at = HEADER + question_len;
        for _ in 0..counts[1] {
            let record = &response[at..at + A_RECORD];
            assert_eq!(record[..6], [0xC0, 0x0C, 0, 1, 0, 1], "pointer, A, IN");
            let ttl = u32::from_be_bytes([record[6], record[7], record[8], record[9]]);
            assert_eq!(record[10..12], [0, 4]);
            answers.push((ttl, Ipv4Addr::new(record[12], record[13], record[14], record[15])));
            at += A_RECORD;
        }
        assert_eq!(at, response.len(), "nothing after the answers in {response:?}");
        Parsed {
            id: u16_at(0),
            flags: u16_at(2) & !0xF,
            rcode: u16_at(2) & 0xF,
            counts,
            question,
            answers,
        }
    }

    const ADDR_2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
    const ADDR_3: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

    #[test]
    fn answers_a_queries_from_the_table_and_follows_changes() {
        let dns = Dns::start();
        dns.set("backends.test", &[ADDR_2, ADDR_3], 7);
        let q = a_query(0x1234, "backends.test", TYPE_A);
        let question = q[HEADER..].to_vec();
        let parsed = parse(&exchange(&dns, &q), question.len());
        assert_eq!(
            parsed,
            Parsed {
                id: 0x1234,
                // QR, AA, RD.
                flags: 0x8500,
                rcode: 0,
                counts: [1, 2, 0, 0],
                question: question.clone(),
                answers: vec![(7, ADDR_2), (7, ADDR_3)],
            }
        );

        // Case and a trailing dot do not matter, either way round.
        dns.set("Backends.Test.", &[ADDR_3], 1);
        let q = a_query(7, "BACKENDS.test", TYPE_A);
        let parsed = parse(&exchange(&dns, &q), q.len() - HEADER);
        assert_eq!((parsed.rcode, parsed.answers), (0, vec![(1, ADDR_3)]), "after set");
        assert_eq!(parsed.question, q[HEADER..], "the question is echoed as asked");

        // Known but without addresses: NOERROR, no answers.
        dns.set("backends.test", &[], 1);
        let parsed = parse(&exchange(&dns, &a_query(8, "backends.test", TYPE_A)), q.len() - HEADER);
        assert_eq!((parsed.rcode, parsed.counts), (0, [1, 0, 0, 0]), "empty set");

        dns.remove("backends.test");
        let parsed = parse(&exchange(&dns, &a_query(9, "backends.test", TYPE_A)), q.len() - HEADER);
        assert_eq!((parsed.rcode, parsed.counts), (3, [1, 0, 0, 0]), "removed: NXDOMAIN");
        assert_eq!(dns.queries(), 4);
    }

    #[test]
    fn other_questions_get_the_answers_nginx_expects() {
        let dns = Dns::start();
        dns.set("a.test", &[ADDR_2], 5);
        let name_len = "a.test".len() + 2;
        // (what, query, expected rcode, expected counts)
        let cases: [(&str, Vec<u8>, u16, [u16; 4]); 6] = [
            ("AAAA of a known name", a_query(1, "a.test", TYPE_AAAA), 0, [1, 0, 0, 0]),
            ("MX of a known name", a_query(2, "a.test", TYPE_MX), 0, [1, 0, 0, 0]),
            ("A of an unknown name", a_query(3, "b.test", TYPE_A), 3, [1, 0, 0, 0]),
            ("AAAA of an unknown name", a_query(4, "b.test", TYPE_AAAA), 3, [1, 0, 0, 0]),
            ("class CH", query(5, 0x0100, "a.test", TYPE_A, 3), 4, [1, 0, 0, 0]),
            ("opcode STATUS", query(6, 0x0100 | (2 << 11), "a.test", TYPE_A, 1), 4, [0; 4]),
        ];
        for (i, (what, q, rcode, counts)) in cases.into_iter().enumerate() {
            let question_len = if counts[0] == 1 { name_len + 4 } else { 0 };
            let parsed = parse(&exchange(&dns, &q), question_len);
            let id = u16::try_from(i + 1).expect("few cases");
            assert_eq!((parsed.id, parsed.rcode, parsed.counts), (id, rcode, counts), "{what}");
            assert_eq!(parsed.question, q[HEADER..HEADER + question_len], "{what}");
        }
        assert_eq!(dns.queries(), 6);
    }

    #[test]
    fn malformed_queries_get_formerr_and_responses_get_nothing() {
        let dns = Dns::start();
        dns.set("a.test", &[ADDR_2], 5);
        let mut pointer = a_query(1, "a.test", TYPE_A);
        pointer.truncate(HEADER);
        pointer.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
        let mut cut = a_query(2, "a.test", TYPE_A);
        cut.truncate(cut.len() - 3);
        let mut two = a_query(3, "a.test", TYPE_A);
        two[5] = 2;
        for (what, q) in
            [("compression pointer", pointer), ("cut short", cut), ("two questions", two)]
        {
            let response = exchange(&dns, &q);
            let parsed = parse(&response, 0);
            assert_eq!(
                (parsed.id, parsed.rcode, parsed.counts),
                (u16::from_be_bytes([q[0], q[1]]), 1, [0; 4]),
                "{what}"
            );
        }
        // A response (QR set) and a runt are ignored: the next query is still answered.
        let records = HashMap::new();
        let mut response = a_query(4, "a.test", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(answer(&response, &records), None);
        assert_eq!(answer(&[1, 2, 3], &records), None);
        let q = a_query(5, "a.test", TYPE_A);
        assert_eq!(parse(&exchange(&dns, &q), q.len() - HEADER).answers, vec![(5, ADDR_2)]);
    }

    #[test]
    fn too_many_addresses_are_truncated_to_512_bytes() {
        let dns = Dns::start();
        let many: Vec<Ipv4Addr> = (1..=40).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
        dns.set("many.test", &many, 1);
        let q = a_query(1, "many.test", TYPE_A);
        let response = exchange(&dns, &q);
        assert!(response.len() <= MAX_UDP, "{} bytes", response.len());
        let parsed = parse(&response, q.len() - HEADER);
        assert_eq!(parsed.flags & 0x0200, 0x0200, "TC is set");
        let fit = (MAX_UDP - q.len()) / A_RECORD;
        assert_eq!(parsed.answers.len(), fit);
        assert_eq!(parsed.answers.iter().map(|a| a.1).collect::<Vec<_>>(), many[..fit]);
    }

    #[test]
    fn drop_stops_the_server() {
        let dns = Dns::start();
        let port = dns.port();
        drop(dns);
        // The port is free again: the socket was closed with its thread.
        UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).expect("the DNS port is free after drop");
    }
}
