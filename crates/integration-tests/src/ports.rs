//! Loopback ports for nginx to listen on.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};

/// Returns `n` distinct ports that were free on 127.0.0.1 a moment ago and that this process has
/// never handed out before, so parallel tests in one process never share a port. Another
/// process (cargo-nextest runs tests in several) may still take one before nginx binds it:
/// [`crate::Config::start`] retries with new ports when nginx reports "Address already in use".
/// Also useful as the address of a peer that refuses connections.
pub fn free_ports(n: usize) -> Vec<u16> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    // The listeners stay bound until all `n` are chosen, so the kernel cannot repeat one.
    let mut listeners = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..1000 {
        if ports.len() == n {
            break;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port");
        let port = listener.local_addr().expect("local address of a bound listener").port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    assert_eq!(ports.len(), n, "could not find {n} free loopback ports");
    ports
}
