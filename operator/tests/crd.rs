//! The checked-in CRD must be exactly what the types generate.

#[test]
fn checked_in_crd_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/datastream.yaml");
    let checked_in = std::fs::read_to_string(path).expect("crds/datastream.yaml exists");
    assert!(
        checked_in == datastream_api::crd_yaml(),
        "crds/datastream.yaml is stale: run `make crd` and commit the result"
    );
}
