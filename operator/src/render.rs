//! `datastream-operator render`: the children the controller would apply, printed offline.
//!
//! The same [`desired::children`] the controller calls, fed from a file instead of a watch, so a
//! GitOps pull request can show the exact objects a DataStream change produces (as `helm
//! template` does for a chart). Without a cluster there is no UID, so the objects carry no
//! owner reference; everything else is byte for byte what the controller applies.

use datastream_api::v1alpha1::DataStream;

use crate::desired::{self, Settings};

/// Why a file cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The input is not YAML (the parser's message gives the line and column).
    #[error("the input is not valid YAML: {source}")]
    Yaml {
        /// The parser's message.
        #[source]
        source: serde_saphyr::Error,
    },
    /// A document is a DataStream that does not fit the API types.
    #[error("document {index} (DataStream {name:?}): {source}")]
    Invalid {
        /// 1-based position of the document in the file.
        index: usize,
        /// `metadata.name`, when present.
        name: String,
        /// What is wrong with it.
        #[source]
        source: serde_json::Error,
    },
    /// The file holds no DataStream.
    #[error("no DataStream (apiVersion datastream.dev/v1alpha1) in the input")]
    Empty,
}

/// Renders the children of every DataStream in `yaml` (one or more YAML documents; documents of
/// other kinds are skipped, as `kubectl apply -f` of a mixed file would apply them elsewhere) as
/// a YAML stream, each object a document. Streams without a namespace go to `namespace`.
pub fn render(yaml: &str, settings: &Settings, namespace: &str) -> Result<String, RenderError> {
    let mut out = String::new();
    let mut streams = 0;
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).map_err(|source| RenderError::Yaml { source })?;
    for (i, value) in documents.into_iter().enumerate() {
        let index = i + 1;
        let is_stream = value.get("kind").and_then(|k| k.as_str()) == Some("DataStream")
            && value
                .get("apiVersion")
                .and_then(|v| v.as_str())
                .is_some_and(|v| v.starts_with(&format!("{}/", datastream_api::GROUP)));
        if !is_stream {
            continue;
        }
        let name = value
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_owned();
        let mut ds: DataStream =
            serde_json::from_value(value).map_err(|source| RenderError::Invalid {
                index,
                name,
                source,
            })?;
        if ds.metadata.namespace.is_none() {
            ds.metadata.namespace = Some(namespace.to_owned());
        }
        out.push_str(&to_yaml(&desired::children(&ds, settings)));
        streams += 1;
    }
    if streams == 0 {
        return Err(RenderError::Empty);
    }
    Ok(out)
}

/// The children as a YAML stream, in apply order.
pub fn to_yaml(children: &desired::Children) -> String {
    let mut out = String::new();
    for object in children.objects() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&object).expect("JSON values serialize to YAML"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            sidecar_image: "example.com/datastream-sidecar:0.1.0".into(),
            identity: None,
        }
    }

    #[test]
    fn renders_every_stream_and_skips_other_kinds() {
        let input = r#"
apiVersion: v1
kind: Namespace
metadata: { name: shop }
---
apiVersion: datastream.dev/v1alpha1
kind: DataStream
metadata: { name: catalog }
spec:
  workload: { image: example.com/catalog:1.0 }
---
apiVersion: datastream.dev/v1alpha1
kind: DataStream
metadata: { name: orders, namespace: sales }
spec:
  replicas: 1
  workload: { image: example.com/orders:1.0 }
"#;
        let out = render(input, &settings(), "shop").unwrap();
        let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&out).unwrap();
        let kinds: Vec<(String, String, String)> = documents
            .into_iter()
            .map(|v| {
                let field = |p: &str| v.pointer(p).and_then(|x| x.as_str()).unwrap().to_owned();
                (
                    field("/kind"),
                    field("/metadata/namespace"),
                    field("/metadata/name"),
                )
            })
            .collect();
        let summary: Vec<String> = kinds
            .iter()
            .map(|(k, ns, n)| format!("{k} {ns}/{n}"))
            .collect();
        assert_eq!(
            summary,
            [
                "ServiceAccount shop/catalog-sidecar",
                "Role shop/catalog-sidecar",
                "RoleBinding shop/catalog-sidecar",
                "Service shop/catalog-peers",
                "Service shop/catalog",
                "NetworkPolicy shop/catalog-peers",
                "StatefulSet shop/catalog",
                "PodDisruptionBudget shop/catalog",
                "ServiceAccount sales/orders-sidecar",
                "Role sales/orders-sidecar",
                "RoleBinding sales/orders-sidecar",
                "Service sales/orders-peers",
                "Service sales/orders",
                "NetworkPolicy sales/orders-peers",
                "StatefulSet sales/orders",
            ]
        );
    }

    #[test]
    fn bad_input_names_the_document() {
        let no_stream = render("apiVersion: v1\nkind: ConfigMap\n", &settings(), "default");
        assert!(matches!(no_stream, Err(RenderError::Empty)));
        let invalid = render(
            "apiVersion: datastream.dev/v1alpha1\nkind: DataStream\nmetadata: { name: x }\nspec: { replicas: 2 }\n",
            &settings(),
            "default",
        )
        .unwrap_err()
        .to_string();
        assert!(
            invalid.starts_with("document 1 (DataStream \"x\"): missing field `workload`"),
            "{invalid}"
        );
        let broken = render("a: [", &settings(), "default")
            .unwrap_err()
            .to_string();
        assert!(
            broken.starts_with("the input is not valid YAML: "),
            "{broken}"
        );
    }
}
