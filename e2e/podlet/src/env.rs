//! Container environment resolution with Kubernetes semantics.
//!
//! Order, as in the kubelet: the service variables (`KUBERNETES_SERVICE_HOST`/`PORT`, pointing at the
//! apiserver's advertise address, never a ClusterIP), then `envFrom` sources in order, then `env` entries
//! in order; later definitions win. `$(VAR)` references to variables defined earlier are expanded in
//! `env` values, `command` and `args`; `$$` escapes a dollar.
//!
//! `resourceFieldRef` is not supported (there are no cgroups or limits here): such variables are left out
//! and a warning is logged. `fileKeyRef` is not supported either and fails the container.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Container, EnvVarSource};

/// Facts about the pod that `fieldRef` selectors can read.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `spec.nodeName`.
    pub node_name: String,
    /// `spec.serviceAccountName`.
    pub service_account: String,
    /// `status.podIP`.
    pub pod_ip: String,
    /// `status.hostIP`.
    pub host_ip: String,
}

/// ConfigMaps and Secrets fetched for a container; a name mapped to `None` does not exist.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// ConfigMap data by name (binaryData decoded lossily).
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    /// Secret data by name, decoded lossily as UTF-8.
    pub secrets: HashMap<String, Option<BTreeMap<String, String>>>,
}

/// Why the environment of a container cannot be built (the kubelet's `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A referenced ConfigMap does not exist and the reference is not optional.
    #[error("configmap {0:?} not found")]
    MissingConfigMap(String),
    /// A referenced Secret does not exist and the reference is not optional.
    #[error("secret {0:?} not found")]
    MissingSecret(String),
    /// A referenced key is absent and the reference is not optional.
    #[error("couldn't find key {key} in {kind} {name}")]
    MissingKey {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Object name.
        name: String,
        /// Missing key.
        key: String,
    },
    /// A `fieldRef` path this podlet does not know.
    #[error("unsupported fieldRef {0:?}")]
    UnsupportedFieldPath(String),
    /// A source kind this podlet does not implement.
    #[error("unsupported env source for {0:?}")]
    UnsupportedSource(String),
}

/// Names of the ConfigMaps and Secrets a container's environment refers to, to fetch before [`resolve`].
pub fn referenced_objects(container: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut cms = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            cms.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.insert(r.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(src) = &var.value_from {
            if let Some(r) = &src.config_map_key_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &src.secret_key_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    (cms, secrets)
}

/// Builds the environment of `container`, starting from `base` (the service variables).
pub fn resolve(
    container: &Container,
    facts: &PodFacts,
    sources: &Sources,
    base: &[(String, String)],
) -> Result<Vec<(String, String)>, EnvError> {
    let mut env = OrderedEnv::default();
    for (k, v) in base {
        env.set(k.clone(), v.clone());
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match sources.config_maps.get(&r.name).cloned().flatten() {
                Some(data) => data
                    .into_iter()
                    .for_each(|(k, v)| env.set(format!("{prefix}{k}"), v)),
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::MissingConfigMap(r.name.clone())),
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secrets.get(&r.name).cloned().flatten() {
                Some(data) => data
                    .into_iter()
                    .for_each(|(k, v)| env.set(format!("{prefix}{k}"), v)),
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::MissingSecret(r.name.clone())),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(src)) => match from_source(&var.name, src, facts, sources)? {
                Some(v) => v,
                None => continue,
            },
            (Some(v), None) => expand(v, &env.map),
            (None, None) => String::new(),
        };
        env.set(var.name.clone(), value);
    }
    Ok(env.into_vec())
}

fn from_source(
    name: &str,
    src: &EnvVarSource,
    facts: &PodFacts,
    sources: &Sources,
) -> Result<Option<String>, EnvError> {
    if let Some(f) = &src.field_ref {
        return field_value(&f.field_path, facts).map(Some);
    }
    if let Some(r) = &src.config_map_key_ref {
        return lookup(
            "ConfigMap",
            &r.name,
            &r.key,
            r.optional,
            sources.config_maps.get(&r.name),
        );
    }
    if let Some(r) = &src.secret_key_ref {
        return lookup(
            "Secret",
            &r.name,
            &r.key,
            r.optional,
            sources.secrets.get(&r.name),
        );
    }
    if src.resource_field_ref.is_some() {
        tracing::warn!(
            var = name,
            "resourceFieldRef is not supported by the podlet; variable left unset"
        );
        return Ok(None);
    }
    Err(EnvError::UnsupportedSource(name.to_owned()))
}

fn lookup(
    kind: &'static str,
    name: &str,
    key: &str,
    optional: Option<bool>,
    data: Option<&Option<BTreeMap<String, String>>>,
) -> Result<Option<String>, EnvError> {
    let optional = optional == Some(true);
    match data.cloned().flatten() {
        None if optional => Ok(None),
        None if kind == "Secret" => Err(EnvError::MissingSecret(name.to_owned())),
        None => Err(EnvError::MissingConfigMap(name.to_owned())),
        Some(map) => match map.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(EnvError::MissingKey {
                kind,
                name: name.to_owned(),
                key: key.to_owned(),
            }),
        },
    }
}

/// Value of a downward-API field path.
pub fn field_value(path: &str, facts: &PodFacts) -> Result<String, EnvError> {
    let indexed = |prefix: &str, map: &BTreeMap<String, String>| -> Option<String> {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.get(key).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => facts.name.clone(),
        "metadata.namespace" => facts.namespace.clone(),
        "metadata.uid" => facts.uid.clone(),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => facts.service_account.clone(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        _ => {
            return indexed("metadata.labels", &facts.labels)
                .or_else(|| indexed("metadata.annotations", &facts.annotations))
                .ok_or_else(|| EnvError::UnsupportedFieldPath(path.to_owned()));
        }
    };
    Ok(value)
}

/// Expands `$(VAR)` references to defined variables; undefined references stay as written, `$$` is `$`.
pub fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Environment that keeps first-definition order while later definitions replace values.
#[derive(Default)]
struct OrderedEnv {
    order: Vec<String>,
    map: HashMap<String, String>,
}

impl OrderedEnv {
    fn set(&mut self, k: String, v: String) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push(k);
        }
    }

    fn into_vec(mut self) -> Vec<(String, String)> {
        self.order
            .into_iter()
            .map(|k| {
                let v = self.map.remove(&k).unwrap_or_default();
                (k, v)
            })
            .collect()
    }
}

/// Expands `$(VAR)` in each element of `items` against the resolved environment.
pub fn expand_all(items: &[String], env: &[(String, String)]) -> Vec<String> {
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    items.iter().map(|s| expand(s, &vars)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, ObjectFieldSelector,
        ResourceFieldSelector, SecretKeySelector,
    };

    fn facts() -> PodFacts {
        PodFacts {
            name: "web-1".into(),
            namespace: "ns".into(),
            uid: "u-1".into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            node_name: "e2e-node-0".into(),
            service_account: "sa".into(),
            pod_ip: "10.244.1.2".into(),
            host_ip: "10.244.0.1".into(),
            ..PodFacts::default()
        }
    }

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..EnvVar::default()
        }
    }

    fn from(name: &str, src: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(src),
            ..EnvVar::default()
        }
    }

    fn field(path: &str) -> EnvVarSource {
        EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.config_maps.insert(
            "cm".into(),
            Some(BTreeMap::from([
                ("A".into(), "1".into()),
                ("B".into(), "2".into()),
            ])),
        );
        s.config_maps.insert("gone".into(), None);
        s.secrets.insert(
            "sec".into(),
            Some(BTreeMap::from([("password".into(), "hunter2".into())])),
        );
        s
    }

    #[test]
    fn field_refs_resolve() {
        let c = Container {
            env: Some(vec![
                from("POD_NAME", field("metadata.name")),
                from("POD_NS", field("metadata.namespace")),
                from("POD_UID", field("metadata.uid")),
                from("POD_IP", field("status.podIP")),
                from("HOST_IP", field("status.hostIP")),
                from("NODE", field("spec.nodeName")),
                from("SA", field("spec.serviceAccountName")),
                from("APP", field("metadata.labels['app']")),
            ]),
            ..Container::default()
        };
        let env = resolve(&c, &facts(), &Sources::default(), &[]).unwrap();
        let got: Vec<&str> = env.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(
            got,
            [
                "web-1",
                "ns",
                "u-1",
                "10.244.1.2",
                "10.244.0.1",
                "e2e-node-0",
                "sa",
                "web"
            ]
        );
        let bad = Container {
            env: Some(vec![from("X", field("status.phase"))]),
            ..Container::default()
        };
        assert_eq!(
            resolve(&bad, &facts(), &Sources::default(), &[]),
            Err(EnvError::UnsupportedFieldPath("status.phase".into()))
        );
    }

    #[test]
    fn order_override_and_expansion() {
        let base = vec![(
            "KUBERNETES_SERVICE_HOST".to_string(),
            "10.244.0.1".to_string(),
        )];
        let c = Container {
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "cm".into(),
                    optional: None,
                }),
                prefix: Some("CM_".into()),
                ..EnvFromSource::default()
            }]),
            env: Some(vec![
                var("CM_A", "override"),
                var(
                    "URL",
                    "https://$(KUBERNETES_SERVICE_HOST):$(PORT)/$$(literal)",
                ),
                var("PORT", "6443"),
            ]),
            ..Container::default()
        };
        let env = resolve(&c, &facts(), &sources(), &base).unwrap();
        assert_eq!(
            env,
            vec![
                ("KUBERNETES_SERVICE_HOST".into(), "10.244.0.1".into()),
                ("CM_A".into(), "override".into()),
                ("CM_B".into(), "2".into()),
                ("URL".into(), "https://10.244.0.1:$(PORT)/$(literal)".into()),
                ("PORT".into(), "6443".into()),
            ]
        );
    }

    #[test]
    fn key_refs_and_missing_objects() {
        let cm_key = |name: &str, key: &str, optional| EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: name.into(),
                key: key.into(),
                optional,
            }),
            ..EnvVarSource::default()
        };
        let secret_key = |name: &str, key: &str| EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: name.into(),
                key: key.into(),
                optional: None,
            }),
            ..EnvVarSource::default()
        };
        let ok = Container {
            env: Some(vec![
                from("A", cm_key("cm", "A", None)),
                from("PW", secret_key("sec", "password")),
                from("OPT", cm_key("gone", "x", Some(true))),
                from("OPTKEY", cm_key("cm", "nope", Some(true))),
            ]),
            ..Container::default()
        };
        let env = resolve(&ok, &facts(), &sources(), &[]).unwrap();
        assert_eq!(
            env,
            vec![("A".into(), "1".into()), ("PW".into(), "hunter2".into())]
        );
        let (cms, secrets) = referenced_objects(&ok);
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), ["cm", "gone"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), ["sec"]);

        let missing = Container {
            env: Some(vec![from("X", cm_key("gone", "x", None))]),
            ..Container::default()
        };
        assert_eq!(
            resolve(&missing, &facts(), &sources(), &[]),
            Err(EnvError::MissingConfigMap("gone".into()))
        );
        let no_key = Container {
            env: Some(vec![from("X", cm_key("cm", "Z", None))]),
            ..Container::default()
        };
        assert!(matches!(
            resolve(&no_key, &facts(), &sources(), &[]),
            Err(EnvError::MissingKey { .. })
        ));
    }

    #[test]
    fn resource_field_ref_is_skipped() {
        let c = Container {
            env: Some(vec![from(
                "CPU",
                EnvVarSource {
                    resource_field_ref: Some(ResourceFieldSelector {
                        resource: "limits.cpu".into(),
                        ..Default::default()
                    }),
                    ..EnvVarSource::default()
                },
            )]),
            ..Container::default()
        };
        assert!(
            resolve(&c, &facts(), &Sources::default(), &[])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn expansion_edge_cases() {
        let vars = HashMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)$(B)$$A$", &vars), "x$(B)$A$");
        assert_eq!(expand("$(A", &vars), "$(A");
        assert_eq!(expand("ünï$(A)cödé", &vars), "ünïxcödé");
        assert_eq!(
            expand_all(&["--ip=$(A)".to_string()], &[("A".into(), "1".into())]),
            ["--ip=1"]
        );
    }
}
