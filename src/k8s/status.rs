//! Status as canaryd computes it, merged into what an object already reports.
//!
//! Writes are read-modify-write: the caller reads the object, [`route`], [`gateway`] or
//! [`class`] returns its new `status` (or `None` when nothing changes, so an unchanged status
//! is never written and a status write never triggers another), and the caller writes it
//! with the `resourceVersion` it read. Other controllers' entries and conditions are kept as
//! they are; a condition whose status did not change keeps its `lastTransitionTime`.

use super::translate::{CONTROLLER_NAME, Cond, GatewayStatus, RouteStatus};
use serde_json::{Value, json};

/// `conditions` with ours (at `generation`) replacing the same types; others kept.
fn merge_conditions(existing: Option<&Value>, ours: &[Cond], generation: i64, now: &str) -> Value {
    let old: Vec<Value> = existing
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<Value> = old
        .iter()
        .filter(|c| {
            let t = c.get("type").and_then(Value::as_str).unwrap_or("");
            !ours.iter().any(|o| o.kind == t)
        })
        .cloned()
        .collect();
    for c in ours {
        let status = if c.status { "True" } else { "False" };
        let since = old
            .iter()
            .find(|o| {
                o.get("type").and_then(Value::as_str) == Some(c.kind)
                    && o.get("status").and_then(Value::as_str) == Some(status)
            })
            .and_then(|o| o.get("lastTransitionTime"))
            .and_then(Value::as_str)
            .unwrap_or(now);
        out.push(json!({
            "type": c.kind,
            "status": status,
            "reason": c.reason,
            "message": c.message,
            "observedGeneration": generation,
            "lastTransitionTime": since,
        }));
    }
    Value::Array(out)
}

/// The new `status` of an HTTPRoute whose current one is `existing`: our parent entries
/// replaced by `ours` (an entry per parentRef canaryd implements), other controllers'
/// entries untouched. `ours = None` removes our entries (the route no longer attaches to a
/// Gateway of ours).
pub fn route(existing: &Value, ours: Option<&RouteStatus>, now: &str) -> Option<Value> {
    let old: Vec<Value> = existing
        .get("parents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_ours =
        |p: &Value| p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME);
    let entry = |parent_ref: &Value, conds: &[Cond], prev: Option<&Value>, generation: i64| {
        json!({
            "parentRef": parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": merge_conditions(
                prev.and_then(|p| p.get("conditions")),
                conds,
                generation,
                now,
            ),
        })
    };
    let wanted: &[(Value, Vec<Cond>)] = ours.map_or(&[], |o| o.parents.as_slice());
    let generation = ours.map_or(0, |o| o.generation);
    // Entries keep their places: others' untouched, ours updated in place or dropped; new
    // ones of ours go at the end.
    let mut parents: Vec<Value> = Vec::with_capacity(old.len() + wanted.len());
    for p in &old {
        if !is_ours(p) {
            parents.push(p.clone());
            continue;
        }
        if let Some((pr, conds)) = wanted.iter().find(|(pr, _)| p.get("parentRef") == Some(pr)) {
            parents.push(entry(pr, conds, Some(p), generation));
        }
    }
    for (pr, conds) in wanted {
        let present = old
            .iter()
            .any(|p| is_ours(p) && p.get("parentRef") == Some(pr));
        if !present {
            parents.push(entry(pr, conds, None, generation));
        }
    }
    let mut status = existing.as_object().cloned().unwrap_or_default();
    status.insert("parents".into(), Value::Array(parents));
    let status = Value::Object(status);
    (status != *existing && !(old.is_empty() && ours.is_none())).then_some(status)
}

/// The new `status` of a Gateway of our class.
pub fn gateway(existing: &Value, ours: &GatewayStatus, now: &str) -> Option<Value> {
    let mut status = existing.as_object().cloned().unwrap_or_default();
    status.insert(
        "conditions".into(),
        merge_conditions(
            existing.get("conditions"),
            &ours.conditions,
            ours.generation,
            now,
        ),
    );
    let old_listeners: Vec<Value> = existing
        .get("listeners")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let listeners: Vec<Value> = ours
        .listeners
        .iter()
        .map(|(name, attached, conds)| {
            let prev = old_listeners
                .iter()
                .find(|l| l.get("name").and_then(Value::as_str) == Some(name));
            json!({
                "name": name,
                "supportedKinds": [{"group": super::objects::GATEWAY_GROUP, "kind": "HTTPRoute"}],
                "attachedRoutes": attached,
                "conditions": merge_conditions(
                    prev.and_then(|l| l.get("conditions")),
                    conds,
                    ours.generation,
                    now,
                ),
            })
        })
        .collect();
    status.insert("listeners".into(), Value::Array(listeners));
    let status = Value::Object(status);
    (status != *existing).then_some(status)
}

/// The new `status` of a GatewayClass with our controllerName.
pub fn class(existing: &Value, generation: i64, ours: &[Cond], now: &str) -> Option<Value> {
    let mut status = existing.as_object().cloned().unwrap_or_default();
    status.insert(
        "conditions".into(),
        merge_conditions(existing.get("conditions"), ours, generation, now),
    );
    let status = Value::Object(status);
    (status != *existing).then_some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(status: bool) -> Vec<Cond> {
        vec![Cond {
            kind: "Accepted",
            status,
            reason: if status {
                "Accepted"
            } else {
                "NoMatchingParent"
            }
            .into(),
            message: String::new(),
        }]
    }

    #[test]
    fn other_controllers_entries_are_kept_and_ours_replaced() {
        let pr = json!({"name": "gw"});
        let other = json!({"parentRef": {"name": "gw"}, "controllerName": "example.com/other",
            "conditions": [{"type": "Accepted", "status": "False"}]});
        let existing = json!({"parents": [other.clone()]});
        let ours = RouteStatus {
            generation: 3,
            parents: vec![(pr.clone(), accepted(true))],
        };
        let s = route(&existing, Some(&ours), "2026-12-01T00:00:00Z").unwrap();
        let parents = s["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0], other);
        assert_eq!(parents[1]["parentRef"], pr);
        assert_eq!(parents[1]["conditions"][0]["observedGeneration"], 3);
        // Another controller adding its entry after ours moves nothing: no write.
        let mut with_late = s.clone();
        let late = json!({"parentRef": {"name": "late"}, "controllerName": "example.com/late"});
        with_late["parents"].as_array_mut().unwrap().push(late);
        assert_eq!(route(&with_late, Some(&ours), "2026-12-01T00:06:00Z"), None);
        // Written again with nothing changed: no write.
        assert_eq!(route(&s, Some(&ours), "2026-12-01T00:05:00Z"), None);
        // A transition gets a new time; the same status keeps the old one.
        let later = RouteStatus {
            generation: 4,
            parents: vec![(pr.clone(), accepted(true))],
        };
        let s2 = route(&s, Some(&later), "2026-12-01T00:09:00Z").unwrap();
        assert_eq!(
            s2["parents"][1]["conditions"][0]["lastTransitionTime"],
            "2026-12-01T00:00:00Z"
        );
        let refused = RouteStatus {
            generation: 4,
            parents: vec![(pr, accepted(false))],
        };
        let s3 = route(&s2, Some(&refused), "2026-12-01T00:10:00Z").unwrap();
        assert_eq!(
            s3["parents"][1]["conditions"][0]["lastTransitionTime"],
            "2026-12-01T00:10:00Z"
        );
        // Detached: our entry goes, the other controller's stays.
        let s4 = route(&s3, None, "2026-12-01T00:11:00Z").unwrap();
        assert_eq!(s4["parents"].as_array().unwrap(), &vec![other]);
    }
}
