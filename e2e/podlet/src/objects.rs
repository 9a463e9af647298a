//! Reading the ConfigMaps and Secrets that env vars and volumes refer to.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use crate::env::Sources;

/// Key/value data of a ConfigMap or Secret, as bytes.
pub type Data = BTreeMap<String, Vec<u8>>;

/// Fetches a ConfigMap's `data` and `binaryData`; `None` when it does not exist.
pub async fn config_map(client: &Client, ns: &str, name: &str) -> kube::Result<Option<Data>> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?;
    Ok(cm.map(|cm| {
        let mut out: Data = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        out.extend(
            cm.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        out
    }))
}

/// Fetches a Secret's `data`; `None` when it does not exist.
pub async fn secret(client: &Client, ns: &str, name: &str) -> kube::Result<Option<Data>> {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?;
    Ok(s.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }))
}

fn as_strings(d: Data) -> BTreeMap<String, String> {
    d.into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

/// Fetches every object named in `config_maps` and `secrets` for env resolution.
pub async fn env_sources(
    client: &Client,
    ns: &str,
    config_maps: impl IntoIterator<Item = String>,
    secrets: impl IntoIterator<Item = String>,
) -> kube::Result<Sources> {
    let mut s = Sources::default();
    for name in config_maps {
        let data = config_map(client, ns, &name).await?.map(as_strings);
        s.config_maps.insert(name, data);
    }
    for name in secrets {
        let data = secret(client, ns, &name).await?.map(as_strings);
        s.secrets.insert(name, data);
    }
    Ok(s)
}
