//! Status conditions in the standard Kubernetes shape, following kstatus.
//!
//! Every kind reports `Ready`, `Reconciling` and `Stalled`, so `kubectl wait
//! --for=condition=Ready`, Argo CD's health assessment and Flux's health checks work without
//! custom rules. Conditions are kept in a list keyed by `type`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition types every Portcullis resource reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// The resource's desired state is in force.
    Ready,
    /// The operator is still working towards the desired state.
    Reconciling,
    /// The operator cannot make progress without a change from the user.
    Stalled,
}

impl ConditionType {
    /// The condition's `type` as written in status.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Reconciling => "Reconciling",
            Self::Stalled => "Stalled",
        }
    }
}

/// Builds a condition of `type_` with a machine-readable `reason` and a human `message`.
pub fn condition(
    type_: ConditionType,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.as_str().to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// Inserts or replaces the condition of the same type, keeping its last transition time
/// when its status did not change (so a re-reconcile with the same outcome writes nothing new).
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = new;
        }
        None => conditions.push(new),
    }
}

/// Where a resource stands, in kstatus terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The desired state is in force: Ready True.
    Ready,
    /// The operator is working towards it: Reconciling True.
    Progressing,
    /// Only a change by the user can help: Stalled True.
    Stalled,
}

/// Sets Ready, Reconciling and Stalled together for `phase`. `message` goes on Ready and on
/// the condition that is True, so `kubectl get` and `kubectl wait` both say why.
pub fn set_phase(
    conditions: &mut Vec<Condition>,
    phase: Phase,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: &Time,
) {
    let statuses = [
        (ConditionType::Ready, phase == Phase::Ready),
        (ConditionType::Reconciling, phase == Phase::Progressing),
        (ConditionType::Stalled, phase == Phase::Stalled),
    ];
    for (type_, status) in statuses {
        let text = if status || type_ == ConditionType::Ready {
            message
        } else {
            ""
        };
        set_condition(
            conditions,
            condition(
                type_,
                status,
                reason,
                text,
                observed_generation,
                now.clone(),
            ),
        );
    }
}

/// Finds the condition of `type_`.
pub fn find(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: ConditionType) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn same_status_keeps_the_transition_time_and_updates_the_message() {
        let mut conditions = vec![];
        set_condition(
            &mut conditions,
            condition(ConditionType::Ready, false, "Pending", "a", Some(1), at(10)),
        );
        set_condition(
            &mut conditions,
            condition(ConditionType::Ready, false, "Pending", "b", Some(2), at(20)),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, at(10));
        assert_eq!(conditions[0].message, "b");
        assert_eq!(conditions[0].observed_generation, Some(2));
    }

    #[test]
    fn a_phase_sets_all_three_conditions_with_the_message_where_it_matters() {
        let mut conditions = vec![];
        set_phase(
            &mut conditions,
            Phase::Stalled,
            "MissingReference",
            "no policy",
            Some(4),
            &at(10),
        );
        assert_eq!(conditions.len(), 3);
        assert!(is_true(&conditions, ConditionType::Stalled));
        assert!(!is_true(&conditions, ConditionType::Ready));
        assert_eq!(
            find(&conditions, ConditionType::Ready).unwrap().message,
            "no policy"
        );
        assert_eq!(
            find(&conditions, ConditionType::Reconciling)
                .unwrap()
                .message,
            ""
        );
        set_phase(
            &mut conditions,
            Phase::Ready,
            "Ready",
            "running",
            Some(5),
            &at(20),
        );
        assert!(is_true(&conditions, ConditionType::Ready));
        assert_eq!(
            find(&conditions, ConditionType::Stalled).unwrap().message,
            ""
        );
        assert_eq!(
            find(&conditions, ConditionType::Reconciling)
                .unwrap()
                .last_transition_time,
            at(10)
        );
    }

    #[test]
    fn a_status_change_moves_the_transition_time() {
        let mut conditions = vec![];
        set_condition(
            &mut conditions,
            condition(ConditionType::Ready, false, "Pending", "", None, at(10)),
        );
        set_condition(
            &mut conditions,
            condition(ConditionType::Stalled, false, "Ok", "", None, at(10)),
        );
        set_condition(
            &mut conditions,
            condition(ConditionType::Ready, true, "Ready", "", None, at(30)),
        );
        assert_eq!(conditions.len(), 2);
        assert_eq!(
            find(&conditions, ConditionType::Ready)
                .unwrap()
                .last_transition_time,
            at(30)
        );
        assert!(is_true(&conditions, ConditionType::Ready));
        assert!(!is_true(&conditions, ConditionType::Stalled));
        assert!(!is_true(&conditions, ConditionType::Reconciling));
    }
}
