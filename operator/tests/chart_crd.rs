//! The Helm chart ships the same CRD as `crds/` (Helm installs the chart's `crds/` folder on first
//! install), so both copies must be exactly what the API types generate.

#[test]
fn chart_crd_matches_the_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/datastream/crds/datastream.yaml"
    );
    let shipped =
        std::fs::read_to_string(path).expect("charts/datastream/crds/datastream.yaml exists");
    assert!(
        shipped == datastream_api::crd_yaml(),
        "charts/datastream/crds/datastream.yaml is stale: run `make crd` and commit the result"
    );
}

#[test]
fn chart_crds_folder_holds_only_the_generated_crd() {
    // A second file there would be installed by Helm without being generated or checked.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/datastream/crds");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("charts/datastream/crds exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["datastream.yaml"]);
}
