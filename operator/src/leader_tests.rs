//! The elector against an in-memory Lease API with the apiserver's resourceVersion rules, on
//! tokio's paused clock. The e2e suite repeats the skew, black-hole and freeze cases against a
//! real kube-apiserver and judges them from its audit log.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use jiff::{SignedDuration, Timestamp};
use parking_lot::Mutex;

use super::*;

const NS: &str = "ops";
const NAME: &str = "datastream-operator";

/// One Lease, as the apiserver stores it.
#[derive(Default)]
struct LeaseStore {
    lease: Option<serde_json::Value>,
    version: u64,
    writes: Vec<String>,
}

/// The store, seen through one connection that can be cut: a cut connection's requests hang,
/// as they do when a connection black-holes.
#[derive(Clone, Default)]
struct FakeApi {
    store: Arc<Mutex<LeaseStore>>,
    black_hole: Arc<std::sync::atomic::AtomicBool>,
}

fn status(code: u16, reason: &str) -> (StatusCode, serde_json::Value) {
    (
        StatusCode::from_u16(code).unwrap(),
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": reason, "message": reason, "code": code}),
    )
}

impl FakeApi {
    fn client(&self) -> Client {
        let fake = self.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let fake = fake.clone();
            async move {
                if fake.black_hole.load(std::sync::atomic::Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                let (parts, body) = request.into_parts();
                let bytes = body.collect().await.unwrap().to_bytes();
                let (code, answer) = fake.answer(&parts.method, parts.uri.path(), &bytes);
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(serde_json::to_vec(&answer).unwrap())))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        Client::new(service, NS)
    }

    fn answer(&self, method: &Method, path: &str, body: &[u8]) -> (StatusCode, serde_json::Value) {
        let mut store = self.store.lock();
        let collection = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases");
        let item = format!("{collection}/{NAME}");
        match (method.clone(), path) {
            (Method::GET, p) if p == item => match &store.lease {
                Some(lease) => (StatusCode::OK, lease.clone()),
                None => status(404, "NotFound"),
            },
            (Method::POST, p) if p == collection => {
                if store.lease.is_some() {
                    return status(409, "AlreadyExists");
                }
                let mut lease: serde_json::Value = serde_json::from_slice(body).unwrap();
                store.version += 1;
                lease["metadata"]["resourceVersion"] = store.version.to_string().into();
                store.writes.push(holder_of(&lease));
                store.lease = Some(lease.clone());
                (StatusCode::CREATED, lease)
            }
            (Method::PUT, p) if p == item => {
                let mut lease: serde_json::Value = serde_json::from_slice(body).unwrap();
                if lease["metadata"]["resourceVersion"] != store.version.to_string().as_str() {
                    return status(409, "Conflict");
                }
                store.version += 1;
                lease["metadata"]["resourceVersion"] = store.version.to_string().into();
                store.writes.push(holder_of(&lease));
                store.lease = Some(lease.clone());
                (StatusCode::OK, lease)
            }
            _ => status(404, "NotFound"),
        }
    }

    /// Writes the Lease as another replica would, with its own (possibly skewed) renew time.
    fn write_as(&self, holder: &str, renew_time: Timestamp) {
        let mut store = self.store.lock();
        store.version += 1;
        store.lease = Some(serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": NAME, "namespace": NS, "resourceVersion": store.version.to_string()},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": MicroTime(renew_time), "acquireTime": MicroTime(renew_time)}
        }));
    }

    fn holder(&self) -> String {
        self.store
            .lock()
            .lease
            .as_ref()
            .map(holder_of)
            .unwrap_or_default()
    }

    /// Another connection to the same store.
    fn connection(&self) -> FakeApi {
        FakeApi {
            store: self.store.clone(),
            black_hole: Arc::default(),
        }
    }

    fn cut(&self) {
        self.black_hole
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn holder_of(lease: &serde_json::Value) -> String {
    lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn elector(api: &FakeApi, identity: &str) -> Elector {
    Elector::new(api.client(), NS, NAME, identity, Timing::default())
}

/// Runs `acquire` and returns how long it took.
async fn time_to_acquire(elector: &mut Elector) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(600), elector.acquire())
        .await
        .expect("acquired within 10 minutes");
    started.elapsed()
}

#[test]
fn timing_must_keep_the_leaders_term_inside_the_standbys_wait() {
    assert_eq!(Timing::default().validate(), Ok(()));
    let timing = |lease, renew, retry, request| Timing {
        lease_duration: Duration::from_secs(lease),
        renew_deadline: Duration::from_secs(renew),
        retry_period: Duration::from_secs(retry),
        request_timeout: Duration::from_secs(request),
    };
    assert!(matches!(
        timing(10, 10, 2, 4).validate(),
        Err(TimingError::RenewDeadlineNotBelowLeaseDuration { .. })
    ));
    assert!(matches!(
        timing(15, 10, 10, 4).validate(),
        Err(TimingError::RetryPeriodNotBelowRenewDeadline { .. })
    ));
    assert!(matches!(
        timing(15, 10, 2, 10).validate(),
        Err(TimingError::RequestTimeoutNotBelowRenewDeadline { .. })
    ));
    let fractional = Timing {
        lease_duration: Duration::from_millis(15_500),
        ..Timing::default()
    };
    assert!(matches!(
        fractional.validate(),
        Err(TimingError::LeaseDurationNotWholeSeconds(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn an_absent_lease_is_created_and_leadership_lasts_one_renew_deadline() {
    let api = FakeApi::default();
    let mut a = elector(&api, "a");
    assert!(!a.leadership().is_leading());
    assert!(time_to_acquire(&mut a).await < Duration::from_millis(10));
    assert_eq!(api.holder(), "a");
    let leadership = a.leadership();
    assert!(leadership.is_leading());
    // Nobody renews: the term ends one renew deadline after the acquiring attempt started.
    tokio::time::sleep(Duration::from_millis(9_990)).await;
    assert!(leadership.is_leading());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!leadership.is_leading());
}

#[tokio::test(start_paused = true)]
async fn a_holder_whose_clock_runs_ahead_is_taken_over_after_one_lease_duration() {
    // The holder's clock is 30 s ahead: judged by renewTime, its lease would look valid for
    // 45 s. Judged by when the standby saw the Lease change, it is valid for 15 s.
    let api = FakeApi::default();
    api.write_as("skewed", Timestamp::now() + SignedDuration::from_secs(30));
    let mut b = elector(&api, "b");
    let took = time_to_acquire(&mut b).await;
    assert_eq!(api.holder(), "b");
    assert!(
        took >= Duration::from_secs(15) && took <= Duration::from_secs(15 + 2),
        "took {took:?}; lease duration 15 s, retry period 2 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_holder_whose_clock_runs_behind_keeps_its_lease_while_it_renews() {
    // The holder's clock is 30 s behind: judged by renewTime its lease would look expired at
    // every look. It renews every 2 s, so the standby must never take over.
    let api = FakeApi::default();
    let renewer = {
        let api = api.clone();
        tokio::spawn(async move {
            loop {
                api.write_as("behind", Timestamp::now() - SignedDuration::from_secs(30));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let mut b = elector(&api, "b");
    let attempt = tokio::time::timeout(Duration::from_secs(120), b.acquire()).await;
    assert!(attempt.is_err(), "the standby took a renewed lease over");
    assert_eq!(api.holder(), "behind");
    renewer.abort();
    // Once the holder stops, the standby takes over within lease duration + retry period.
    let took = time_to_acquire(&mut b).await;
    assert!(took <= Duration::from_secs(15 + 2), "took {took:?}");
    assert_eq!(api.holder(), "b");
}

#[tokio::test(start_paused = true)]
async fn a_leader_cut_off_from_the_apiserver_stops_before_a_standby_may_take_over() {
    let api = FakeApi::default();
    let mut a = elector(&api, "a");
    time_to_acquire(&mut a).await;
    let leadership = a.leadership();
    let holder = tokio::spawn(async move {
        let lost = a.hold().await;
        (lost, Instant::now())
    });
    // The standby has its own, working connection.
    let mut b = elector(&api.connection(), "b");
    let standby = tokio::spawn(async move {
        b.acquire().await;
        Instant::now()
    });
    // Let a few renewals go through, then cut the leader off: its requests hang forever.
    tokio::time::sleep(Duration::from_secs(7)).await;
    api.cut();
    let cut = Instant::now();
    let (lost, lost_at) = holder.await.unwrap();
    assert!(matches!(lost, LostLease::RenewDeadline { .. }), "{lost:?}");
    assert!(!leadership.is_leading());
    // The last renewal started at most one retry period before the cut; the term ends one renew
    // deadline after that renewal started.
    assert!(
        lost_at - cut <= Duration::from_secs(10),
        "stopped {:?} after the cut",
        lost_at - cut
    );
    let acquired_at = standby.await.unwrap();
    assert!(
        acquired_at > lost_at,
        "the standby acquired {:?} before the leader stopped",
        lost_at - acquired_at
    );
    // Within lease duration + retry period of the leader's last renewal, itself before the cut.
    assert!(
        acquired_at - cut <= Duration::from_secs(15 + 2),
        "takeover {:?} after the cut",
        acquired_at - cut
    );
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_finds_another_holder_revokes_its_term_at_once() {
    let api = FakeApi::default();
    let mut a = elector(&api, "a");
    time_to_acquire(&mut a).await;
    let leadership = a.leadership();
    api.write_as("usurper", Timestamp::now());
    let lost = a.hold().await;
    assert!(
        matches!(&lost, LostLease::TakenOver { holder, .. } if holder == "usurper"),
        "{lost:?}"
    );
    assert!(!leadership.is_leading());
    assert_eq!(
        lost.to_string(),
        format!("lost the leader lease {NAME}: usurper holds it")
    );
}

#[tokio::test(start_paused = true)]
async fn release_hands_the_lease_over_only_while_the_term_runs() {
    let api = FakeApi::default();
    let mut a = elector(&api, "a");
    time_to_acquire(&mut a).await;
    a.release().await;
    assert_eq!(api.holder(), "");
    assert!(!a.leadership().is_leading());
    // A standby sees a released Lease as free at once.
    let mut b = elector(&api, "b");
    assert!(time_to_acquire(&mut b).await < Duration::from_millis(10));

    // After its term ended, a replica must not touch the Lease: another may hold it.
    let writes_before = api.store.lock().writes.len();
    a.release().await;
    assert_eq!(api.store.lock().writes.len(), writes_before);
    assert_eq!(api.holder(), "b");
}
