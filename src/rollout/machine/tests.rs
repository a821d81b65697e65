//! The state machine with a fake clock: every transition the issue names, no sleeping.

use super::*;
use crate::config::{Check, CheckKind};
use std::collections::BTreeMap;
use std::time::Duration;

const S: Millis = 1000;

fn gate() -> Gate {
    Gate {
        source: crate::config::GateSource::Live,
        interval: Duration::from_secs(10),
        window: Duration::from_secs(60),
        initial_delay: Duration::ZERO,
        count: 2,
        min_requests: 10,
        checks: vec![Check {
            kind: CheckKind::SuccessRate {
                min: Some(99.0),
                max_drop_vs_primary: None,
            },
            critical: false,
            min_requests: None,
        }],
        failure_limit: 1,
        consecutive_failure_limit: 0,
        error_limit: 2,
        inconclusive_limit: 1,
        on_inconclusive: OnInconclusive::Pause,
    }
}

fn w(p: u32) -> Step {
    Step::SetWeight(Weight(p * 100))
}

fn spec(steps: Vec<Step>) -> RolloutSpec {
    let mut analysis = BTreeMap::new();
    analysis.insert("slo".to_string(), gate());
    RolloutSpec {
        id: "r1".into(),
        canary: 1,
        steps,
        background_analysis: None,
        analysis,
    }
}

fn measurement(gate: &str, background: bool, result: Outcome, critical: bool) -> Measurement {
    Measurement {
        at: 0,
        gate: gate.into(),
        background,
        step: 0,
        result,
        checks: vec![CheckResult {
            check: "success_rate".into(),
            result,
            critical,
            value: Some(95.0),
            message: "95 % < 99 %".into(),
        }],
    }
}

/// Answer every measurement the actions ask for with `result`, at `now`.
fn answer(
    st: &mut RolloutState,
    sp: &RolloutSpec,
    actions: Vec<Action>,
    result: Outcome,
    now: Millis,
) -> Vec<Action> {
    let mut out = Vec::new();
    for a in actions {
        if let Action::Measure { gate, background } = a {
            out.extend(st.handle(
                sp,
                Event::Measured(measurement(&gate, background, result, false)),
                now,
            ));
        }
    }
    out
}

fn measures(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Measure { .. }))
        .count()
}

#[test]
fn a_healthy_canary_walks_every_step_to_succeeded() {
    let sp = spec(vec![
        w(5),
        Step::Pause(Some(Duration::from_secs(60))),
        Step::Analysis("slo".into()),
        w(50),
    ]);
    let mut st = RolloutState::new(&sp);
    let a = st.handle(&sp, Event::Tick, 0);
    assert_eq!((st.phase, st.weight, st.step), (Phase::Paused, 500, 1));
    assert_eq!(st.pause_reason(), Some(PauseReason::Step));
    assert_eq!(st.layer().unwrap().canary_weight, Weight(500));
    assert_eq!(measures(&a), 0);
    // Nothing happens before the pause ends.
    st.handle(&sp, Event::Tick, 59 * S);
    assert_eq!(st.phase, Phase::Paused);
    let a = st.handle(&sp, Event::Tick, 60 * S);
    assert_eq!((st.phase, st.step), (Phase::Progressing, 2));
    assert_eq!(
        measures(&a),
        1,
        "the gate measures at once (no initial delay)"
    );
    let a = answer(&mut st, &sp, a, Outcome::Passed, 60 * S);
    assert_eq!(measures(&a), 0, "the next one waits for the interval");
    assert_eq!(st.phase, Phase::Progressing);
    let a = st.handle(&sp, Event::Tick, 70 * S);
    answer(&mut st, &sp, a, Outcome::Passed, 70 * S);
    assert_eq!(st.phase, Phase::Succeeded);
    let layer = st.layer().unwrap();
    assert_eq!(
        (layer.canary_weight, layer.others_zero),
        (Weight(WEIGHT_SCALE), true)
    );
    let phases: Vec<Phase> = st.history.iter().map(|t| t.to).collect();
    assert_eq!(
        phases,
        [
            Phase::Progressing,
            Phase::Paused,
            Phase::Progressing,
            Phase::Succeeded
        ]
    );
}

#[test]
fn a_failing_canary_is_aborted_by_measurement_failure_limit_plus_one() {
    let sp = spec(vec![w(10), Step::Analysis("slo".into()), w(50)]);
    let mut st = RolloutState::new(&sp);
    let mut now = 0;
    let mut a = st.handle(&sp, Event::Tick, now);
    while st.phase == Phase::Progressing {
        answer(&mut st, &sp, a, Outcome::Failed, now);
        now += 10 * S;
        a = st.handle(&sp, Event::Tick, now);
    }
    assert_eq!(st.phase, Phase::Aborted);
    assert_eq!(st.reason.as_deref(), Some("analysis_failed"));
    // failure_limit is 1: the second failed measurement aborts.
    assert_eq!(st.measurements.len(), 2);
    assert_eq!(st.weight, 0);
    assert_eq!(st.layer().unwrap().canary_weight, Weight(0));
    assert_eq!(st.verbs(), [Verb::Retry]);
}

#[test]
fn a_critical_check_aborts_at_the_first_measurement() {
    let sp = spec(vec![w(10), Step::Analysis("slo".into())]);
    let mut st = RolloutState::new(&sp);
    st.handle(&sp, Event::Tick, 0);
    st.handle(
        &sp,
        Event::Measured(measurement("slo", false, Outcome::Failed, true)),
        0,
    );
    assert_eq!(st.phase, Phase::Aborted);
    assert_eq!(st.measurements.len(), 1);
    assert!(st.message.contains("critical"), "{}", st.message);
}

#[test]
fn no_traffic_pauses_inconclusive_and_never_succeeds() {
    let sp = spec(vec![w(10), Step::Analysis("slo".into())]);
    let mut st = RolloutState::new(&sp);
    let mut now = 0;
    for _ in 0..10 {
        let a = st.handle(&sp, Event::Tick, now);
        answer(&mut st, &sp, a, Outcome::Inconclusive, now);
        now += 10 * S;
    }
    assert_eq!(st.phase, Phase::Paused);
    assert_eq!(st.pause_reason(), Some(PauseReason::Inconclusive));
    // inconclusive_limit 1: the second inconclusive one pauses, and nothing is measured after.
    assert_eq!(st.measurements.len(), 2);
    assert_eq!(st.weight, 1000, "weights are held, not promoted");
}

#[test]
fn on_inconclusive_continue_passes_a_gate_with_nothing_failed() {
    let mut sp = spec(vec![w(10), Step::Analysis("slo".into())]);
    sp.analysis.get_mut("slo").unwrap().on_inconclusive = OnInconclusive::Continue;
    let mut st = RolloutState::new(&sp);
    let mut now = 0;
    for _ in 0..3 {
        let a = st.handle(&sp, Event::Tick, now);
        answer(&mut st, &sp, a, Outcome::Inconclusive, now);
        now += 10 * S;
    }
    assert_eq!(st.phase, Phase::Succeeded);
}

#[test]
fn errors_pause_after_error_limit() {
    let sp = spec(vec![w(10), Step::Analysis("slo".into())]);
    let mut st = RolloutState::new(&sp);
    let a = st.handle(&sp, Event::Tick, 0);
    answer(&mut st, &sp, a, Outcome::Errored, 0);
    assert_eq!(st.phase, Phase::Progressing);
    let a = st.handle(&sp, Event::Tick, 10 * S);
    answer(&mut st, &sp, a, Outcome::Errored, 10 * S);
    assert_eq!(st.pause_reason(), Some(PauseReason::AnalysisError));
    // resume measures again with fresh error counters.
    st.handle(&sp, Event::Resume { step: None }, 11 * S);
    assert_eq!(st.phase, Phase::Progressing);
    let a = st.handle(&sp, Event::Tick, 20 * S);
    answer(&mut st, &sp, a, Outcome::Passed, 20 * S);
    let a = st.handle(&sp, Event::Tick, 30 * S);
    answer(&mut st, &sp, a, Outcome::Passed, 30 * S);
    assert_eq!(st.phase, Phase::Succeeded);
}

#[test]
fn pause_forever_waits_for_promote() {
    let sp = spec(vec![w(20), Step::Pause(None), w(60)]);
    let mut st = RolloutState::new(&sp);
    st.handle(&sp, Event::Tick, 0);
    st.handle(&sp, Event::Tick, 3_600 * S);
    assert_eq!(
        (st.pause_reason(), st.weight),
        (Some(PauseReason::Step), 2000)
    );
    assert!(st.verbs().contains(&Verb::Promote));
    st.handle(&sp, Event::Promote { full: false }, 3_601 * S);
    assert_eq!(
        st.phase,
        Phase::Succeeded,
        "promote passes the pause; 60 % then the end"
    );
    assert_eq!(st.history.iter().filter(|t| t.by == "api").count(), 1);
}

#[test]
fn promote_full_skips_the_remaining_steps() {
    let sp = spec(vec![
        w(5),
        Step::Pause(Some(Duration::from_secs(600))),
        w(25),
        Step::Pause(None),
    ]);
    let mut st = RolloutState::new(&sp);
    st.handle(&sp, Event::Tick, 0);
    st.handle(&sp, Event::Promote { full: true }, S);
    assert_eq!(st.phase, Phase::Succeeded);
    assert_eq!(st.layer().unwrap().canary_weight, Weight(WEIGHT_SCALE));
}

#[test]
fn retry_after_abort_starts_again_from_step_zero() {
    let sp = spec(vec![w(5), Step::Pause(None)]);
    let mut st = RolloutState::new(&sp);
    st.handle(&sp, Event::Tick, 0);
    st.handle(&sp, Event::Abort, S);
    assert_eq!((st.phase, st.weight), (Phase::Aborted, 0));
    st.handle(&sp, Event::Retry, 2 * S);
    assert_eq!((st.phase, st.weight, st.step), (Phase::Paused, 500, 1));
    assert!(st.history.len() >= 4, "history is kept across a retry");
}

#[test]
fn a_timed_pause_keeps_its_absolute_end_across_a_restart() {
    let sp = spec(vec![
        w(5),
        Step::Pause(Some(Duration::from_secs(120))),
        w(40),
    ]);
    let mut st = RolloutState::new(&sp);
    st.handle(&sp, Event::Tick, 1_000 * S);
    assert_eq!(st.pause_until, Some(1_120 * S));
    // What the state file holds, read back by a new process.
    let text = serde_json::to_string(&st).unwrap();
    let mut back: RolloutState = serde_json::from_str(&text).unwrap();
    back.handle(&sp, Event::Tick, 1_119 * S);
    assert_eq!((back.phase, back.step), (Phase::Paused, 1));
    back.handle(&sp, Event::Tick, 1_120 * S);
    assert_eq!(back.phase, Phase::Succeeded);
}

#[test]
fn edited_steps_pause_at_the_current_weight_and_resume_never_drops_it() {
    let sp = spec(vec![w(10), w(30), Step::Pause(None), w(60)]);
    let mut st = RolloutState::new(&sp);
    st.handle(&sp, Event::Tick, 0);
    assert_eq!(st.weight, 3000);
    let edited = spec(vec![w(5), w(20), w(40), Step::Pause(None), w(80)]);
    st.handle(
        &edited,
        Event::Edited {
            fingerprint: edited.steps_fingerprint(),
        },
        S,
    );
    assert_eq!(
        (st.pause_reason(), st.weight),
        (Some(PauseReason::Edited), 3000)
    );
    assert!(st.verbs().contains(&Verb::Retry) && st.verbs().contains(&Verb::Resume));
    st.handle(&edited, Event::Resume { step: None }, 2 * S);
    // The first step with a weight of at least 30 % is `set_weight: 40` (index 2).
    assert_eq!(
        (st.weight, st.step, st.pause_reason()),
        (4000, 3, Some(PauseReason::Step))
    );
}

#[test]
fn a_lost_state_holds_the_canary_at_zero_until_an_operator_acts() {
    let sp = spec(vec![w(10), w(30), Step::Pause(None)]);
    let mut st = RolloutState::lost(&sp, "bad JSON", 0);
    assert_eq!(st.pause_reason(), Some(PauseReason::StateLost));
    assert_eq!(st.layer().unwrap().canary_weight, Weight(0));
    assert_eq!(st.verbs(), [Verb::Retry, Verb::Resume]);
    st.handle(&sp, Event::Tick, 100 * S);
    assert_eq!(
        (st.phase, st.weight),
        (Phase::Paused, 0),
        "ticks never move it"
    );
    st.handle(&sp, Event::Resume { step: Some(2) }, 101 * S);
    assert_eq!(
        (st.weight, st.pause_reason()),
        (3000, Some(PauseReason::Step))
    );
}

#[test]
fn a_failed_write_pauses_and_keeps_the_weights() {
    let sp = spec(vec![
        w(10),
        Step::Pause(Some(Duration::from_secs(5))),
        w(30),
    ]);
    let mut st = RolloutState::new(&sp);
    st.handle(&sp, Event::Tick, 0);
    st.handle(&sp, Event::WriteFailed("disk full".into()), S);
    assert_eq!(
        (st.pause_reason(), st.weight),
        (Some(PauseReason::StateUnwritable), 1000)
    );
    st.handle(&sp, Event::Tick, 60 * S);
    assert_eq!(st.weight, 1000);
}

#[test]
fn manual_weights_pause_and_verbs_follow_the_phase() {
    let sp = spec(vec![w(10), Step::Analysis("slo".into())]);
    let mut st = RolloutState::new(&sp);
    st.handle(&sp, Event::Tick, 0);
    assert_eq!(st.verbs(), [Verb::Promote, Verb::Abort, Verb::Pause]);
    st.handle(&sp, Event::ManualWeight, S);
    assert_eq!(st.pause_reason(), Some(PauseReason::Manual));
    assert_eq!(st.verbs(), [Verb::Promote, Verb::Abort, Verb::Resume]);
}

#[test]
fn background_analysis_aborts_during_a_pause_step() {
    let mut sp = spec(vec![w(10), Step::Pause(None)]);
    sp.background_analysis = Some("slo".into());
    let mut st = RolloutState::new(&sp);
    let a = st.handle(&sp, Event::Tick, 0);
    assert_eq!(st.pause_reason(), Some(PauseReason::Step));
    assert_eq!(
        measures(&a),
        1,
        "background analysis measures during the pause"
    );
    answer(&mut st, &sp, a, Outcome::Failed, 0);
    let a = st.handle(&sp, Event::Tick, 10 * S);
    answer(&mut st, &sp, a, Outcome::Failed, 10 * S);
    assert_eq!(st.phase, Phase::Aborted);
}

#[test]
fn a_late_answer_for_a_finished_gate_is_ignored() {
    let sp = spec(vec![w(10), Step::Analysis("slo".into())]);
    let mut st = RolloutState::new(&sp);
    st.handle(&sp, Event::Tick, 0);
    st.handle(&sp, Event::Promote { full: true }, S);
    let before = st.clone();
    st.handle(
        &sp,
        Event::Measured(measurement("slo", false, Outcome::Failed, true)),
        2 * S,
    );
    assert_eq!(st, before);
}

#[test]
fn promote_after_edited_steps_never_drops_the_weight() {
    let sp = spec(vec![w(10), w(30), Step::Pause(None), w(60)]);
    let mut st = RolloutState::new(&sp);
    st.handle(&sp, Event::Tick, 0);
    let edited = spec(vec![w(5), Step::Pause(None), w(40), Step::Pause(None)]);
    st.handle(
        &edited,
        Event::Edited {
            fingerprint: edited.steps_fingerprint(),
        },
        S,
    );
    st.handle(&edited, Event::Promote { full: false }, 2 * S);
    assert_eq!((st.weight, st.step), (4000, 3), "not back to 5 %");
}

// ---- a fleet: the layer must be verified on every replica before progress ----

#[test]
fn a_fleet_takes_one_layer_change_at_a_time_and_waits_for_it_to_be_verified() {
    let sp = spec(vec![
        w(10),
        w(20),
        Step::Pause(Some(Duration::from_secs(5))),
        w(50),
    ]);
    let mut s = RolloutState::new(&sp);
    let (no, yes) = (InForce::Verified(false), InForce::Verified(true));
    // The first weight is taken (the fleet held the empty layer), then it stops there.
    s.handle_in(&sp, Event::Tick, 0, yes);
    assert_eq!((s.phase, s.step, s.weight), (Phase::Progressing, 1, 1000));
    // Not verified yet: nothing moves, however long it takes.
    s.handle_in(&sp, Event::Tick, 100 * S, no);
    assert_eq!((s.step, s.weight), (1, 1000));
    // Verified: the next weight, and a stop again.
    s.handle_in(&sp, Event::Tick, 101 * S, yes);
    assert_eq!((s.step, s.weight), (2, 2000));
    // Verified again: the pause starts only now.
    s.handle_in(&sp, Event::Tick, 102 * S, yes);
    assert_eq!(s.pause_until, Some(107 * S));
    // A replica falls behind at the pause end: the pause is over but the step waits.
    s.handle_in(&sp, Event::Tick, 108 * S, no);
    assert_eq!((s.phase, s.step, s.weight), (Phase::Paused, 2, 2000));
    s.handle_in(&sp, Event::Tick, 109 * S, yes);
    assert_eq!((s.phase, s.step, s.weight), (Phase::Progressing, 4, 5000));
    // Promotion (past the last step) waits for the last weight to be verified too.
    s.handle_in(&sp, Event::Tick, 110 * S, no);
    assert_eq!(s.phase, Phase::Progressing);
    s.handle_in(&sp, Event::Tick, 111 * S, yes);
    assert_eq!(s.phase, Phase::Succeeded);
}

#[test]
fn a_fleet_aborts_without_waiting_for_any_replica() {
    let sp = spec(vec![w(30), Step::Pause(None)]);
    let mut s = RolloutState::new(&sp);
    s.handle_in(&sp, Event::Tick, 0, InForce::Verified(true));
    s.handle_in(&sp, Event::Tick, S, InForce::Verified(true));
    assert_eq!(s.pause_reason(), Some(PauseReason::Step));
    // An operator's promote is taken but the next step waits; abort does not.
    s.handle_in(
        &sp,
        Event::Promote { full: false },
        2 * S,
        InForce::Verified(false),
    );
    assert_eq!((s.phase, s.step), (Phase::Progressing, 2));
    s.handle_in(&sp, Event::Abort, 3 * S, InForce::Verified(false));
    assert_eq!((s.phase, s.weight), (Phase::Aborted, 0));
    assert_eq!(s.layer().map(|l| l.canary_weight), Some(Weight(0)));
}

#[test]
fn a_rollout_found_on_the_fleet_is_held_at_its_step_and_resumes_there() {
    let sp = spec(vec![w(10), Step::Pause(None), w(40), Step::Pause(None)]);
    let mut s = RolloutState::found(&sp, 3, Weight(4000), Vec::new(), 0);
    assert_eq!(s.pause_reason(), Some(PauseReason::StateLost));
    // The fleet keeps its weight: no sticky user moves back.
    assert_eq!(s.layer().map(|l| l.canary_weight), Some(Weight(4000)));
    assert!(!s.verbs().contains(&Verb::Promote));
    s.handle_in(
        &sp,
        Event::Resume { step: None },
        S,
        InForce::Verified(true),
    );
    assert_eq!((s.phase, s.step, s.weight), (Phase::Paused, 3, 4000));
    assert_eq!(s.pause_reason(), Some(PauseReason::Step));
}
