//! The rollout state machine of one route: pure, no I/O. See `LIFECYCLE.md` beside this file.
//!
//! `apply(event, now)` either refuses the event (naming the current phase) or changes the
//! rollout and returns what the driver must do: set a weight (a weight rising from 0 starts a
//! new salt generation, which the route's state decides, not the rollout).

use std::time::Duration;

use canary_config::Weight;
use serde::{Deserialize, Serialize};

/// Where a route's rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Phase {
    /// No rollout running; the weight is whatever was set last.
    Idle,
    /// Stepping through `steps`; `step` is the current one.
    Progressing,
    /// A rollout stopped at its current step until resumed.
    Paused,
    /// The canary took all traffic.
    Promoted,
    /// Rolled back: the canary gets nothing.
    Aborted,
}

impl Phase {
    /// Every phase, in metric label order.
    pub const ALL: [Phase; 5] = [
        Phase::Idle,
        Phase::Progressing,
        Phase::Paused,
        Phase::Promoted,
        Phase::Aborted,
    ];

    /// The phase's name as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "Idle",
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Promoted => "Promoted",
            Phase::Aborted => "Aborted",
        }
    }
}

/// Something that happens to a rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Begin a rollout at the first of `steps`; with `interval`, steps advance by themselves.
    /// `None` is "the route's plan", filled in by [`Event::planned`]; a start without steps is
    /// refused.
    Start {
        steps: Option<Vec<Weight>>,
        interval: Option<Duration>,
    },
    /// Go to the next step (a pipeline job).
    Step,
    /// Stop advancing.
    Pause,
    /// Advance again from the current step.
    Resume,
    /// All traffic to the canary.
    Promote,
    /// All traffic back to stable.
    Abort,
    /// A manual weight; a progressing rollout pauses so its timer cannot override it.
    SetWeight(Weight),
    /// A tick of the driver's clock (the time is `apply`'s `now_ms`); `analysis_ok` is false
    /// while the canary's analysis has not passed over the whole interval.
    Tick { analysis_ok: bool },
}

impl Event {
    /// This event with a start's missing steps and interval taken from the route's plan.
    pub fn planned(self, plan_steps: &[Weight], plan_interval: Option<Duration>) -> Event {
        match self {
            Event::Start { steps, interval } => Event::Start {
                steps: steps.or_else(|| Some(plan_steps.to_vec())),
                interval: interval.or(plan_interval),
            },
            other => other,
        }
    }

    /// The audit name of the event (a timed step is a `step`).
    pub fn name(&self) -> &'static str {
        match self {
            Event::Start { .. } => "rollout",
            Event::Step | Event::Tick { .. } => "step",
            Event::Pause => "pause",
            Event::Resume => "resume",
            Event::Promote => "promote",
            Event::Abort => "abort",
            Event::SetWeight(_) => "weight",
        }
    }
}

/// What the driver must do after an accepted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Serve this canary weight from now on.
    SetWeight(Weight),
}

/// An event the current phase does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    /// The transition is not possible from this phase.
    #[error("cannot {action} while the rollout is {phase}{hint}", phase = phase.as_str())]
    Conflict {
        /// What was asked.
        action: &'static str,
        /// The current phase.
        phase: Phase,
        /// Extra advice, starting with "; " or empty.
        hint: &'static str,
    },
    /// Steps must rise and stay within 0..=100 %.
    #[error("steps must be a non-empty rising list of weights above 0")]
    BadSteps,
}

/// One route's rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Current phase.
    pub phase: Phase,
    /// Weights of the steps, parts per million.
    pub steps_ppm: Vec<u32>,
    /// Index of the current step while Progressing or Paused.
    pub step: Option<usize>,
    /// Time between timed steps, milliseconds; `None`: steps advance only by API call.
    pub interval_ms: Option<u64>,
    /// When the current step began (ms since the Unix epoch).
    pub step_started_ms: u64,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            phase: Phase::Idle,
            steps_ppm: Vec::new(),
            step: None,
            interval_ms: None,
            step_started_ms: 0,
        }
    }
}

impl Rollout {
    /// Applies `event` at `now_ms`; on refusal nothing changes.
    pub fn apply(&mut self, event: Event, now_ms: u64) -> Result<Vec<Action>, RolloutError> {
        use Phase::*;
        let conflict = |action, phase, hint| Err(RolloutError::Conflict { action, phase, hint });
        match (event, self.phase) {
            (Event::Start { steps, interval }, Idle | Promoted | Aborted) => {
                let steps = steps.unwrap_or_default();
                let rising = steps.windows(2).all(|w| w[0] < w[1]);
                if steps.is_empty() || !rising || steps[0] == Weight::ZERO {
                    return Err(RolloutError::BadSteps);
                }
                self.steps_ppm = steps.iter().map(|w| w.ppm()).collect();
                self.interval_ms = interval.map(|d| d.as_millis() as u64);
                Ok(self.enter_step(0, now_ms))
            }
            (Event::Start { .. }, phase) => conflict("start a rollout", phase, "; abort or promote it first"),
            (Event::Step, Progressing) => match self.step {
                Some(i) if i + 1 < self.steps_ppm.len() => Ok(self.enter_step(i + 1, now_ms)),
                _ => conflict("step", Progressing, "; this is the last step, promote instead"),
            },
            (Event::Step, Paused) => conflict("step", Paused, "; resume it first"),
            (Event::Step, phase) => conflict("step", phase, "; start a rollout first"),
            (Event::Pause, Progressing) => {
                self.phase = Paused;
                Ok(vec![])
            }
            (Event::Pause, phase) => conflict("pause", phase, ""),
            (Event::Resume, Paused) => {
                self.phase = Progressing;
                // The interval counts again from the resume.
                self.step_started_ms = now_ms;
                Ok(vec![])
            }
            (Event::Resume, phase) => conflict("resume", phase, ""),
            (Event::Promote, Idle | Progressing | Paused) => {
                self.phase = Promoted;
                self.step = None;
                Ok(vec![Action::SetWeight(Weight::FULL)])
            }
            (Event::Promote, phase) => conflict("promote", phase, "; start a new rollout"),
            (Event::Abort, Idle | Progressing | Paused | Promoted) => {
                self.phase = Aborted;
                self.step = None;
                Ok(vec![Action::SetWeight(Weight::ZERO)])
            }
            (Event::Abort, phase) => conflict("abort", phase, ""),
            (Event::SetWeight(w), phase) => {
                self.phase = match phase {
                    Progressing => Paused,
                    Promoted | Aborted => Idle,
                    other => other,
                };
                if self.phase == Idle {
                    self.step = None;
                }
                Ok(vec![Action::SetWeight(w)])
            }
            (Event::Tick { analysis_ok }, Progressing) => match (self.interval_ms, self.step) {
                (Some(interval), Some(i)) if now_ms >= self.step_started_ms + interval => {
                    if !analysis_ok {
                        // Not proven good over the interval: wait another one.
                        self.step_started_ms = now_ms;
                        Ok(vec![])
                    } else if i + 1 < self.steps_ppm.len() {
                        Ok(self.enter_step(i + 1, now_ms))
                    } else {
                        // The last step held for a whole interval: done.
                        self.phase = Promoted;
                        self.step = None;
                        Ok(vec![Action::SetWeight(Weight::FULL)])
                    }
                }
                _ => Ok(vec![]),
            },
            (Event::Tick { .. }, _) => Ok(vec![]),
        }
    }

    fn enter_step(&mut self, i: usize, now_ms: u64) -> Vec<Action> {
        let weight = Weight::from_ppm(self.steps_ppm[i]);
        self.step = Some(i);
        self.step_started_ms = now_ms;
        self.phase = if weight == Weight::FULL {
            Phase::Promoted
        } else {
            Phase::Progressing
        };
        if self.phase == Phase::Promoted {
            self.step = None;
        }
        vec![Action::SetWeight(weight)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(p: f64) -> Weight {
        Weight::from_percent(p).unwrap()
    }

    fn start(r: &mut Rollout, interval: Option<u64>) -> Vec<Action> {
        let steps = vec![w(10.0), w(25.0), w(50.0), w(100.0)];
        r.apply(
            Event::Start {
                steps: Some(steps),
                interval: interval.map(Duration::from_millis),
            },
            0,
        )
        .unwrap()
    }

    #[test]
    fn manual_pipeline_10_25_50_100() {
        let mut r = Rollout::default();
        assert_eq!(start(&mut r, None), vec![Action::SetWeight(w(10.0))]);
        assert_eq!(r.phase, Phase::Progressing);
        assert_eq!(r.apply(Event::Step, 1).unwrap(), vec![Action::SetWeight(w(25.0))]);
        assert_eq!(r.apply(Event::Step, 2).unwrap(), vec![Action::SetWeight(w(50.0))]);
        assert_eq!(r.apply(Event::Step, 3).unwrap(), vec![Action::SetWeight(Weight::FULL)]);
        assert_eq!(r.phase, Phase::Promoted, "reaching 100 % promotes");
        let err = r.apply(Event::Step, 4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot step while the rollout is Promoted; start a rollout first"
        );
    }

    #[test]
    fn illegal_transitions_change_nothing() {
        let mut r = Rollout::default();
        for e in [Event::Step, Event::Pause, Event::Resume] {
            let before = r.clone();
            assert!(matches!(
                r.apply(e, 5),
                Err(RolloutError::Conflict { phase: Phase::Idle, .. })
            ));
            assert_eq!(r, before);
        }
        start(&mut r, None);
        let before = r.clone();
        assert!(r
            .apply(
                Event::Start {
                    steps: Some(vec![w(5.0)]),
                    interval: None
                },
                9
            )
            .is_err());
        assert_eq!(r, before);
        r.apply(Event::Pause, 10).unwrap();
        assert!(matches!(
            r.apply(Event::Step, 11),
            Err(RolloutError::Conflict {
                phase: Phase::Paused,
                ..
            })
        ));
        r.apply(Event::Abort, 12).unwrap();
        assert!(matches!(
            r.apply(Event::Abort, 13),
            Err(RolloutError::Conflict {
                phase: Phase::Aborted,
                ..
            })
        ));
        assert!(matches!(
            r.apply(Event::Promote, 13),
            Err(RolloutError::Conflict {
                phase: Phase::Aborted,
                ..
            })
        ));
    }

    #[test]
    fn steps_must_rise() {
        let mut r = Rollout::default();
        for steps in [
            vec![],
            vec![w(0.0), w(10.0)],
            vec![w(25.0), w(10.0)],
            vec![w(10.0), w(10.0)],
        ] {
            assert_eq!(
                r.apply(
                    Event::Start {
                        steps: Some(steps),
                        interval: None
                    },
                    0
                ),
                Err(RolloutError::BadSteps)
            );
        }
    }

    #[test]
    fn timed_rollout_advances_only_when_analysis_passed() {
        let mut r = Rollout::default();
        start(&mut r, Some(1_000));
        assert_eq!(r.apply(Event::Tick { analysis_ok: true }, 999).unwrap(), vec![]);
        assert_eq!(
            r.apply(Event::Tick { analysis_ok: false }, 1_000).unwrap(),
            vec![],
            "inconclusive waits"
        );
        assert_eq!(r.step, Some(0));
        assert_eq!(r.apply(Event::Tick { analysis_ok: true }, 1_999).unwrap(), vec![]);
        assert_eq!(
            r.apply(Event::Tick { analysis_ok: true }, 2_000).unwrap(),
            vec![Action::SetWeight(w(25.0))]
        );
        r.apply(Event::Pause, 2_500).unwrap();
        assert_eq!(
            r.apply(Event::Tick { analysis_ok: true }, 9_000).unwrap(),
            vec![],
            "paused does not advance"
        );
        r.apply(Event::Resume, 9_000).unwrap();
        assert_eq!(
            r.apply(Event::Tick { analysis_ok: true }, 10_000).unwrap(),
            vec![Action::SetWeight(w(50.0))]
        );
        assert_eq!(
            r.apply(Event::Tick { analysis_ok: true }, 11_000).unwrap(),
            vec![Action::SetWeight(Weight::FULL)]
        );
        assert_eq!(r.phase, Phase::Promoted);
    }

    #[test]
    fn manual_weight_pauses_a_progressing_rollout() {
        let mut r = Rollout::default();
        start(&mut r, Some(1_000));
        assert_eq!(
            r.apply(Event::SetWeight(w(30.0)), 10).unwrap(),
            vec![Action::SetWeight(w(30.0))]
        );
        assert_eq!(r.phase, Phase::Paused);
        r.apply(Event::Abort, 11).unwrap();
        r.apply(Event::SetWeight(w(5.0)), 12).unwrap();
        assert_eq!(r.phase, Phase::Idle);
    }
}
