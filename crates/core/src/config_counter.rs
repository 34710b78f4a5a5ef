//! When a runtime change on nginx >= 1.27.3 must move the upstream's configuration counter.
//!
//! Each request copies `*peers->config` when its balancer data is set up, and every balancer's
//! `get` answers `NGX_BUSY` ("no live upstreams", a 502) when the counter moved since: moving it
//! fails requests in flight. It must still move when a request's view could become unsafe:
//! - a balancer that keeps per-worker tables of peers (consistent hash points, random ranges)
//!   rebuilds them only when it moves;
//! - each request marks the peers it tried in a bitmap sized at setup for the longer list
//!   (`tried_words`); a list that grows past that size would have its `get` index past the end.
//!
//! Down/up, option changes, and adds and removes that keep every list within the smallest bitmap
//! a request may hold need no move: removed peers live on through nginx's `refs`/`zombie` until
//! the last request using them lets go. This module tracks that smallest bitmap.

/// Bits of one bitmap word (`8 * sizeof(uintptr_t)` in nginx).
pub const WORD_BITS: usize = usize::BITS as usize;

/// Words of the `tried` bitmap nginx gives a request when the longer list has `peers` peers: one
/// inline word up to [`WORD_BITS`] peers, then one word per [`WORD_BITS`].
pub fn tried_words(peers: usize) -> usize {
    peers.div_ceil(WORD_BITS).max(1)
}

/// What the module knows of an upstream's counter, kept in the zone beside its lists.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterState {
    /// The counter's value when this state was last brought up to date.
    seen: usize,
    /// The smallest bitmap (in words) a request set up at counter value `seen` may hold.
    smallest_words: usize,
}

impl CounterState {
    /// The state at startup: counter value `config`, longer list of `longest` peers.
    pub fn new(config: usize, longest: usize) -> Self {
        CounterState { seen: config, smallest_words: tried_words(longest) }
    }

    /// Decides whether a change must move the counter, and records the change. Called under the
    /// write locks of the upstream's lists, with the counter's value before the change, the
    /// longer list's size before and after it, and whether the balancer needs its tables rebuilt
    /// (or the operator asked for a move on every change). The caller moves the counter by one
    /// when this returns true.
    ///
    /// nginx's resolver changes the lists too, and moves the counter on each of its changes: a
    /// counter that moved since `seen` means that every request set up before saw it move (and
    /// will never `get` again), so the smallest bitmap is then the one of the lists as they are.
    pub fn change(
        &mut self,
        config: usize,
        longest_before: usize,
        longest_after: usize,
        force: bool,
    ) -> bool {
        if config != self.seen {
            self.smallest_words = tried_words(longest_before);
        }
        let words = tried_words(longest_after);
        let bump = force || words > self.smallest_words;
        if bump {
            self.seen = config.wrapping_add(1);
            self.smallest_words = words;
        } else {
            self.seen = config;
            self.smallest_words = self.smallest_words.min(words);
        }
        bump
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bitmap_words_follow_nginx() {
        assert_eq!(tried_words(0), 1);
        assert_eq!(tried_words(1), 1);
        assert_eq!(tried_words(64), 1);
        assert_eq!(tried_words(65), 2);
        assert_eq!(tried_words(128), 2);
        assert_eq!(tried_words(129), 3);
    }

    #[test]
    fn growth_within_the_bitmap_and_shrinking_do_not_move_it() {
        let mut s = CounterState::new(7, 10);
        assert!(!s.change(7, 10, 64, false));
        assert!(!s.change(7, 64, 3, false));
        assert!(!s.change(7, 3, 50, false));
    }

    #[test]
    fn growth_past_the_bitmap_moves_it_once() {
        let mut s = CounterState::new(7, 64);
        assert!(s.change(7, 64, 65, false));
        assert!(!s.change(8, 65, 128, false));
        assert!(s.change(8, 128, 129, false));
    }

    #[test]
    fn shrinking_then_growing_back_moves_it() {
        // A request set up while the list had 60 peers holds one word.
        let mut s = CounterState::new(1, 100);
        assert!(!s.change(1, 100, 60, false));
        assert!(s.change(1, 60, 100, false));
    }

    #[test]
    fn a_move_by_nginx_resets_what_requests_may_hold() {
        let mut s = CounterState::new(1, 100);
        assert!(!s.change(1, 100, 60, false));
        // The resolver moved it and the lists have 100 peers now: requests set up at 60 are gone.
        assert!(!s.change(5, 100, 101, false));
    }

    #[test]
    fn forced_changes_always_move_it() {
        let mut s = CounterState::new(1, 10);
        assert!(s.change(1, 10, 9, true));
        assert!(s.change(2, 9, 9, true));
    }

    /// One step of a simulated upstream.
    #[derive(Debug, Clone)]
    enum Step {
        /// The module resizes the longer list (forced: a table balancer or `always`).
        Module { longest: usize, force: bool },
        /// nginx's resolver resizes it, moving the counter as it always does.
        Resolver { longest: usize },
        /// A request sets up its balancer data.
        Setup,
        /// Every request still set up tries a `get`.
        Get,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0usize..300, any::<bool>())
                .prop_map(|(longest, f)| Step::Module { longest, force: f && longest % 7 == 0 }),
            (0usize..300).prop_map(|longest| Step::Resolver { longest }),
            Just(Step::Setup),
            Just(Step::Get),
        ]
    }

    proptest! {
        /// No request ever reaches a `get` with the counter it saw while a list is longer than
        /// its bitmap: that `get` would index past the end.
        #[test]
        fn no_request_outgrows_its_bitmap(start in 0usize..300, steps in prop::collection::vec(step(), 0..200)) {
            let mut config = 3usize;
            let mut longest = start;
            let mut state = CounterState::new(config, longest);
            let mut requests: Vec<(usize, usize)> = Vec::new();
            for s in steps {
                match s {
                    Step::Module { longest: after, force } => {
                        if state.change(config, longest, after, force) {
                            config += 1;
                        }
                        longest = after;
                    }
                    Step::Resolver { longest: after } => {
                        longest = after;
                        config += 1;
                    }
                    Step::Setup => requests.push((config, tried_words(longest))),
                    Step::Get => {
                        for &(seen, words) in &requests {
                            if seen == config {
                                prop_assert!(longest <= words * WORD_BITS,
                                    "a request holding {} words reached a list of {}", words, longest);
                            }
                        }
                    }
                }
            }
        }
    }
}
