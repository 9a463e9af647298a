//! Keeping a sidecar's certificate fresh: a new key and certificate at start, again after 70 % of
//! each certificate's remaining lifetime, and retries with backoff when the issuer does not answer,
//! keeping the current certificate until it expires. Consumers (the TLS configurations, `/ready`)
//! follow a [`tokio::sync::watch`] of [`IdentityState`], Linkerd's pattern: each new certificate
//! is published whole, and every new connection takes the latest.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::credentials::{Credentials, PendingKey};
use crate::spiffe::WorkloadId;

/// First retry after a failed request; doubles up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest pause between two failed requests.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// Gets a certificate chain for a key (the issuer's client: a Kubernetes CSR, a test double).
pub trait Certifier: Send + Sync + 'static {
    /// The chain (leaf first) certifying `key`, or why there is none.
    fn certify(
        &self,
        key: &PendingKey,
    ) -> impl Future<Output = Result<Vec<CertificateDer<'static>>, String>> + Send;
}

/// Wall-clock time, for certificate validity (sleeping uses tokio's clock).
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> OffsetDateTime;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// What the sidecar can prove right now.
#[derive(Debug, Clone)]
pub enum IdentityState {
    /// No usable certificate (none yet, or the last one expired), and why.
    Pending {
        /// The last failure, for `/ready` and the log.
        reason: String,
    },
    /// A valid certificate.
    Ready(Arc<Credentials>),
}

impl IdentityState {
    /// The credentials, when ready.
    pub fn credentials(&self) -> Option<&Arc<Credentials>> {
        match self {
            IdentityState::Ready(c) => Some(c),
            IdentityState::Pending { .. } => None,
        }
    }
}

/// Runs until `shutdown`: requests certificates for `id` from `certifier` and publishes each on
/// `states`.
pub async fn run(
    id: WorkloadId,
    certifier: impl Certifier,
    clock: impl Clock,
    states: watch::Sender<IdentityState>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut failures: u32 = 0;
    loop {
        let pause = match renew(&id, &certifier, &clock).await {
            Ok(creds) => {
                failures = 0;
                let pause = creds.refresh_in(clock.now());
                tracing::info!(%id, not_after = %creds.not_after(), next_renewal_in = ?pause, "workload certificate renewed");
                states.send_replace(IdentityState::Ready(Arc::new(creds)));
                pause
            }
            Err(reason) => {
                failures = failures.saturating_add(1);
                let backoff = FIRST_RETRY
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(MAX_RETRY);
                let now = clock.now();
                tracing::warn!(%id, %reason, retry_in = ?backoff, "workload certificate request failed");
                let current = states.borrow().credentials().cloned();
                match current {
                    // Keep serving with the current certificate; retry sooner as expiry nears.
                    Some(creds) if creds.not_after() > now => backoff.min(creds.refresh_in(now)),
                    _ => {
                        states.send_replace(IdentityState::Pending {
                            reason: format!("no certificate for {id}: {reason}"),
                        });
                        backoff
                    }
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = &mut shutdown => return,
        }
    }
}

async fn renew(
    id: &WorkloadId,
    certifier: &impl Certifier,
    clock: &impl Clock,
) -> Result<Credentials, String> {
    let key = PendingKey::generate(id).map_err(|e| e.to_string())?;
    let chain = certifier.certify(&key).await?;
    key.complete(chain, clock.now()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::{Authority, generate_issuer, generate_trust_anchor};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const DAY: Duration = Duration::from_secs(86_400);

    /// Wall time that moves with tokio's (paused) clock.
    struct TestClock {
        start: OffsetDateTime,
        origin: tokio::time::Instant,
    }

    impl Clock for TestClock {
        fn now(&self) -> OffsetDateTime {
            self.start + self.origin.elapsed()
        }
    }

    /// Signs with a real authority, unless told to be down.
    struct Issuer {
        authority: Authority,
        lifetime: Duration,
        down: Arc<AtomicBool>,
        calls: Arc<AtomicUsize>,
        clock: Arc<Mutex<TestClock>>,
    }

    impl Certifier for Issuer {
        async fn certify(&self, key: &PendingKey) -> Result<Vec<CertificateDer<'static>>, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err("issuer unavailable".into());
            }
            let now = self.clock.lock().unwrap().now();
            let id = WorkloadId::new("cluster.local", "shop", "catalog-sidecar").unwrap();
            self.authority
                .sign(&key.csr_der().unwrap(), &id, self.lifetime, now)
                .map(|i| i.chain)
                .map_err(|e| e.to_string())
        }
    }

    struct SharedClock(Arc<Mutex<TestClock>>);

    impl Clock for SharedClock {
        fn now(&self) -> OffsetDateTime {
            self.0.lock().unwrap().now()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renews_before_expiry_and_rides_out_an_issuer_outage() {
        let start = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let anchor = generate_trust_anchor("cluster.local", start, 3650 * DAY).unwrap();
        let issuer = generate_issuer(&anchor, "cluster.local", start, 365 * DAY).unwrap();
        let authority = Authority::new("cluster.local", &issuer, &anchor.cert, start).unwrap();
        let clock = Arc::new(Mutex::new(TestClock {
            start,
            origin: tokio::time::Instant::now(),
        }));
        let down = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let certifier = Issuer {
            authority,
            lifetime: Duration::from_secs(100),
            down: down.clone(),
            calls: calls.clone(),
            clock: clock.clone(),
        };
        let id = WorkloadId::new("cluster.local", "shop", "catalog-sidecar").unwrap();
        let (tx, mut rx) = watch::channel(IdentityState::Pending {
            reason: "starting".into(),
        });
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn({
            let stop = stop.clone();
            run(id, certifier, SharedClock(clock.clone()), tx, async move {
                stop.notified().await
            })
        });
        rx.changed().await.unwrap();
        let first = rx.borrow().credentials().cloned().expect("ready");
        // 100 s certificates, backdated 20 s for skew: renewed after 70 % of the ~100 s left.
        tokio::time::sleep(Duration::from_secs(69)).await;
        assert!(Arc::ptr_eq(rx.borrow().credentials().unwrap(), &first));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let second = rx.borrow().credentials().cloned().expect("ready");
        assert!(!Arc::ptr_eq(&second, &first), "renewed at 70 %");
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // The issuer goes down: the current certificate stays in use until it expires, with
        // retries ever sooner; then the state turns Pending with the reason.
        down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(80)).await;
        assert!(
            Arc::ptr_eq(rx.borrow().credentials().unwrap(), &second),
            "kept while valid"
        );
        let retries = calls.load(Ordering::SeqCst) - 2;
        assert!(retries >= 3, "{retries} retries before expiry");
        tokio::time::sleep(Duration::from_secs(40)).await;
        match &*rx.borrow() {
            IdentityState::Pending { reason } => {
                assert!(reason.contains("issuer unavailable"), "{reason}")
            }
            IdentityState::Ready(_) => panic!("an expired certificate is still offered"),
        }
        // The issuer is back: ready again within one backoff period.
        down.store(false, Ordering::SeqCst);
        tokio::time::sleep(MAX_RETRY + Duration::from_secs(1)).await;
        assert!(rx.borrow().credentials().is_some());
        stop.notify_one();
        task.await.unwrap();
    }
}
