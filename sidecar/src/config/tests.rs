use super::*;

#[test]
fn flags_override_the_file() {
    let file = FileConfig::parse(
        r#"
listeners: { traffic: "127.0.0.1:9000", admin: "127.0.0.1:9001" }
endpoints: ["127.0.0.1:8001", { address: "127.0.0.1:8002", name: b }]
localEndpoint: "127.0.0.1:8001"
traffic: { loadBalancing: { policy: maglev } }
"#,
    )
    .unwrap();
    let flags = Overrides {
        listen: Some("127.0.0.1:9100".into()),
        policy: Some("round-robin".into()),
        ..Overrides::default()
    };
    let r = Resolved::resolve(&file, &flags).unwrap();
    assert_eq!(r.runtime.traffic.port(), 9100);
    assert_eq!(r.runtime.admin.port(), 9001);
    assert_eq!(r.endpoints.len(), 2);
    assert!(r.endpoints[0].local);
    assert_eq!(r.endpoints[1].name, "b");
    assert_eq!(r.traffic.load_balancing.policy.as_str(), "round-robin");
}

#[test]
fn collects_every_error() {
    let flags = Overrides {
        listen: Some("nowhere".into()),
        endpoints: Some(vec!["127.0.0.1:1".into(), "127.0.0.1:1".into(), "x".into()]),
        policy: Some("random".into()),
        drain_delay: Some("5 minutes".into()),
        max_header_bytes: Some(10),
        ..Overrides::default()
    };
    let errors = Resolved::resolve(&FileConfig::default(), &flags).unwrap_err();
    let all = errors.join("\n");
    for needle in [
        "listen:",
        "listed twice",
        "\"x\"",
        "unknown policy",
        "drain-delay",
        "max-header-bytes",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn unknown_fields_are_rejected() {
    let err = FileConfig::parse("listeners: { trafic: x }").unwrap_err();
    assert!(err.contains("unknown field"), "{err}");
}
