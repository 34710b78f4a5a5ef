//! How the `target` argument of every Lua function names an upstream.
//!
//! A target is either the name of an `upstream {}` block or the name given to its `zone`
//! (the original module's meaning). The upstream name wins when both could apply, so it always
//! works, even for an upstream whose zone is shared with others. A zone name that several
//! upstreams share is ambiguous and the error lists them.

use std::fmt;

/// One `upstream {}` block as the module sees it in the running configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream<'a> {
    pub name: &'a [u8],
    /// The `zone` name, or `None` for an upstream without a zone (not managed).
    pub zone: Option<&'a [u8]>,
}

/// Why a target names no manageable upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// Neither an upstream nor a zone has that name.
    Unknown(Vec<u8>),
    /// The upstream exists but has no `zone`, so its peers are per worker and cannot be managed.
    NoZone(Vec<u8>),
    /// Several upstreams share the zone; the caller must name one of them.
    SharedZone { zone: Vec<u8>, upstreams: Vec<Vec<u8>> },
}

/// Longest part of a caller's string echoed back in an error message.
const MAX_ECHO: usize = 128;

/// Writes a caller-supplied name for an error message: lossy UTF-8, cut at 128 bytes so
/// that a huge argument cannot produce a huge error.
pub fn echo(name: &[u8]) -> impl fmt::Display + '_ {
    struct Echo<'a>(&'a [u8]);
    impl fmt::Display for Echo<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if self.0.len() > MAX_ECHO {
                write!(f, "{}...", String::from_utf8_lossy(&self.0[..MAX_ECHO]))
            } else {
                f.write_str(&String::from_utf8_lossy(self.0))
            }
        }
    }
    Echo(name)
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::Unknown(name) => write!(f, "no upstream zone \"{}\"", echo(name)),
            TargetError::NoZone(name) => write!(f, "upstream \"{}\" has no zone", echo(name)),
            TargetError::SharedZone { zone, upstreams } => {
                write!(f, "zone \"{}\" is shared by upstreams ", echo(zone))?;
                for (i, name) in upstreams.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{}", echo(name))?;
                }
                f.write_str(": name the upstream")
            }
        }
    }
}

impl std::error::Error for TargetError {}

/// Finds the upstream a target names: its index in `upstreams` (any cloneable sequence, so the
/// caller need not collect the configuration into a vector on every call).
pub fn resolve<'a>(
    upstreams: impl IntoIterator<Item = Upstream<'a>, IntoIter: Clone>,
    target: &[u8],
) -> Result<usize, TargetError> {
    let upstreams = upstreams.into_iter();
    if let Some((i, u)) = upstreams.clone().enumerate().find(|(_, u)| u.name == target) {
        return match u.zone {
            Some(_) => Ok(i),
            None => Err(TargetError::NoZone(target.to_vec())),
        };
    }

    let mut sharing = upstreams.clone().enumerate().filter(|(_, u)| u.zone == Some(target));
    match (sharing.next(), sharing.next()) {
        (None, _) => Err(TargetError::Unknown(target.to_vec())),
        (Some((i, _)), None) => Ok(i),
        (Some(_), Some(_)) => Err(TargetError::SharedZone {
            zone: target.to_vec(),
            upstreams: upstreams
                .filter(|u| u.zone == Some(target))
                .map(|u| u.name.to_vec())
                .collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups<'a>(name: &'a str, zone: Option<&'a str>) -> Upstream<'a> {
        Upstream { name: name.as_bytes(), zone: zone.map(str::as_bytes) }
    }

    fn config() -> Vec<Upstream<'static>> {
        vec![
            ups("foo", Some("dynamic_foo")),
            ups("a", Some("shared")),
            ups("b", Some("shared")),
            ups("plain", None),
            ups("same", Some("same")),
            // An upstream named like another upstream's zone.
            ups("dynamic_bar", Some("z1")),
            ups("bar", Some("dynamic_bar")),
        ]
    }

    #[test]
    fn zone_name_finds_its_only_upstream() {
        assert_eq!(resolve(config(), b"dynamic_foo"), Ok(0));
    }

    #[test]
    fn upstream_name_finds_the_upstream() {
        assert_eq!(resolve(config(), b"foo"), Ok(0));
        assert_eq!(resolve(config(), b"a"), Ok(1));
        assert_eq!(resolve(config(), b"b"), Ok(2));
        assert_eq!(resolve(config(), b"same"), Ok(4));
    }

    #[test]
    fn upstream_name_wins_over_a_zone_of_the_same_name() {
        assert_eq!(resolve(config(), b"dynamic_bar"), Ok(5));
    }

    #[test]
    fn shared_zone_is_ambiguous_and_lists_the_upstreams() {
        let err = resolve(config(), b"shared").unwrap_err();
        assert_eq!(
            err.to_string(),
            "zone \"shared\" is shared by upstreams a, b: name the upstream"
        );
    }

    #[test]
    fn upstream_without_zone_is_not_managed() {
        let err = resolve(config(), b"plain").unwrap_err();
        assert_eq!(err.to_string(), "upstream \"plain\" has no zone");
    }

    #[test]
    fn unknown_name() {
        let err = resolve(config(), b"nope").unwrap_err();
        assert_eq!(err.to_string(), "no upstream zone \"nope\"");
        assert_eq!(resolve([], b"").unwrap_err().to_string(), "no upstream zone \"\"");
    }

    #[test]
    fn huge_and_binary_names_are_echoed_short_and_safe() {
        let huge = vec![b'x'; 1 << 20];
        let msg = resolve(config(), &huge).unwrap_err().to_string();
        assert!(msg.len() < 200, "{} bytes", msg.len());
        assert!(msg.ends_with("...\""));

        let binary = b"\xff\x00z";
        let msg = resolve(config(), binary).unwrap_err().to_string();
        assert_eq!(msg, "no upstream zone \"\u{fffd}\u{0}z\"");
    }
}
