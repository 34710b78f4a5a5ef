//! Which runtime changes each load balancer can take safely, per nginx generation.
//!
//! nginx < 1.27.3 ("legacy") has no peer reference counts and no configuration counter, and some
//! balancers keep per-worker tables built from the peers they saw once:
//! - `hash ... consistent` hashes the configured servers into points once, at configuration time:
//!   a peer added later is never chosen by its hash, and weights are never looked at again;
//! - `random` builds a per-worker table of peer pointers and cumulative weights on its first
//!   request: an added peer is outside the table, a removed one would be used after it is freed,
//!   and a new weight is never seen.
//!
//! nginx >= 1.27.3 ("modern") counts references to peers and has every balancer check a
//! configuration counter shared by the upstream's lists: consistent hash and random rebuild their
//! tables when it moves, so there they take every change (the module moves the counter for them).
//! Such nginx also marks the upstreams whose balancer allows peers to change
//! (`NGX_HTTP_UPSTREAM_MODIFY`); without that mark only in-place changes are made.
//!
//! A balancer this module cannot identify (`balancer_by_lua*`, third-party modules) may keep
//! anything: only the changes that alter no list and no weight are allowed there.

use std::fmt;

/// The balancer of an upstream, as the module identifies it from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancer {
    RoundRobin,
    LeastConn,
    Hash,
    ConsistentHash,
    IpHash,
    Random,
    /// `balancer_by_lua*` or a third-party balancer.
    Other,
}

impl Balancer {
    /// The directive that configures it, as operators know it.
    pub fn directive(self) -> &'static str {
        match self {
            Balancer::RoundRobin => "round robin",
            Balancer::LeastConn => "least_conn",
            Balancer::Hash => "hash",
            Balancer::ConsistentHash => "hash ... consistent",
            Balancer::IpHash => "ip_hash",
            Balancer::Random => "random",
            Balancer::Other => "balancer_by_lua or a third-party balancer",
        }
    }

    /// Does it accept `backup` peers? nginx's own `server ... backup` rule.
    pub fn supports_backup(self) -> bool {
        matches!(self, Balancer::RoundRobin | Balancer::LeastConn)
    }
}

/// A kind of runtime change, as far as balancers care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    AddPeer,
    RemovePeer,
    Weight,
    /// `down`, `max_fails`, `fail_timeout`, `max_conns`: fields every balancer reads live.
    InPlace,
}

impl Change {
    fn describe(self) -> &'static str {
        match self {
            Change::AddPeer => "add_peer",
            Change::RemovePeer => "remove_peer",
            Change::Weight => "changing the weight",
            Change::InPlace => "this change",
        }
    }
}

/// A change refused for a balancer, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub upstream: String,
    pub change: Change,
    pub balancer: Balancer,
    reason: &'static str,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not supported for upstream \"{}\": its balancer ({}) {}",
            self.change.describe(),
            self.upstream,
            self.balancer.directive(),
            self.reason
        )
    }
}

impl std::error::Error for Refused {}

/// Why a legacy-nginx balancer cannot take a change, or `None` when it can.
pub fn legacy_refusal(balancer: Balancer, change: Change) -> Option<&'static str> {
    use Balancer::*;
    use Change::*;
    match (balancer, change) {
        (_, InPlace) => None,
        (RoundRobin | LeastConn | Hash | IpHash, _) => None,
        (ConsistentHash, AddPeer) => {
            Some("hashes its servers once at startup and cannot see new peers on nginx < 1.27.3")
        }
        (ConsistentHash, Weight) => Some("ignores weight changes on nginx < 1.27.3"),
        (ConsistentHash, RemovePeer) => None,
        (Random, AddPeer) => Some("keeps a per-worker peer table and cannot see new peers on nginx < 1.27.3"),
        (Random, RemovePeer) => Some(
            "keeps per-worker pointers to its peers on nginx < 1.27.3; mark the peer down instead",
        ),
        (Random, Weight) => Some("keeps per-worker weight ranges and ignores weight changes on nginx < 1.27.3"),
        (Other, _) => Some("is unknown to this module, which cannot tell what it keeps; only down/up, max_fails, fail_timeout and max_conns can be changed"),
    }
}

/// Why a modern-nginx balancer cannot take a change, or `None` when it can. `modify` is whether
/// nginx marked the upstream as one whose peers may change (`NGX_HTTP_UPSTREAM_MODIFY`).
pub fn modern_refusal(balancer: Balancer, change: Change, modify: bool) -> Option<&'static str> {
    match (balancer, change) {
        (_, Change::InPlace) => None,
        (Balancer::Other, _) => legacy_refusal(balancer, change),
        (_, Change::Weight) => None,
        _ if !modify => Some(
            "does not allow its peers to change (nginx did not mark the upstream \
             NGX_HTTP_UPSTREAM_MODIFY)",
        ),
        _ => None,
    }
}

/// Does a change need the configuration counter moved on modern nginx, whatever the list sizes?
/// Consistent hash and random keep per-worker tables of peer pointers and weights, rebuilt only
/// when the counter moves.
pub fn rebuilds_tables(balancer: Balancer, change: Change) -> bool {
    matches!(balancer, Balancer::ConsistentHash | Balancer::Random) && change != Change::InPlace
}

/// Checks a change against the table of the nginx generation the module was built for: `modern`
/// is `None` on legacy nginx, else whether the upstream has `NGX_HTTP_UPSTREAM_MODIFY`.
pub fn check(
    upstream: &[u8],
    balancer: Balancer,
    change: Change,
    modern: Option<bool>,
) -> Result<(), Refused> {
    let refusal = match modern {
        None => legacy_refusal(balancer, change),
        Some(modify) => modern_refusal(balancer, change, modify),
    };
    match refusal {
        None => Ok(()),
        Some(reason) => Err(Refused {
            upstream: crate::target::echo(upstream).to_string(),
            change,
            balancer,
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Balancer; 7] = [
        Balancer::RoundRobin,
        Balancer::LeastConn,
        Balancer::Hash,
        Balancer::ConsistentHash,
        Balancer::IpHash,
        Balancer::Random,
        Balancer::Other,
    ];

    #[test]
    fn in_place_changes_are_safe_everywhere() {
        for b in ALL {
            assert_eq!(legacy_refusal(b, Change::InPlace), None, "{b:?}");
        }
    }

    #[test]
    fn list_balancers_take_every_change() {
        for b in [Balancer::RoundRobin, Balancer::LeastConn, Balancer::Hash, Balancer::IpHash] {
            for c in [Change::AddPeer, Change::RemovePeer, Change::Weight] {
                assert!(check(b"u", b, c, None).is_ok(), "{b:?} {c:?}");
            }
        }
    }

    #[test]
    fn table_balancers_refuse_what_they_cannot_see() {
        assert!(check(b"u", Balancer::ConsistentHash, Change::AddPeer, None).is_err());
        assert!(check(b"u", Balancer::ConsistentHash, Change::Weight, None).is_err());
        assert!(check(b"u", Balancer::ConsistentHash, Change::RemovePeer, None).is_ok());
        for c in [Change::AddPeer, Change::RemovePeer, Change::Weight] {
            assert!(check(b"u", Balancer::Random, c, None).is_err());
            assert!(check(b"u", Balancer::Other, c, None).is_err());
        }
    }

    #[test]
    fn refusal_names_the_call_the_upstream_and_the_balancer() {
        let err = check(b"pool", Balancer::Random, Change::AddPeer, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "add_peer is not supported for upstream \"pool\": its balancer (random) keeps a \
             per-worker peer table and cannot see new peers on nginx < 1.27.3"
        );
    }

    #[test]
    fn modern_nginx_lets_table_balancers_take_every_change() {
        for b in ALL.into_iter().filter(|&b| b != Balancer::Other) {
            for c in [Change::AddPeer, Change::RemovePeer, Change::Weight, Change::InPlace] {
                assert!(check(b"u", b, c, Some(true)).is_ok(), "{b:?} {c:?}");
            }
        }
        for c in [Change::AddPeer, Change::RemovePeer, Change::Weight] {
            assert!(check(b"u", Balancer::Other, c, Some(true)).is_err(), "{c:?}");
        }
    }

    #[test]
    fn modern_nginx_without_modify_takes_only_in_place_and_weight_changes() {
        for b in ALL {
            assert!(check(b"u", b, Change::InPlace, Some(false)).is_ok());
            for c in [Change::AddPeer, Change::RemovePeer] {
                let err = check(b"u", b, c, Some(false)).unwrap_err();
                if b != Balancer::Other {
                    assert!(err.to_string().contains("NGX_HTTP_UPSTREAM_MODIFY"), "{err}");
                }
            }
        }
    }

    #[test]
    fn only_table_balancers_need_the_counter_for_every_change() {
        for b in ALL {
            for c in [Change::AddPeer, Change::RemovePeer, Change::Weight] {
                let table = matches!(b, Balancer::ConsistentHash | Balancer::Random);
                assert_eq!(rebuilds_tables(b, c), table, "{b:?} {c:?}");
            }
            assert!(!rebuilds_tables(b, Change::InPlace));
        }
    }

    #[test]
    fn only_round_robin_and_least_conn_take_backup_peers() {
        let with_backup: Vec<_> = ALL.into_iter().filter(|b| b.supports_backup()).collect();
        assert_eq!(with_backup, [Balancer::RoundRobin, Balancer::LeastConn]);
    }
}
