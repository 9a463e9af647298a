//! Fault injection: latency, failure status and hangs, set by flags or through `/admin/fault`.

use std::time::Duration;

use http::StatusCode;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// A fault applied to every data request (everything except `/healthz` and `/admin/*`).
///
/// `latency_ms` is added to every such request. `status` and `hang` are applied to a fraction `rate`
/// (0.0..=1.0, default 1.0) of requests; `hang` wins over `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Extra latency before answering, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Status to answer with instead of the real response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Never answer (until the replica shuts down or the client goes away).
    #[serde(default)]
    pub hang: bool,
    /// Fraction of requests that get `status` or `hang`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
}

/// What to do with one request, after any latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve the request normally.
    Pass,
    /// Answer with this status.
    Fail(StatusCode),
    /// Do not answer.
    Hang,
}

impl Fault {
    /// Checks the ranges a request body or flag could get wrong.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(status) = self.status {
            StatusCode::from_u16(status)
                .map_err(|_| format!("status {status} is not a valid HTTP status"))?;
            if status < 200 {
                return Err(format!("status {status} is informational; use 200..=599"));
            }
        }
        if let Some(rate) = self.rate
            && !(0.0..=1.0).contains(&rate)
        {
            return Err(format!("rate {rate} must be within 0.0..=1.0"));
        }
        Ok(())
    }

    /// The latency to add before answering.
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }

    /// Decides the fate of one request given a uniform random `roll` in `[0, 1)`.
    pub fn decide(&self, roll: f64) -> Decision {
        let hit = roll < self.rate.unwrap_or(1.0);
        if !hit {
            return Decision::Pass;
        }
        if self.hang {
            return Decision::Hang;
        }
        match self.status.and_then(|s| StatusCode::from_u16(s).ok()) {
            Some(code) => Decision::Fail(code),
            None => Decision::Pass,
        }
    }

    /// Whether this fault changes anything at all.
    pub fn is_active(&self) -> bool {
        self.latency_ms > 0 || self.status.is_some() || self.hang
    }
}

/// The currently configured fault, shared by all connections.
#[derive(Debug, Default)]
pub struct FaultState {
    current: RwLock<Fault>,
}

impl FaultState {
    /// Starts with `initial` (usually built from flags).
    pub fn new(initial: Fault) -> Self {
        Self {
            current: RwLock::new(initial),
        }
    }

    /// A copy of the current fault.
    pub fn get(&self) -> Fault {
        self.current.read().clone()
    }

    /// Replaces the current fault.
    pub fn set(&self, fault: Fault) {
        *self.current.write() = fault;
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.set(Fault::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_fault_passes() {
        let f = Fault::default();
        assert!(!f.is_active());
        assert_eq!(f.decide(0.0), Decision::Pass);
    }

    #[test]
    fn status_applies_below_rate_only() {
        let f = Fault {
            status: Some(503),
            rate: Some(0.25),
            ..Fault::default()
        };
        assert_eq!(
            f.decide(0.1),
            Decision::Fail(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(f.decide(0.25), Decision::Pass);
        assert_eq!(f.decide(0.9), Decision::Pass);
    }

    #[test]
    fn hang_wins_over_status() {
        let f = Fault {
            status: Some(500),
            hang: true,
            ..Fault::default()
        };
        assert_eq!(f.decide(0.5), Decision::Hang);
    }

    #[test]
    fn validation_rejects_bad_values() {
        assert!(
            Fault {
                status: Some(99),
                ..Fault::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Fault {
                status: Some(150),
                ..Fault::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Fault {
                rate: Some(1.5),
                ..Fault::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Fault {
                status: Some(503),
                rate: Some(0.5),
                ..Fault::default()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn json_shape_matches_admin_contract() {
        let f: Fault =
            serde_json::from_str(r#"{"latency_ms":50,"status":503,"hang":false,"rate":0.5}"#)
                .unwrap();
        assert_eq!(f.latency(), Duration::from_millis(50));
        assert_eq!(f.status, Some(503));
        assert!(serde_json::from_str::<Fault>(r#"{"stauts":503}"#).is_err());
    }

    #[test]
    fn state_set_and_clear() {
        let s = FaultState::new(Fault {
            hang: true,
            ..Fault::default()
        });
        assert!(s.get().hang);
        s.clear();
        assert_eq!(s.get(), Fault::default());
    }
}
