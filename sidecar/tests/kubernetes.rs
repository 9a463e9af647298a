//! Kubernetes discovery against a real kube-apiserver (the local e2e cluster).
//!
//! Needs the cluster from `make cluster-up` and must run inside its network namespace:
//!
//! ```sh
//! ip netns exec dse2e env KUBECONFIG=$PWD/e2e/.state/kubeconfig \
//!   cargo test -p datastream-sidecar --test kubernetes -- --ignored
//! ```
//!
//! It works in a namespace of its own, deleted at the end, and sends no traffic to the
//! addresses it lists.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use datastream_api::v1alpha1::DataStream;
use datastream_sidecar::Shared;
use datastream_sidecar::discovery::kubernetes::{Identity, run};
use datastream_sidecar::metrics::Metrics;
use datastream_sidecar::policy::Policy;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
#[ignore = "needs cluster (make cluster-up; run inside netns dse2e with KUBECONFIG set)"]
async fn watches_the_own_datastream_and_the_peer_endpoint_slices() {
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG points at the e2e cluster");
    let ns = format!("sidecar-discovery-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": ns } })).unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();

    let streams: Api<DataStream> = Api::namespaced(client.clone(), &ns);
    let ds: DataStream = serde_json::from_value(serde_json::json!({
        "apiVersion": "datastream.dev/v1alpha1", "kind": "DataStream",
        "metadata": { "name": "orders" },
        "spec": {
            "replicas": 0,
            "workload": { "image": "localhost/datastream-demo-replica:dev", "port": 8080, "readinessPath": "/ready" },
            "traffic": { "loadBalancing": { "policy": "round-robin" } }
        }
    }))
    .unwrap();
    streams.create(&PostParams::default(), &ds).await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "orders-peers-1", "labels": { "kubernetes.io/service-name": "orders-peers" } },
        "addressType": "IPv4",
        "ports": [{ "name": "peer", "port": 7081, "protocol": "TCP" }],
        "endpoints": [
            { "addresses": ["10.244.1.201"], "conditions": { "ready": true }, "targetRef": { "kind": "Pod", "name": "orders-a" } },
            { "addresses": ["10.244.1.202"], "conditions": { "ready": true }, "targetRef": { "kind": "Pod", "name": "orders-b" } }
        ]
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();

    let metrics = Metrics::new();
    let shared = Arc::new(Shared::new(
        Policy::simple(
            datastream_lb::balance::Policy::P2cEwma,
            false,
            None,
            &metrics,
        ),
        metrics,
    ));
    let me = Identity {
        namespace: ns.clone(),
        datastream: "orders".into(),
        peer_service: "orders-peers".into(),
        pod_ip: "10.244.1.201".parse().unwrap(),
        pod_name: "orders-a".into(),
        workload: "127.0.0.1:8080".parse().unwrap(),
    };
    let (close, closed) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run(client.clone(), me, shared.clone(), closed));

    // The policy is the DataStream's; the replicas are the local workload plus the other pod.
    eventually("the policy", || {
        shared.config_status().source.ends_with("generation 1")
    })
    .await;
    assert_eq!(
        shared.policy().spec["loadBalancing"]["policy"],
        "round-robin"
    );
    eventually("the endpoints", || shared.endpoints().len() == 2).await;
    let set = shared.endpoints();
    let addrs: Vec<SocketAddr> = set.endpoints().iter().map(|e| e.addr()).collect();
    assert!(addrs.contains(&"127.0.0.1:8080".parse().unwrap()));
    assert!(addrs.contains(&"10.244.1.202:7081".parse().unwrap()));
    assert!(shared.is_ready());

    // Policy changes swap in, routes included.
    let patch =
        serde_json::json!({ "spec": { "traffic": { "loadBalancing": { "policy": "maglev" } } } });
    streams
        .patch("orders", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually("the new policy", || {
        shared.policy().spec["loadBalancing"]["policy"] == "maglev"
    })
    .await;
    let patch = serde_json::json!({ "spec": { "traffic": { "routes": [
        { "name": "by-user", "mode": "affinity", "affinity": { "key": { "header": "x-user" } } }
    ] } } });
    streams
        .patch("orders", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually("the route", || {
        shared.policy().routes.iter().any(|r| r.name() == "by-user")
    })
    .await;
    assert_eq!(shared.config_status().version, 4);

    // A peer leaving the slice leaves the set.
    slices
        .delete("orders-peers-1", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the peer to leave", || shared.endpoints().len() == 1).await;

    let _ = close.send(true);
    task.await.unwrap();
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
}
