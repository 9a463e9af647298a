//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics.
//!
//! One operator replica holds the Lease and reconciles; the others wait. The holder renews every
//! `retry_period`; if it cannot renew within `renew_deadline` it gives up leadership, and the
//! process exits so that it never reconciles while another replica might. A standby takes over
//! once the Lease has not been renewed for `lease_duration`. Defaults (15 s / 10 s / 2 s) are
//! controller-runtime's. Updates use the Lease's resourceVersion, so two candidates can never
//! both win: the loser gets a 409 Conflict.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::{info, warn};

/// Timing of the election.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before giving up leadership.
    pub renew_deadline: Duration,
    /// Interval between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate for leadership.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
}

/// Why leadership ended.
#[derive(Debug, thiserror::Error)]
#[error("lost the leader lease {lease}: could not renew it for {deadline:?}")]
pub struct LostLease {
    /// The Lease's name.
    pub lease: String,
    /// The renew deadline that passed.
    pub deadline: Duration,
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl Elector {
    /// A candidate `identity` for the Lease `namespace/name`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timing,
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self) {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) => {
                    if !logged {
                        info!(lease = %self.name, "another replica leads; standing by");
                        logged = true;
                    }
                }
                Err(error) => warn!(%error, lease = %self.name, "leader election attempt failed"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews the Lease until renewal fails for longer than the renew deadline, then returns why.
    pub async fn hold(&self) -> LostLease {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    return LostLease {
                        lease: self.name.clone(),
                        deadline: self.timing.renew_deadline,
                    };
                }
                Err(error) => warn!(%error, "renewing the leader lease failed"),
            }
            if last_renewal.elapsed() >= self.timing.renew_deadline {
                return LostLease {
                    lease: self.name.clone(),
                    deadline: self.timing.renew_deadline,
                };
            }
        }
    }

    /// Gives the Lease up so a standby can take over at once (on graceful shutdown).
    pub async fn release(&self) {
        let Ok(mut lease) = self.api.get(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.name, "released the leader lease"),
            Err(error) => warn!(%error, "could not release the leader lease"),
        }
    }

    /// One attempt. `Ok(true)`: we hold the Lease now; `Ok(false)`: someone else validly does.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let lease_seconds = self.timing.lease_duration.as_secs() as i32;
        let existing = self.api.get_opt(&self.name).await?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(lease_seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let held = spec
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(seconds)) => {
                let valid_until = renewed.0 + jiff::SignedDuration::from_secs(seconds.into());
                valid_until < jiff::Timestamp::now()
            }
            _ => true,
        };
        if !ours && held && !expired {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(lease_seconds);
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
