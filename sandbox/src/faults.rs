//! Seeded fault decisions, one sequence per emulator.

use std::sync::Mutex;
use std::time::Duration;

use crate::config::{FaultTarget, Faults};

/// What happens to one request before the emulator looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pass,
    /// Close the connection without an answer.
    Drop,
    /// Answer this 5xx status.
    ServerError(u16),
    /// Answer 429 (throttle fault).
    Throttle,
    /// Answer 429 (inside a 429 storm).
    Storm,
}

#[derive(Debug)]
struct GateState {
    faults: Faults,
    rng: fastrand::Rng,
    count: usize,
}

/// The fault sequence of one emulator.
#[derive(Debug)]
pub(crate) struct FaultGate {
    target: FaultTarget,
    statuses: &'static [u16],
    state: Mutex<GateState>,
}

impl FaultGate {
    pub(crate) fn new(target: FaultTarget, statuses: &'static [u16], faults: Faults) -> Self {
        let gate = FaultGate {
            target,
            statuses,
            state: Mutex::new(GateState {
                faults: Faults::default(),
                rng: fastrand::Rng::with_seed(0),
                count: 0,
            }),
        };
        gate.set(faults);
        gate
    }

    /// Replace the faults and restart their sequence and the storm's request count.
    pub(crate) fn set(&self, faults: Faults) {
        // Each emulator draws its own sequence, so one API's traffic does not shift the other's.
        let salt = match self.target {
            FaultTarget::Klaviyo => 0x4b4c_4156,
            _ => 0x5452_4946,
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.rng = fastrand::Rng::with_seed(faults.seed ^ salt);
        state.count = 0;
        state.faults = faults;
    }

    pub(crate) fn faults(&self) -> Faults {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .faults
            .clone()
    }

    /// Decide the next request's fate and extra latency. Every call draws the same amount
    /// from the generator, so the sequence depends only on the seed and the request number.
    pub(crate) fn decide(&self) -> (Outcome, Option<Duration>) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *guard;
        state.count += 1;
        let roll = state.rng.f64();
        let pick = state.rng.usize(..self.statuses.len().max(1));
        let spread = state.rng.f64();
        let f = &state.faults;
        if !f.applies_to(self.target) {
            return (Outcome::Pass, None);
        }
        let latency = f
            .latency
            .map(|(min, max)| min + (max - min).mul_f64(spread));
        let in_storm = f.storm.is_some_and(|(a, b)| (a..b).contains(&state.count));
        let outcome = if in_storm {
            Outcome::Storm
        } else if roll < f.drop_rate {
            Outcome::Drop
        } else if roll < f.drop_rate + f.error_rate {
            Outcome::ServerError(self.statuses.get(pick).copied().unwrap_or(500))
        } else if roll < f.drop_rate + f.error_rate + f.throttle_rate {
            Outcome::Throttle
        } else {
            Outcome::Pass
        };
        (outcome, latency)
    }
}

/// The fault sequences of both emulators; setting faults restarts both.
#[derive(Debug)]
pub(crate) struct Gates {
    pub(crate) klaviyo: FaultGate,
    pub(crate) trifft: FaultGate,
}

impl Gates {
    pub(crate) fn new(faults: &Faults) -> Self {
        Gates {
            klaviyo: FaultGate::new(FaultTarget::Klaviyo, &[500, 502, 503, 504], faults.clone()),
            trifft: FaultGate::new(FaultTarget::Trifft, &[500, 502, 503], faults.clone()),
        }
    }

    pub(crate) fn set(&self, faults: Faults) {
        self.klaviyo.set(faults.clone());
        self.trifft.set(faults);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(seed: u64) -> Vec<Outcome> {
        let faults = Faults {
            seed,
            error_rate: 0.3,
            drop_rate: 0.1,
            throttle_rate: 0.1,
            ..Faults::default()
        };
        let gate = FaultGate::new(FaultTarget::Klaviyo, &[500, 502, 503, 504], faults);
        (0..200).map(|_| gate.decide().0).collect()
    }

    #[test]
    fn same_seed_same_sequence_and_rates_roughly_hold() {
        assert_eq!(sequence(7), sequence(7));
        assert_ne!(sequence(7), sequence(8));
        let seq = sequence(7);
        let errors = seq
            .iter()
            .filter(|o| matches!(o, Outcome::ServerError(_)))
            .count();
        assert!(
            (30..=90).contains(&errors),
            "{errors} errors of 200 at rate 0.3"
        );
    }

    #[test]
    fn storm_covers_exactly_its_request_numbers() {
        let faults = Faults {
            storm: Some((3, 6)),
            ..Faults::default()
        };
        let gate = FaultGate::new(FaultTarget::Trifft, &[500], faults);
        let seq: Vec<_> = (0..8).map(|_| gate.decide().0 == Outcome::Storm).collect();
        assert_eq!(seq, [false, false, true, true, true, false, false, false]);
    }

    #[test]
    fn faults_for_the_other_api_do_not_apply() {
        let faults = Faults {
            target: FaultTarget::Trifft,
            error_rate: 1.0,
            ..Faults::default()
        };
        let gate = FaultGate::new(FaultTarget::Klaviyo, &[500], faults);
        assert!((0..20).all(|_| gate.decide().0 == Outcome::Pass));
    }
}
