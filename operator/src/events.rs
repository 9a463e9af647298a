//! Publishing Kubernetes Events (`events.k8s.io/v1`), folded into series.
//!
//! The same event (type, action, reason, object and note) published again within six minutes is
//! not a new Event object: the first one's `series` is patched with the new count and time, as
//! client-go's event recorder and kube-runtime's `Recorder` do. What differs from kube-runtime's
//! `Recorder` is what is remembered to make that possible: it keeps a copy of each published
//! Event (about 1.5 KiB, its object reference and note included) and walks all of them at every
//! publish to forget expired ones. At 10,000 streams that was megabytes held for six minutes and
//! quadratic work after a start. Here a series is a 64-bit hash of its key, the Event's name and
//! namespace, a count and a time, and expired series are swept at most once a minute.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use parking_lot::Mutex;

/// How long a published event keeps collecting repeats into its series.
const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);
/// How often expired series are forgotten.
const SWEEP_EVERY: SignedDuration = SignedDuration::from_mins(1);

/// A published event that later repeats are counted into.
struct Series {
    namespace: Box<str>,
    name: Box<str>,
    count: i32,
    last: Timestamp,
}

struct Remembered {
    series: HashMap<u64, Series>,
    swept: Timestamp,
}

/// Publishes Events about objects, as `controller` (instance `instance`).
pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
    hasher: std::hash::RandomState,
    remembered: Mutex<Remembered>,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher")
            .field("controller", &self.controller)
            .field("instance", &self.instance)
            .field("series", &self.remembered.lock().series.len())
            .finish()
    }
}

impl EventPublisher {
    /// A publisher reporting as `controller` from `instance` (this process).
    pub fn new(client: Client, controller: impl Into<String>, instance: impl Into<String>) -> Self {
        EventPublisher {
            client,
            controller: controller.into(),
            instance: instance.into(),
            hasher: std::hash::RandomState::new(),
            remembered: Mutex::new(Remembered {
                series: HashMap::new(),
                swept: Timestamp::now(),
            }),
        }
    }

    /// How many series are remembered (for tests and debugging).
    pub fn series_len(&self) -> usize {
        self.remembered.lock().series.len()
    }

    fn key(&self, event: &Event, regarding: &ObjectReference) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        matches!(event.type_, EventType::Warning).hash(&mut hasher);
        event.action.hash(&mut hasher);
        event.reason.hash(&mut hasher);
        event.note.hash(&mut hasher);
        regarding.api_version.hash(&mut hasher);
        regarding.kind.hash(&mut hasher);
        regarding.namespace.hash(&mut hasher);
        regarding.name.hash(&mut hasher);
        regarding.uid.hash(&mut hasher);
        hasher.finish()
    }

    /// Publishes `event` about `regarding`: a new Event, or one more in the series of the same
    /// event published in the last six minutes. The Event lives in `regarding`'s namespace
    /// (`default` for a cluster-scoped object), and needs `create` and `patch` on
    /// `events.k8s.io` Events there.
    ///
    /// # Errors
    ///
    /// The API's answer when it refuses the write.
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = self.key(event, regarding);
        let repeat = {
            let mut remembered = self.remembered.lock();
            if now.duration_since(remembered.swept) >= SWEEP_EVERY {
                remembered
                    .series
                    .retain(|_, s| now.duration_since(s.last) < SERIES_TTL);
                remembered.swept = now;
            }
            remembered
                .series
                .get(&key)
                .filter(|s| now.duration_since(s.last) < SERIES_TTL)
                .map(|s| (s.namespace.clone(), s.name.clone(), s.count + 1))
        };
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let (namespace, name, count) = match repeat {
            Some((namespace, name, count)) => {
                let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
                let patch = serde_json::json!({
                    "series": {"count": count, "lastObservedTime": MicroTime(now)},
                });
                events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                (namespace, name, count)
            }
            None => {
                let created = self.new_event(event, regarding, namespace, now);
                let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
                events.create(&PostParams::default(), &created).await?;
                let name = created.metadata.name.unwrap_or_default();
                (namespace.into(), name.into_boxed_str(), 1)
            }
        };
        self.remembered.lock().series.insert(
            key,
            Series {
                namespace,
                name,
                count,
                last: now,
            },
        );
        Ok(())
    }

    fn new_event(
        &self,
        event: &Event,
        regarding: &ObjectReference,
        namespace: &str,
        now: Timestamp,
    ) -> K8sEvent {
        let stem = regarding.name.as_deref().unwrap_or(&self.controller);
        K8sEvent {
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                name: Some(format!("{stem}.{:x}", now.as_nanosecond())),
                ..Default::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use http_body_util::BodyExt;
    use std::sync::Arc;

    type Seen = Arc<Mutex<Vec<(Method, String, serde_json::Value)>>>;

    /// A client whose API records every request and echoes its body back.
    fn recording_client() -> (Client, Seen) {
        let seen: Seen = Default::default();
        let record = seen.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let record = record.clone();
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body.collect().await.unwrap().to_bytes();
                let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                record
                    .lock()
                    .push((parts.method, parts.uri.path().to_owned(), body.clone()));
                Ok::<_, std::convert::Infallible>(Response::new(kube::client::Body::from(
                    serde_json::to_vec(&body).unwrap(),
                )))
            }
        });
        (Client::new(service, "default"), seen)
    }

    fn regarding(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("datastream.dev/v1alpha1".into()),
            kind: Some("DataStream".into()),
            namespace: Some("shop".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        }
    }

    fn event(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    #[tokio::test]
    async fn a_new_event_is_created_with_what_kubectl_shows() {
        let (client, seen) = recording_client();
        let publisher = EventPublisher::new(client, "datastream-operator", "pod-1");
        publisher
            .publish(
                &event("Created", "StatefulSet orders"),
                &regarding("orders"),
            )
            .await
            .unwrap();
        let seen = seen.lock();
        assert_eq!(seen.len(), 1);
        let (method, path, body) = &seen[0];
        assert_eq!(*method, Method::POST);
        assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/shop/events");
        assert_eq!(body["reason"], "Created");
        assert_eq!(body["note"], "StatefulSet orders");
        assert_eq!(body["type"], "Normal");
        assert_eq!(body["regarding"]["name"], "orders");
        assert_eq!(body["reportingController"], "datastream-operator");
        assert_eq!(body["reportingInstance"], "pod-1");
        assert!(
            body["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("orders.")
        );
        assert!(body.get("series").is_none());
    }

    #[tokio::test]
    async fn a_repeat_counts_into_the_first_events_series_and_others_are_new() {
        let (client, seen) = recording_client();
        let publisher = EventPublisher::new(client, "datastream-operator", "pod-1");
        let failed = event("ReconcileFailed", "timeout");
        for _ in 0..3 {
            publisher
                .publish(&failed, &regarding("orders"))
                .await
                .unwrap();
        }
        // Another note, another object: new events, not the same series.
        publisher
            .publish(&event("ReconcileFailed", "refused"), &regarding("orders"))
            .await
            .unwrap();
        publisher
            .publish(&failed, &regarding("users"))
            .await
            .unwrap();
        let seen = seen.lock();
        let methods: Vec<&Method> = seen.iter().map(|(m, _, _)| m).collect();
        assert_eq!(
            methods,
            [
                &Method::POST,
                &Method::PATCH,
                &Method::PATCH,
                &Method::POST,
                &Method::POST
            ]
        );
        let first = seen[0].2["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            seen[1].1,
            format!("/apis/events.k8s.io/v1/namespaces/shop/events/{first}")
        );
        assert_eq!(seen[1].2["series"]["count"], 2);
        assert_eq!(seen[2].2["series"]["count"], 3);
        assert!(seen[2].2["series"]["lastObservedTime"].is_string());
        assert_eq!(publisher.series_len(), 3);
    }

    #[tokio::test]
    async fn a_refused_write_is_an_error_and_starts_no_series() {
        let service = tower::service_fn(|_request: Request<kube::client::Body>| async {
            let status = serde_json::json!({"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "message": "forbidden", "reason": "Forbidden", "code": 403});
            let mut response = Response::new(kube::client::Body::from(
                serde_json::to_vec(&status).unwrap(),
            ));
            *response.status_mut() = http::StatusCode::FORBIDDEN;
            Ok::<_, std::convert::Infallible>(response)
        });
        let publisher =
            EventPublisher::new(Client::new(service, "default"), "datastream-operator", "p");
        let result = publisher
            .publish(&event("Created", "x"), &regarding("orders"))
            .await;
        assert!(result.is_err());
        assert_eq!(publisher.series_len(), 0);
    }
}
