//! The peer options of `add_peer` and `update_peer`: `weight`, `max_fails`, `fail_timeout`,
//! `max_conns`, `down` and `backup`.
//!
//! The Lua side checks option names (`unknown option "foo"`, against [`ADD_PEER_OPTIONS`] or
//! [`UPDATE_PEER_OPTIONS`]) and value types; this module checks the values. Lua numbers arrive as
//! `f64`, so a fraction, NaN or an infinity is as wrong as a value out of range, and all of them
//! get the same message: `<option> must be an integer from <min> to <max>`.
//!
//! The lower bounds are those of nginx's own `server` directive (`ngx_http_upstream_server`):
//! `weight` at least 1, the others at least 0. nginx's upper bounds are only those of its integer
//! types; here they are small enough that no arithmetic nginx does on them can overflow, even
//! with a 32-bit `ngx_int_t`, and still far beyond any useful setting:
//!
//! | option | range | why the upper bound |
//! |---|---|---|
//! | `weight` | 1..=1000000 | balancers add up the weights of all peers (`total_weight`, smooth round robin's `current_weight`): 2000 peers at the maximum still fit in 31 bits |
//! | `max_fails` | 0..=1000000 | more failures than that within `fail_timeout` never happen; 0 already means "never mark failed" |
//! | `fail_timeout` | 0..=31536000 (365 days, in seconds) | a longer one is the same as `down`; it fits a 32-bit `time_t` and is exact in Lua |
//! | `max_conns` | 0..=1000000 | beyond the connections one nginx holds; 0 already means "unlimited" |
//!
//! # Two sets of ranges
//!
//! [`PeerOptions::validate`] checks the ranges above, for new values coming from Lua.
//! [`PeerOptions::validate_configured`] checks nginx's own, for state files: the module writes
//! a state file from the peers in shared memory, and those include peers from `nginx.conf`,
//! where nginx accepts far more (`weight=1000001`, `fail_timeout=400d`). Whatever the module
//! writes it must read back at the next reload or restart, so a state file is held only to what
//! nginx itself accepts, as far as [`PeerSettings`] can hold it:
//!
//! | option | range in a state file |
//! |---|---|
//! | `weight` | 1..=4294967295 |
//! | `max_fails` | 0..=4294967295 |
//! | `fail_timeout` | 0..=4294967295 (seconds) |
//! | `max_conns` | 0..=4294967295 |
//!
//! Both report errors in the same shape, e.g. `weight must be an integer from 1 to 4294967295`.

use std::fmt;
use std::ops::RangeInclusive;

/// The options `add_peer` accepts, in the order they are validated.
pub const ADD_PEER_OPTIONS: [&str; 6] =
    ["weight", "max_fails", "fail_timeout", "max_conns", "down", "backup"];

/// The options `update_peer` accepts: all but `backup`, because moving a peer between the
/// primary and the backup list is a remove and an add, not an in-place change.
pub const UPDATE_PEER_OPTIONS: [&str; 5] =
    ["weight", "max_fails", "fail_timeout", "max_conns", "down"];

/// The range of each numeric option, in the order of [`ADD_PEER_OPTIONS`].
struct Ranges {
    weight: RangeInclusive<u32>,
    max_fails: RangeInclusive<u32>,
    fail_timeout: RangeInclusive<u32>,
    max_conns: RangeInclusive<u32>,
}

/// The Lua API's ranges (see the module documentation).
const API: Ranges = Ranges {
    weight: 1..=1_000_000,
    max_fails: 0..=1_000_000,
    fail_timeout: 0..=365 * 24 * 60 * 60,
    max_conns: 0..=1_000_000,
};

/// nginx's configuration ranges, for state files (see the module documentation).
const CONFIGURED: Ranges = Ranges {
    weight: 1..=u32::MAX,
    max_fails: 0..=u32::MAX,
    fail_timeout: 0..=u32::MAX,
    max_conns: 0..=u32::MAX,
};

/// Peer options as they come from Lua: `None` for an option not given.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PeerOptions {
    pub weight: Option<f64>,
    pub max_fails: Option<f64>,
    /// Seconds.
    pub fail_timeout: Option<f64>,
    pub max_conns: Option<f64>,
    pub down: Option<bool>,
    /// Only for `add_peer` (see [`UPDATE_PEER_OPTIONS`]).
    pub backup: Option<bool>,
}

impl PeerOptions {
    /// Checks every given value against the Lua API's ranges, in the order of
    /// [`ADD_PEER_OPTIONS`], and reports the first invalid one.
    pub fn validate(&self) -> Result<ValidOptions, OptionError> {
        self.validate_within(&API)
    }

    /// As [`validate`](Self::validate), but against nginx's configuration ranges: for values read
    /// from a state file, which may hold anything nginx accepted in `nginx.conf` (see the module
    /// documentation).
    pub fn validate_configured(&self) -> Result<ValidOptions, OptionError> {
        self.validate_within(&CONFIGURED)
    }

    fn validate_within(&self, ranges: &Ranges) -> Result<ValidOptions, OptionError> {
        Ok(ValidOptions {
            weight: check("weight", self.weight, &ranges.weight)?,
            max_fails: check("max_fails", self.max_fails, &ranges.max_fails)?,
            fail_timeout: check("fail_timeout", self.fail_timeout, &ranges.fail_timeout)?,
            max_conns: check("max_conns", self.max_conns, &ranges.max_conns)?,
            down: self.down,
            backup: self.backup,
        })
    }
}

fn check(
    option: &'static str,
    value: Option<f64>,
    range: &RangeInclusive<u32>,
) -> Result<Option<u32>, OptionError> {
    let Some(value) = value else { return Ok(None) };
    // NaN and the infinities have no zero fraction; -0.0 is 0.
    if value.fract() == 0.0
        && value >= f64::from(*range.start())
        && value <= f64::from(*range.end())
    {
        // Exact: an integral value within a u32 range.
        Ok(Some(value as u32))
    } else {
        Err(OptionError { option, range: range.clone() })
    }
}

/// Validated peer options, still `None` where not given: `update_peer` changes only those given,
/// `add_peer` takes [`with_defaults`](Self::with_defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidOptions {
    weight: Option<u32>,
    max_fails: Option<u32>,
    fail_timeout: Option<u32>,
    max_conns: Option<u32>,
    down: Option<bool>,
    backup: Option<bool>,
}

impl ValidOptions {
    pub fn weight(&self) -> Option<u32> {
        self.weight
    }

    pub fn max_fails(&self) -> Option<u32> {
        self.max_fails
    }

    /// Seconds.
    pub fn fail_timeout(&self) -> Option<u32> {
        self.fail_timeout
    }

    pub fn max_conns(&self) -> Option<u32> {
        self.max_conns
    }

    pub fn down(&self) -> Option<bool> {
        self.down
    }

    pub fn backup(&self) -> Option<bool> {
        self.backup
    }

    /// The settings of a new peer: the given options, and [`PeerSettings::default`] for the rest.
    pub fn with_defaults(&self) -> PeerSettings {
        let default = PeerSettings::default();
        PeerSettings {
            weight: self.weight.unwrap_or(default.weight),
            max_fails: self.max_fails.unwrap_or(default.max_fails),
            fail_timeout: self.fail_timeout.unwrap_or(default.fail_timeout),
            max_conns: self.max_conns.unwrap_or(default.max_conns),
            down: self.down.unwrap_or(default.down),
            backup: self.backup.unwrap_or(default.backup),
        }
    }
}

/// Every setting of a peer. Those from [`PeerOptions::validate`] are within the Lua API's ranges;
/// a peer configured in `nginx.conf` or read from a state file may have any value of nginx's
/// configuration ranges, so code using these must not assume the smaller ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSettings {
    pub weight: u32,
    pub max_fails: u32,
    /// Seconds.
    pub fail_timeout: u32,
    /// 0 is unlimited.
    pub max_conns: u32,
    pub down: bool,
    pub backup: bool,
}

impl Default for PeerSettings {
    /// nginx's defaults for a `server` line without parameters, so that a peer added with no
    /// options behaves like one configured with none.
    fn default() -> Self {
        PeerSettings {
            weight: 1,
            max_fails: 1,
            fail_timeout: 10,
            max_conns: 0,
            down: false,
            backup: false,
        }
    }
}

/// An option value out of range or not an integer. `Display` gives the exact text returned to
/// Lua, e.g. `weight must be an integer from 1 to 1000000` (or, for a state file, `... from 1 to
/// 4294967295`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    option: &'static str,
    range: RangeInclusive<u32>,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (option, min, max) = (self.option, self.range.start(), self.range.end());
        write!(f, "{option} must be an integer from {min} to {max}")
    }
}

impl std::error::Error for OptionError {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn error(options: PeerOptions) -> String {
        options.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_nginx_defaults() {
        let settings = PeerOptions::default().validate().unwrap().with_defaults();
        assert_eq!(
            settings,
            PeerSettings {
                weight: 1,
                max_fails: 1,
                fail_timeout: 10,
                max_conns: 0,
                down: false,
                backup: false,
            }
        );
        assert_eq!(settings, PeerSettings::default());
    }

    #[test]
    fn given_options_override_defaults() {
        let options = PeerOptions {
            weight: Some(5.0),
            max_fails: Some(0.0),
            fail_timeout: Some(30.0),
            max_conns: Some(100.0),
            down: Some(true),
            backup: Some(true),
        };
        let valid = options.validate().unwrap();
        assert_eq!(valid.weight(), Some(5));
        assert_eq!(valid.max_fails(), Some(0));
        assert_eq!(valid.fail_timeout(), Some(30));
        assert_eq!(valid.max_conns(), Some(100));
        assert_eq!(valid.down(), Some(true));
        assert_eq!(valid.backup(), Some(true));
        assert_eq!(
            valid.with_defaults(),
            PeerSettings {
                weight: 5,
                max_fails: 0,
                fail_timeout: 30,
                max_conns: 100,
                down: true,
                backup: true,
            }
        );
    }

    #[test]
    fn options_not_given_stay_unset() {
        let valid = PeerOptions { max_conns: Some(7.0), ..Default::default() }.validate().unwrap();
        assert_eq!(valid.max_conns(), Some(7));
        assert_eq!(
            (valid.weight(), valid.max_fails(), valid.fail_timeout(), valid.down(), valid.backup()),
            (None, None, None, None, None)
        );
        assert_eq!(valid.with_defaults(), PeerSettings { max_conns: 7, ..PeerSettings::default() });
    }

    #[test]
    fn bounds_are_inclusive() {
        let lowest = PeerOptions {
            weight: Some(1.0),
            max_fails: Some(0.0),
            fail_timeout: Some(0.0),
            max_conns: Some(-0.0),
            ..Default::default()
        };
        let valid = lowest.validate().unwrap();
        assert_eq!(
            (valid.weight(), valid.max_fails(), valid.fail_timeout(), valid.max_conns()),
            (Some(1), Some(0), Some(0), Some(0))
        );

        let highest = PeerOptions {
            weight: Some(1e6),
            max_fails: Some(1e6),
            fail_timeout: Some(31_536_000.0),
            max_conns: Some(1e6),
            ..Default::default()
        };
        let valid = highest.validate().unwrap();
        assert_eq!(
            (valid.weight(), valid.max_fails(), valid.fail_timeout(), valid.max_conns()),
            (Some(1_000_000), Some(1_000_000), Some(31_536_000), Some(1_000_000))
        );
    }

    #[test]
    fn refuses_with_exact_messages() {
        const WEIGHT: &str = "weight must be an integer from 1 to 1000000";
        const MAX_FAILS: &str = "max_fails must be an integer from 0 to 1000000";
        const FAIL_TIMEOUT: &str = "fail_timeout must be an integer from 0 to 31536000";
        const MAX_CONNS: &str = "max_conns must be an integer from 0 to 1000000";
        let bad = [
            -1.0,
            1.5,
            -0.5,
            0.000_000_1,
            1e300,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN,
        ];
        for value in bad {
            let v = Some(value);
            assert_eq!(error(PeerOptions { weight: v, ..Default::default() }), WEIGHT, "{value}");
            assert_eq!(error(PeerOptions { max_fails: v, ..Default::default() }), MAX_FAILS);
            assert_eq!(error(PeerOptions { fail_timeout: v, ..Default::default() }), FAIL_TIMEOUT);
            assert_eq!(error(PeerOptions { max_conns: v, ..Default::default() }), MAX_CONNS);
        }
        // Each just past its range.
        for weight in [0.0, -0.0, 1_000_001.0, 1_000_000.5] {
            assert_eq!(error(PeerOptions { weight: Some(weight), ..Default::default() }), WEIGHT);
        }
        let just_past = PeerOptions { max_fails: Some(1_000_001.0), ..Default::default() };
        assert_eq!(error(just_past), MAX_FAILS);
        let just_past = PeerOptions { fail_timeout: Some(31_536_001.0), ..Default::default() };
        assert_eq!(error(just_past), FAIL_TIMEOUT);
        let just_past = PeerOptions { max_conns: Some(1_000_001.0), ..Default::default() };
        assert_eq!(error(just_past), MAX_CONNS);
    }

    #[test]
    fn first_invalid_option_in_name_order_is_reported() {
        let all_bad = PeerOptions {
            weight: Some(0.0),
            max_fails: Some(-1.0),
            fail_timeout: Some(-1.0),
            max_conns: Some(-1.0),
            ..Default::default()
        };
        assert_eq!(error(all_bad), "weight must be an integer from 1 to 1000000");
        let later_bad = PeerOptions { weight: None, ..all_bad };
        assert_eq!(error(later_bad), "max_fails must be an integer from 0 to 1000000");
        let last_bad = PeerOptions { fail_timeout: Some(1.0), max_fails: None, ..later_bad };
        assert_eq!(error(last_bad), "max_conns must be an integer from 0 to 1000000");
    }

    #[test]
    fn option_names() {
        assert_eq!(ADD_PEER_OPTIONS[..5], UPDATE_PEER_OPTIONS);
        assert_eq!(ADD_PEER_OPTIONS[5], "backup");
        // Every numeric option's error names it the way the Lua caller spells it.
        let named = |options: PeerOptions| error(options).split(' ').next().unwrap().to_owned();
        let bad = Some(f64::NAN);
        assert_eq!(
            [
                named(PeerOptions { weight: bad, ..Default::default() }),
                named(PeerOptions { max_fails: bad, ..Default::default() }),
                named(PeerOptions { fail_timeout: bad, ..Default::default() }),
                named(PeerOptions { max_conns: bad, ..Default::default() }),
            ],
            ADD_PEER_OPTIONS[..4]
        );
    }

    fn configured_error(options: PeerOptions) -> String {
        options.validate_configured().unwrap_err().to_string()
    }

    /// State files take all that nginx's configuration takes, up to `u32::MAX`.
    #[test]
    fn configured_ranges_reach_u32_max() {
        let max = f64::from(u32::MAX);
        let highest = PeerOptions {
            weight: Some(max),
            max_fails: Some(max),
            fail_timeout: Some(max),
            max_conns: Some(max),
            down: Some(true),
            backup: Some(false),
        };
        let valid = highest.validate_configured().unwrap();
        assert_eq!(
            valid.with_defaults(),
            PeerSettings {
                weight: u32::MAX,
                max_fails: u32::MAX,
                fail_timeout: u32::MAX,
                max_conns: u32::MAX,
                down: true,
                backup: false,
            }
        );
        // Values nginx accepts in nginx.conf but the Lua API refuses (400d is 34560000s).
        let configured = PeerOptions {
            weight: Some(1_000_001.0),
            max_fails: Some(2_000_000.0),
            fail_timeout: Some(34_560_000.0),
            max_conns: Some(2_000_000.0),
            ..Default::default()
        };
        assert_eq!(error(configured), "weight must be an integer from 1 to 1000000");
        let valid = configured.validate_configured().unwrap();
        assert_eq!(
            (valid.weight(), valid.max_fails(), valid.fail_timeout(), valid.max_conns()),
            (Some(1_000_001), Some(2_000_000), Some(34_560_000), Some(2_000_000))
        );
        let lowest = PeerOptions {
            weight: Some(1.0),
            max_fails: Some(0.0),
            fail_timeout: Some(-0.0),
            max_conns: Some(0.0),
            ..Default::default()
        };
        assert_eq!(lowest.validate_configured(), lowest.validate());
        assert_eq!(
            PeerOptions::default().validate_configured().unwrap().with_defaults(),
            PeerSettings::default()
        );
    }

    #[test]
    fn configured_ranges_refuse_with_exact_messages() {
        const WEIGHT: &str = "weight must be an integer from 1 to 4294967295";
        const MAX_FAILS: &str = "max_fails must be an integer from 0 to 4294967295";
        const FAIL_TIMEOUT: &str = "fail_timeout must be an integer from 0 to 4294967295";
        const MAX_CONNS: &str = "max_conns must be an integer from 0 to 4294967295";
        let past = f64::from(u32::MAX) + 1.0;
        for value in [-1.0, 1.5, past, f64::from(u32::MAX) - 0.5, 1e300, f64::NAN, f64::INFINITY] {
            let v = Some(value);
            let weight = PeerOptions { weight: v, ..Default::default() };
            assert_eq!(configured_error(weight), WEIGHT, "{value}");
            let max_fails = PeerOptions { max_fails: v, ..Default::default() };
            assert_eq!(configured_error(max_fails), MAX_FAILS);
            let fail_timeout = PeerOptions { fail_timeout: v, ..Default::default() };
            assert_eq!(configured_error(fail_timeout), FAIL_TIMEOUT);
            let max_conns = PeerOptions { max_conns: v, ..Default::default() };
            assert_eq!(configured_error(max_conns), MAX_CONNS);
        }
        let zero = PeerOptions { weight: Some(0.0), max_fails: Some(past), ..Default::default() };
        assert_eq!(configured_error(zero), WEIGHT);
        assert_eq!(configured_error(PeerOptions { weight: None, ..zero }), MAX_FAILS);
    }

    proptest! {
        /// Any number is accepted exactly when it is an integer within the option's range, and
        /// then kept as that integer; for the Lua API's ranges and for the configured ones.
        #[test]
        fn accepts_exactly_the_integers_in_range(
            value in prop_oneof![
                any::<f64>(),
                (-10i64..=40_000_000).prop_map(|n| n as f64),
                (-10i64..=40_000_000).prop_map(|n| n as f64 + 0.5),
                (-10i64..=10).prop_map(|n| (i64::from(u32::MAX) + n) as f64),
                (-10i64..=10).prop_map(|n| (i64::from(u32::MAX) + n) as f64 + 0.5),
                (0..=u32::MAX).prop_map(f64::from),
            ],
            configured in any::<bool>(),
        ) {
            let ranges = if configured { &CONFIGURED } else { &API };
            let cases = [
                (PeerOptions { weight: Some(value), ..Default::default() }, &ranges.weight),
                (PeerOptions { max_fails: Some(value), ..Default::default() }, &ranges.max_fails),
                (
                    PeerOptions { fail_timeout: Some(value), ..Default::default() },
                    &ranges.fail_timeout,
                ),
                (PeerOptions { max_conns: Some(value), ..Default::default() }, &ranges.max_conns),
            ];
            for (options, range) in cases {
                let in_range = (f64::from(*range.start())..=f64::from(*range.end()))
                    .contains(&value)
                    && value.trunc() == value;
                let result =
                    if configured { options.validate_configured() } else { options.validate() };
                match result {
                    Ok(valid) => {
                        prop_assert!(in_range);
                        let kept = [
                            valid.weight(),
                            valid.max_fails(),
                            valid.fail_timeout(),
                            valid.max_conns(),
                        ];
                        prop_assert_eq!(kept.iter().flatten().count(), 1);
                        prop_assert!(kept.iter().flatten().all(|&n| f64::from(n) == value));
                    }
                    Err(e) => {
                        prop_assert!(!in_range);
                        let expected = format!(
                            "must be an integer from {} to {}",
                            range.start(),
                            range.end()
                        );
                        prop_assert!(e.to_string().ends_with(&expected));
                    }
                }
            }
        }

        #[test]
        fn flags_pass_through(down in any::<Option<bool>>(), backup in any::<Option<bool>>()) {
            let valid = PeerOptions { down, backup, ..Default::default() }.validate().unwrap();
            prop_assert_eq!((valid.down(), valid.backup()), (down, backup));
            let settings = valid.with_defaults();
            prop_assert_eq!(
                (settings.down, settings.backup),
                (down.unwrap_or(false), backup.unwrap_or(false))
            );
        }
    }
}
