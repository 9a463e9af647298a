#!/usr/bin/env bash
# `make demo`: a local Kubernetes control plane with DataStream installed and traffic flowing.
#
# Brings the cluster up (building what is missing), installs the CRD with kubectl and the operator
# with Helm (its pod runs under the process kubelet with its own service account), applies the
# example DataStream, sends a burst of traffic through the sidecars while deleting a replica's pod,
# prints the stream, the per-replica spread and the failed-request count, then writes keys, runs a
# rolling update and shows every key read back from the same replica. Idempotent: run it again at
# will. Clean up with `make demo-down`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source e2e/scripts/lib.sh
ns=datastream-demo
k() { in_netns "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "building the images the local kubelet runs (make images: OCI layouts, no Docker)"
cargo build -q -p datastream-podlet
scripts/build-images.sh
cargo build -q -p datastream-e2e --bin demo-traffic

step "starting the local cluster (first run builds Kubernetes from its Go modules)"
e2e/scripts/cluster-up.sh

step "installing the CRD: kubectl apply -f crds/"
k apply --server-side --force-conflicts -f crds/datastream.yaml
k wait --for condition=Established --timeout=60s crd/datastreams.datastream.dev

step "installing the operator"
k create namespace datastream-system --dry-run=client -o yaml | k apply -f -
in_netns "$bin/helm" --kubeconfig "$kubeconfig" upgrade --install datastream charts/datastream \
  --namespace datastream-system --wait --timeout 180s \
  --set image.repository=localhost/datastream-operator --set image.tag=dev \
  --set sidecar.image.repository=localhost/datastream-sidecar --set sidecar.image.tag=dev \
  --set test.image.repository=localhost/datastream-demo-replica --set test.image.tag=dev

step "applying the example DataStream"
k create namespace "$ns" --dry-run=client -o yaml | k apply -f -
example=examples/datastream-demo.yaml
k apply -n "$ns" -f "$example"
name="$(k get -n "$ns" -f "$example" -o jsonpath='{.metadata.name}')"
# Available, and all three replicas listed as endpoints: the status counts ready replicas from the
# StatefulSet, which can lead the EndpointSlices (and so status.endpoints) by a moment, and the
# traffic step below picks its targets from the endpoints.
for ((i = 0; i < 180; i++)); do
  phase="$(k get dst "$name" -n "$ns" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
  listed="$(k get dst "$name" -n "$ns" -o jsonpath='{.status.endpoints[*]}' 2>/dev/null | wc -w)"
  [[ "$phase" == Available && "$listed" -ge 3 ]] && break
  sleep 1
done
if [[ "$phase" != Available ]]; then
  echo "demo: $name did not become Available in 180 s" >&2
  k get dst,statefulsets,pods,pvc,endpointslices -n "$ns" -o wide >&2
  k describe dst "$name" -n "$ns" >&2
  exit 1
fi
k get dst -n "$ns" -o wide

step "sending traffic for 20 s through the sidecars, deleting another replica's pod after 5 s"
# Clients talk to the sidecars of the pods that stay (there is no kube-proxy here to steer them);
# those sidecars balance over every replica, including the one being deleted, and must route
# around it without a single failed request.
victim="$(k get pods -n "$ns" -l "app.kubernetes.io/instance=$name" -o jsonpath='{.items[0].metadata.name}')"
victim_ip="$(k get pod "$victim" -n "$ns" -o jsonpath='{.status.podIP}')"
targets="$(k get dst "$name" -n "$ns" -o jsonpath='{.status.endpoints[*]}' | tr ' ' '\n' | grep -v "^$victim_ip:" | sed 's/:7081$/:7080/' | paste -sd,)"
(sleep 5; echo "demo: deleting pod $victim"; k delete pod "$victim" -n "$ns" --wait=false >/dev/null) &
set +e
in_netns target/debug/demo-traffic --targets "$targets" --duration 20s --concurrency 8 --path /whoami
traffic_exit=$?
set -e
wait

step "the stream after the disruption"
sleep 3
k get datastreams -n "$ns" -o wide

# wait_rolled_out: every replica ready on the latest revision, for the latest generation.
wait_rolled_out() {
  local i state
  for ((i = 0; i < 240; i++)); do
    state="$(k get dst "$name" -n "$ns" -o jsonpath='{.metadata.generation} {.status.observedGeneration} {.status.readyReplicas} {.status.updatedReplicas} {.status.currentRevision} {.status.updateRevision} {.status.phase}')"
    read -r gen observed ready updated current update phase <<<"$state"
    if [[ "$gen" == "$observed" && "$ready" == 3 && "$updated" == 3 && -n "$current" && "$current" == "$update" && "$phase" == Available ]]; then
      return 0
    fi
    sleep 1
  done
  echo "demo: the stream did not settle in 240 s ($state)" >&2
  k get dst,statefulsets,pods,pvc -n "$ns" -o wide >&2
  return 1
}
# read_key KEY: "<status> <x-replica-id>" of an affinity GET through one sidecar.
read_key() {
  in_netns curl -s -m 5 -D - -o /dev/null "http://$1/kv/$2" | tr -d '\r' |
    awk 'NR == 1 { code = $2 } tolower($1) == "x-replica-id:" { id = $2 } END { print code, id }'
}
sidecar() { k get dst "$name" -n "$ns" -o jsonpath='{.status.endpoints[0]}' | sed 's/:7081$/:7080/'; }

step "writing 20 keys, then a rolling update: every key must come back from the same replica"
wait_rolled_out
target="$(sidecar)"
declare -A owner
for i in $(seq 1 20); do
  code="$(in_netns curl -s -m 5 -o /dev/null -w '%{http_code}' -X PUT --data "value-$i" "http://$target/kv/demo-key-$i")"
  [[ "$code" == 2* ]] || { echo "demo: PUT demo-key-$i answered $code" >&2; exit 1; }
  read -r code owner[$i] <<<"$(read_key "$target" "demo-key-$i")"
  [[ "$code" == 200 ]] || { echo "demo: GET demo-key-$i answered $code" >&2; exit 1; }
done
echo "demo: wrote 20 keys; owners: $(printf '%s\n' "${owner[@]}" | sort | uniq -c | awk '{ printf "%s %s keys, ", $2, $1 }' | sed 's/, $//')"
before="$(k get dst "$name" -n "$ns" -o jsonpath='{.status.updateRevision}')"
k patch dst "$name" -n "$ns" --type=json \
  -p "[{\"op\":\"add\",\"path\":\"/spec/workload/env/-\",\"value\":{\"name\":\"DEMO_ROLLOUT\",\"value\":\"$(date +%s)\"}}]" >/dev/null
for ((i = 0; i < 60; i++)); do
  [[ "$(k get dst "$name" -n "$ns" -o jsonpath='{.status.updateRevision}')" != "$before" ]] && break
  sleep 0.5
done
echo "demo: rolling update from $before to $(k get dst "$name" -n "$ns" -o jsonpath='{.status.updateRevision}'), one replica at a time"
wait_rolled_out
target="$(sidecar)"
moved=0
for i in $(seq 1 20); do
  read -r code now <<<"$(read_key "$target" "demo-key-$i")"
  if [[ "$code" != 200 || "$now" != "${owner[$i]}" ]]; then
    echo "demo: demo-key-$i: was on ${owner[$i]}, now $code from $now" >&2
    moved=$((moved + 1))
  fi
done
echo "demo: after the rolling update, 20 keys read back: $((20 - moved)) from the same replica, $moved lost or moved"
k get datastreams,pvc -n "$ns" -o wide
echo
echo "Explore:  e2e/scripts/kubectl get dst -A     e2e/scripts/kubectl describe dst $name -n $ns"
echo "Clean up: make demo-down"
if ((moved > 0)); then exit 1; fi
exit $traffic_exit
