//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics.
//!
//! One operator replica holds the Lease and reconciles; the others wait. Three rules keep two
//! replicas from ever writing at once, whatever the replicas' wall clocks say:
//!
//! - **Expiry is judged from local observation, never from the holder's timestamps.** A standby
//!   remembers the local monotonic instant at which it last saw the Lease change (its
//!   resourceVersion); it may take the Lease over only once `leaseDurationSeconds` have passed
//!   on its own clock since then. The `renewTime` written by another replica is never compared
//!   with the local clock, so clock skew between replicas does not matter (client-go's
//!   `observedTime`).
//! - **The leader's term is counted from the start of its last successful renewal.** A renewal
//!   sent at instant `t` reaches the apiserver after `t`, and a standby observes it later still,
//!   so the leader's right to write ends at `t + renew_deadline`, before any standby's
//!   `observed + lease_duration`. [`Leadership`] holds that instant, and the [`fence`] refuses
//!   every write the controller attempts after it, even if the renewing task is starved or the
//!   whole process was frozen.
//! - **Every request of the elector has a deadline** shorter than the renew deadline (and never
//!   past the end of the current term), so a connection that black-holes cannot keep the
//!   elector waiting while its term runs out.
//!
//! Updates carry the Lease's resourceVersion, so two candidates can never both win a race: the
//! loser gets 409 Conflict. Defaults (15 s / 10 s / 2 s) are controller-runtime's.
//!
//! `kube-lease-manager` (0.13, kube 5) was considered and not used: it computes expiry as the
//! holder's `renewTime` plus the duration against the local wall clock, the very behaviour that
//! lets skewed replicas overlap.
//!
//! [`fence`]: crate::fence

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Timing of the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a standby waits, from the last change of the Lease it observed, before it may
    /// take the Lease over.
    pub lease_duration: Duration,
    /// How long the leader's term lasts after the start of its last successful renewal; it
    /// stops writing at the end of the term.
    pub renew_deadline: Duration,
    /// Interval between attempts to acquire or renew.
    pub retry_period: Duration,
    /// Deadline of each request to the apiserver.
    pub request_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            request_timeout: Duration::from_secs(4),
        }
    }
}

/// Why a [`Timing`] cannot keep two leaders apart.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimingError {
    /// The leader's term would outlast the time a standby waits.
    #[error(
        "the renew deadline ({renew_deadline:?}) must be shorter than the lease duration ({lease_duration:?})"
    )]
    RenewDeadlineNotBelowLeaseDuration {
        /// The renew deadline given.
        renew_deadline: Duration,
        /// The lease duration given.
        lease_duration: Duration,
    },
    /// The leader could not try to renew even once within its term.
    #[error(
        "the retry period ({retry_period:?}) must be shorter than the renew deadline ({renew_deadline:?})"
    )]
    RetryPeriodNotBelowRenewDeadline {
        /// The retry period given.
        retry_period: Duration,
        /// The renew deadline given.
        renew_deadline: Duration,
    },
    /// One hanging request could use up the whole term.
    #[error(
        "the request timeout ({request_timeout:?}) must be shorter than the renew deadline ({renew_deadline:?})"
    )]
    RequestTimeoutNotBelowRenewDeadline {
        /// The request timeout given.
        request_timeout: Duration,
        /// The renew deadline given.
        renew_deadline: Duration,
    },
    /// The Lease stores whole seconds.
    #[error("the lease duration must be a whole number of seconds, at least 1 s (got {0:?})")]
    LeaseDurationNotWholeSeconds(Duration),
}

impl Timing {
    /// Checks the ordering client-go requires: request timeout and retry period below the renew
    /// deadline, which is below the lease duration.
    pub fn validate(&self) -> Result<(), TimingError> {
        if self.lease_duration.subsec_nanos() != 0 || self.lease_duration.as_secs() == 0 {
            return Err(TimingError::LeaseDurationNotWholeSeconds(
                self.lease_duration,
            ));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(TimingError::RenewDeadlineNotBelowLeaseDuration {
                renew_deadline: self.renew_deadline,
                lease_duration: self.lease_duration,
            });
        }
        if self.retry_period >= self.renew_deadline {
            return Err(TimingError::RetryPeriodNotBelowRenewDeadline {
                retry_period: self.retry_period,
                renew_deadline: self.renew_deadline,
            });
        }
        if self.request_timeout >= self.renew_deadline {
            return Err(TimingError::RequestTimeoutNotBelowRenewDeadline {
                request_timeout: self.request_timeout,
                renew_deadline: self.renew_deadline,
            });
        }
        Ok(())
    }
}

/// Whether this replica may write now: the end of its current term, shared between the elector
/// that extends it and the write [`fence`](crate::fence) that checks it.
#[derive(Clone, Debug, Default)]
pub struct Leadership {
    term_ends: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// Leadership that never ends, for a single replica run without election.
    pub fn unconditional() -> Self {
        let leadership = Leadership::default();
        // About 30 years: Instant has no "forever", and adding more may overflow.
        leadership.extend_to(Instant::now() + Duration::from_secs(30 * 365 * 24 * 3600));
        leadership
    }

    /// Whether the current term is still running.
    pub fn is_leading(&self) -> bool {
        self.term_ends().is_some_and(|end| Instant::now() < end)
    }

    /// The end of the current term, if there is one.
    pub fn term_ends(&self) -> Option<Instant> {
        *self.term_ends.lock()
    }

    pub(crate) fn extend_to(&self, end: Instant) {
        let mut term = self.term_ends.lock();
        // A late answer to an older renewal must not shorten nor revive a term.
        if term.is_none_or(|current| end > current) {
            *term = Some(end);
        }
    }

    /// Ends the term now.
    pub fn revoke(&self) {
        *self.term_ends.lock() = Some(Instant::now());
    }
}

/// The Lease as last observed, and when (on the local monotonic clock).
#[derive(Debug)]
struct Observed {
    resource_version: String,
    at: Instant,
}

/// One candidate for leadership.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    leadership: Leadership,
    observed: Option<Observed>,
}

/// Why leadership ended.
#[derive(Debug, thiserror::Error)]
pub enum LostLease {
    /// No renewal succeeded within the renew deadline.
    #[error("lost the leader lease {lease}: could not renew it within {deadline:?}")]
    RenewDeadline {
        /// The Lease's name.
        lease: String,
        /// The renew deadline that passed.
        deadline: Duration,
    },
    /// Another replica holds the Lease (it was taken over while this one could not renew).
    #[error("lost the leader lease {lease}: {holder} holds it")]
    TakenOver {
        /// The Lease's name.
        lease: String,
        /// The replica that holds it now.
        holder: String,
    },
}

/// Outcome of one attempt to acquire or renew.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// This candidate holds the Lease now.
    Held,
    /// Another candidate validly holds it; unless the Lease changes, it may be taken over at
    /// `free_at`.
    HeldBy {
        holder: String,
        free_at: Option<Instant>,
    },
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("the apiserver did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Api(#[from] kube::Error),
}

fn wall_now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl Elector {
    /// A candidate `identity` for the Lease `namespace/name`. The caller checks `timing` with
    /// [`Timing::validate`].
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
            leadership: Leadership::default(),
            observed: None,
        }
    }

    /// The term this elector extends; give it to the write fence.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&mut self) {
        let mut standing_by_for = None;
        loop {
            let deadline = Instant::now() + self.timing.request_timeout;
            match self.try_acquire_or_renew(deadline).await {
                Ok(Attempt::Held) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(Attempt::HeldBy { holder, free_at }) => {
                    if standing_by_for.as_ref() != Some(&holder) {
                        info!(lease = %self.name, %holder, "another replica leads; standing by");
                        standing_by_for = Some(holder);
                    }
                    // Try again when the Lease may be free if that comes before the next retry:
                    // the takeover then stays within lease duration + retry period of the
                    // holder's last renewal (the retry period bounds how late we saw it).
                    let next = Instant::now() + self.timing.retry_period;
                    tokio::time::sleep_until(free_at.map_or(next, |free| free.min(next))).await;
                    continue;
                }
                Err(error) => warn!(%error, lease = %self.name, "leader election attempt failed"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews the Lease every retry period until the term ends without a renewal, or another
    /// replica holds the Lease; then revokes the term and says why.
    pub async fn hold(&mut self) -> LostLease {
        loop {
            let Some(term_ends) = self.leadership.term_ends() else {
                return self.lost_deadline();
            };
            tokio::time::sleep_until(term_ends.min(Instant::now() + self.timing.retry_period))
                .await;
            if Instant::now() >= term_ends {
                return self.lost_deadline();
            }
            let deadline = term_ends.min(Instant::now() + self.timing.request_timeout);
            match self.try_acquire_or_renew(deadline).await {
                Ok(Attempt::Held) => {}
                Ok(Attempt::HeldBy { holder, .. }) => {
                    self.leadership.revoke();
                    return LostLease::TakenOver {
                        lease: self.name.clone(),
                        holder,
                    };
                }
                Err(error) => {
                    warn!(%error, lease = %self.name, "renewing the leader lease failed");
                    if Instant::now() >= term_ends {
                        return self.lost_deadline();
                    }
                }
            }
        }
    }

    fn lost_deadline(&self) -> LostLease {
        self.leadership.revoke();
        LostLease::RenewDeadline {
            lease: self.name.clone(),
            deadline: self.timing.renew_deadline,
        }
    }

    /// Gives the Lease up so a standby can take over at once (on graceful shutdown). Only while
    /// the term still runs: after it, another replica may hold the Lease.
    pub async fn release(&mut self) {
        let Some(term_ends) = self
            .leadership
            .term_ends()
            .filter(|_| self.leadership.is_leading())
        else {
            return;
        };
        self.leadership.revoke();
        let deadline = term_ends.min(Instant::now() + self.timing.request_timeout);
        let result = tokio::time::timeout_at(deadline, async {
            let mut lease = self.api.get(&self.name).await?;
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(&self.identity) {
                return Ok(false);
            }
            // client-go's release: no holder, a one-second duration, times of now.
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(wall_now());
            spec.acquire_time = Some(wall_now());
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| true)
        })
        .await;
        match result {
            Ok(Ok(true)) => info!(lease = %self.name, "released the leader lease"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => warn!(%error, "could not release the leader lease"),
            Err(_) => warn!("could not release the leader lease: the apiserver did not answer"),
        }
    }

    /// One attempt, every request of it finished by `deadline`.
    async fn try_acquire_or_renew(&mut self, deadline: Instant) -> Result<Attempt, AttemptError> {
        let started = Instant::now();
        let budget = deadline.saturating_duration_since(started);
        let outcome = tokio::time::timeout_at(deadline, self.attempt()).await;
        let outcome = outcome.unwrap_or(Err(AttemptError::Timeout(budget)));
        if let Ok(Attempt::Held) = outcome {
            self.leadership
                .extend_to(started + self.timing.renew_deadline);
        }
        outcome
    }

    async fn attempt(&mut self) -> Result<Attempt, AttemptError> {
        let lease_seconds = self.timing.lease_duration.as_secs() as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(lease_seconds),
                    acquire_time: Some(wall_now()),
                    renew_time: Some(wall_now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created, Instant::now());
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldBy {
                    holder: "a replica that created it first".into(),
                    free_at: None,
                }),
                Err(e) => Err(e.into()),
            };
        };
        let now = Instant::now();
        self.observe(&lease, now);
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        if !ours && !holder.is_empty() {
            let duration = spec
                .lease_duration_seconds
                .filter(|s| *s > 0)
                .map_or(self.timing.lease_duration, |s| {
                    Duration::from_secs(s as u64)
                });
            let observed_at = self.observed.as_ref().map_or(now, |o| o.at);
            let free_at = observed_at + duration;
            if now < free_at {
                return Ok(Attempt::HeldBy {
                    holder,
                    free_at: Some(free_at),
                });
            }
            debug!(lease = %self.name, %holder, ?duration, "the lease was not renewed for its duration; taking it over");
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(wall_now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(lease_seconds);
        spec.renew_time = Some(wall_now());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observe(&written, Instant::now());
                Ok(Attempt::Held)
            }
            // Someone else wrote the Lease since our read: they won this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldBy {
                holder: "a replica that updated it first".into(),
                free_at: None,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Records the Lease's version; the observation time moves only when the version changed.
    fn observe(&mut self, lease: &Lease, at: Instant) {
        let version = lease.resource_version().unwrap_or_default();
        if self
            .observed
            .as_ref()
            .is_none_or(|o| o.resource_version != version)
        {
            self.observed = Some(Observed {
                resource_version: version,
                at,
            });
        }
    }
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
