//! The limiter's arithmetic, the same for every backend: the generic cell rate algorithm
//! (one timestamp per key, the "theoretical arrival time"), a count of limited requests, and
//! a ban once that count reaches the policy's threshold.
//!
//! With `limit` requests per `period` and `burst` extra, a key may make `limit + burst`
//! requests at once, then one every `period / limit`. Each limited request is a violation;
//! `ban_after` violations within `ban_duration` ban the key for `ban_duration`. Times are
//! milliseconds since the epoch. The Redis backend runs the same steps in a Lua script
//! ([`super::redis`]); this module is the reference both are tested against.

/// The numbers of one rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Milliseconds between two requests at the steady rate (`period / limit`).
    pub interval: u64,
    /// How far ahead of now the arrival time may run (`interval × (limit + burst − 1)`).
    pub tolerance: u64,
    /// Violations that ban, when bans are on.
    pub ban_after: Option<u32>,
    /// How long a ban lasts, and the window violations are counted in.
    pub ban_duration: u64,
}

impl Params {
    /// The parameters of `limit` per `period_ms` with `burst` extra.
    pub fn new(limit: u32, period_ms: u64, burst: u32, ban: Option<(u32, u64)>) -> Self {
        let limit = u64::from(limit.max(1));
        let interval = (period_ms / limit).max(1);
        Self {
            interval,
            tolerance: interval * (limit + u64::from(burst) - 1),
            ban_after: ban.map(|(after, _)| after.max(1)),
            ban_duration: ban.map_or(period_ms, |(_, duration)| duration),
        }
    }
}

/// What a key's state holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The theoretical arrival time of the next request.
    pub tat: u64,
    /// Limited requests in the current window.
    pub violations: u32,
    /// When the violation window ends.
    pub window_end: u64,
    /// When the current ban began (0: none).
    pub ban_start: u64,
    /// When it ends.
    pub ban_end: u64,
}

impl State {
    /// Whether the state says nothing any more at `now` (it can be forgotten).
    pub const fn is_idle(&self, now: u64) -> bool {
        self.tat <= now && self.window_end <= now && self.ban_end <= now
    }
}

/// What the limiter is asked to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Check and, when allowed, count it.
    Take,
    /// Check without counting (rules that count only some responses).
    Peek,
    /// Count it without checking (the response matched).
    Count,
}

/// The limiter's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Under the limit.
    Allowed,
    /// Over the limit; the next request is allowed in this many milliseconds.
    Limited {
        /// Milliseconds until a request is allowed again.
        retry_after: u64,
    },
    /// Banned until `end` (`new`: this request started the ban).
    Banned {
        /// When the ban began.
        start: u64,
        /// When it ends.
        end: u64,
        /// Whether this request started it.
        new: bool,
    },
}

/// One step: the outcome of `op` at `now`, and the key's new state. A stored ban that
/// began before `lifted_before` is lifted first.
pub fn step(
    state: State,
    params: &Params,
    op: Op,
    now: u64,
    lifted_before: u64,
) -> (Outcome, State) {
    let mut state = state;
    if state.ban_end > now {
        if state.ban_start < lifted_before {
            state.ban_start = 0;
            state.ban_end = 0;
            state.violations = 0;
        } else {
            let banned = Outcome::Banned {
                start: state.ban_start,
                end: state.ban_end,
                new: false,
            };
            return (banned, state);
        }
    }
    let tat = state.tat.max(now);
    if op == Op::Count {
        state.tat = tat + params.interval;
        return (Outcome::Allowed, state);
    }
    if tat - now > params.tolerance {
        if state.window_end <= now {
            state.violations = 0;
            state.window_end = now + params.ban_duration;
        }
        state.violations += 1;
        if let Some(after) = params.ban_after
            && state.violations >= after
        {
            state.violations = 0;
            state.ban_start = now;
            state.ban_end = now + params.ban_duration;
            let banned = Outcome::Banned {
                start: now,
                end: state.ban_end,
                new: true,
            };
            return (banned, state);
        }
        let retry_after = tat - params.tolerance - now;
        return (Outcome::Limited { retry_after }, state);
    }
    if op == Op::Take {
        state.tat = tat + params.interval;
    }
    (Outcome::Allowed, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;
    const T0: u64 = 1_800_000_000_000;

    fn run(params: &Params, state: &mut State, op: Op, now: u64) -> Outcome {
        let (outcome, next) = step(*state, params, op, now, 0);
        *state = next;
        outcome
    }

    #[test]
    fn five_a_minute_allows_five_at_once_then_one_every_twelve_seconds() {
        let params = Params::new(5, MINUTE, 0, None);
        let mut state = State::default();
        for _ in 0..5 {
            assert_eq!(run(&params, &mut state, Op::Take, T0), Outcome::Allowed);
        }
        assert_eq!(
            run(&params, &mut state, Op::Take, T0),
            Outcome::Limited {
                retry_after: 12_000
            }
        );
        assert_eq!(
            run(&params, &mut state, Op::Take, T0 + 11_999),
            Outcome::Limited { retry_after: 1 }
        );
        assert_eq!(
            run(&params, &mut state, Op::Take, T0 + 12_000),
            Outcome::Allowed
        );
        assert!(matches!(
            run(&params, &mut state, Op::Take, T0 + 12_000),
            Outcome::Limited { .. }
        ));
    }

    #[test]
    fn burst_adds_to_the_first_volley() {
        let params = Params::new(2, MINUTE, 3, None);
        let mut state = State::default();
        for _ in 0..5 {
            assert_eq!(run(&params, &mut state, Op::Take, T0), Outcome::Allowed);
        }
        assert!(matches!(
            run(&params, &mut state, Op::Take, T0),
            Outcome::Limited { .. }
        ));
    }

    #[test]
    fn repeated_violations_ban_and_the_ban_expires() {
        let params = Params::new(1, MINUTE, 0, Some((3, 10 * MINUTE)));
        let mut state = State::default();
        assert_eq!(run(&params, &mut state, Op::Take, T0), Outcome::Allowed);
        assert!(matches!(
            run(&params, &mut state, Op::Take, T0),
            Outcome::Limited { .. }
        ));
        assert!(matches!(
            run(&params, &mut state, Op::Take, T0),
            Outcome::Limited { .. }
        ));
        assert_eq!(
            run(&params, &mut state, Op::Take, T0 + 1),
            Outcome::Banned {
                start: T0 + 1,
                end: T0 + 1 + 10 * MINUTE,
                new: true
            }
        );
        assert_eq!(
            run(&params, &mut state, Op::Take, T0 + 5 * MINUTE),
            Outcome::Banned {
                start: T0 + 1,
                end: T0 + 1 + 10 * MINUTE,
                new: false
            }
        );
        assert_eq!(
            run(&params, &mut state, Op::Take, T0 + 11 * MINUTE),
            Outcome::Allowed
        );
    }

    #[test]
    fn a_lift_ends_bans_that_began_before_it() {
        let params = Params::new(1, MINUTE, 0, Some((1, 10 * MINUTE)));
        let mut state = State::default();
        run(&params, &mut state, Op::Take, T0);
        assert!(matches!(
            run(&params, &mut state, Op::Take, T0),
            Outcome::Banned { .. }
        ));
        let (outcome, _) = step(state, &params, Op::Take, T0 + MINUTE, T0 + 1);
        assert_eq!(outcome, Outcome::Allowed);
        let (outcome, _) = step(state, &params, Op::Take, T0 + MINUTE, T0);
        assert!(matches!(outcome, Outcome::Banned { .. }));
    }

    #[test]
    fn peeking_does_not_count_and_counting_does_not_check() {
        let params = Params::new(2, MINUTE, 0, None);
        let mut state = State::default();
        for _ in 0..10 {
            assert_eq!(run(&params, &mut state, Op::Peek, T0), Outcome::Allowed);
        }
        run(&params, &mut state, Op::Count, T0);
        run(&params, &mut state, Op::Count, T0);
        assert!(matches!(
            run(&params, &mut state, Op::Peek, T0),
            Outcome::Limited { .. }
        ));
    }

    #[test]
    fn idle_states_can_be_forgotten() {
        let params = Params::new(5, MINUTE, 0, None);
        let (_, state) = step(State::default(), &params, Op::Take, T0, 0);
        assert!(!state.is_idle(T0));
        assert!(state.is_idle(T0 + 12_000));
    }
}
