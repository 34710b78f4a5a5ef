//! Errors of the calls that change peers, with the exact texts returned to Lua.

use std::fmt;

use crate::balancer::Balancer;

/// Why a peer change was not made. A refused change leaves the upstream exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    Exists {
        peer: String,
        upstream: String,
    },
    NotFound {
        peer: String,
        upstream: String,
    },
    LastPrimary {
        upstream: String,
    },
    NoMemory {
        zone: String,
    },
    /// The upstream holds as many peers (both lists together) as its per-request bookkeeping and
    /// index were sized for at startup.
    Full {
        upstream: String,
        capacity: usize,
    },
    BackupUnsupported {
        upstream: String,
        balancer: Balancer,
    },
    /// The peer was made by nginx's resolver from a `server ... resolve` line (nginx >= 1.27.3),
    /// which adds and removes such peers as DNS answers change.
    ResolverOwned {
        peer: String,
        upstream: String,
    },
    /// This worker is shutting down (reload or stop): its zone is about to be dropped, so a change
    /// made here would be lost.
    Exiting,
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::Exists { peer, upstream } => {
                write!(f, "peer \"{peer}\" already exists in upstream \"{upstream}\"")
            }
            ChangeError::NotFound { peer, upstream } => {
                write!(f, "peer \"{peer}\" not found in upstream \"{upstream}\"")
            }
            ChangeError::LastPrimary { upstream } => write!(
                f,
                "cannot remove the last primary peer of upstream \"{upstream}\" \
                 (mark it down instead)"
            ),
            ChangeError::NoMemory { zone } => write!(f, "no memory in upstream zone \"{zone}\""),
            ChangeError::Full { upstream, capacity } => write!(
                f,
                "upstream \"{upstream}\" is full: it can hold {capacity} peers \
                 (a larger zone gives more room)"
            ),
            ChangeError::BackupUnsupported { upstream, balancer } => write!(
                f,
                "backup peers are not supported for upstream \"{upstream}\": \
                 its balancer ({}) has no backup list",
                balancer.directive()
            ),
            ChangeError::ResolverOwned { peer, upstream } => write!(
                f,
                "peer \"{peer}\" of upstream \"{upstream}\" is managed by nginx's resolver \
                 (server ... resolve) and cannot be changed through ngx.dynamic"
            ),
            ChangeError::Exiting => f.write_str(
                "this nginx worker is shutting down (reload or stop): the change was not made",
            ),
        }
    }
}

impl std::error::Error for ChangeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        let s = |e: ChangeError| e.to_string();
        assert_eq!(
            s(ChangeError::Exists { peer: "1.2.3.4:80".into(), upstream: "x".into() }),
            "peer \"1.2.3.4:80\" already exists in upstream \"x\""
        );
        assert_eq!(
            s(ChangeError::NotFound { peer: "1.2.3.4:80".into(), upstream: "x".into() }),
            "peer \"1.2.3.4:80\" not found in upstream \"x\""
        );
        assert_eq!(
            s(ChangeError::LastPrimary { upstream: "x".into() }),
            "cannot remove the last primary peer of upstream \"x\" (mark it down instead)"
        );
        assert_eq!(
            s(ChangeError::NoMemory { zone: "z".into() }),
            "no memory in upstream zone \"z\""
        );
        assert_eq!(
            s(ChangeError::ResolverOwned { peer: "127.0.0.2:80".into(), upstream: "x".into() }),
            "peer \"127.0.0.2:80\" of upstream \"x\" is managed by nginx's resolver \
             (server ... resolve) and cannot be changed through ngx.dynamic"
        );
        assert!(s(ChangeError::Full { upstream: "x".into(), capacity: 128 }).contains("128 peers"));
        assert!(s(ChangeError::BackupUnsupported {
            upstream: "x".into(),
            balancer: Balancer::IpHash
        })
        .contains("(ip_hash)"));
    }
}
