//! The node's image store: OCI image layouts on disk (what `make images` writes), resolved by
//! reference and unpacked once per manifest digest.
//!
//! There is no registry here, so "pulling" an image means finding it in the store: the last path
//! segment of the reference names a layout directory (`ghcr.io/acme/datastream-sidecar:0.1.0` looks
//! in `<store>/datastream-sidecar/`), the tag names an entry of its `index.json`
//! (`org.opencontainers.image.ref.name`, `latest` when absent) and a digest, when given, must be the
//! manifest's. Anything else is [`ImageError::NotFound`], which the pod shows as `ErrImagePull` and
//! then `ImagePullBackOff`, as a kubelet does for an image its registry does not have.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use tokio::sync::Mutex;

/// Annotation of an index entry holding its tag.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A parsed image reference: `[registry/][path/]name[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// Last path segment: the layout directory's name.
    pub name: String,
    /// Tag (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// `sha256:<hex>` when pinned by digest.
    pub digest: Option<String>,
}

impl ImageReference {
    /// Parses a container's `image` field.
    pub fn parse(image: &str) -> Result<Self, ImageError> {
        let bad = |why: &str| ImageError::InvalidReference {
            image: image.to_owned(),
            why: why.to_owned(),
        };
        let (rest, digest) = match image.split_once('@') {
            Some((rest, digest)) => {
                let hex = digest
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("digest must be sha256:<64 hex digits>"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("digest must be sha256:<64 hex digits>"));
                }
                (rest, Some(digest.to_ascii_lowercase()))
            }
            None => (image, None),
        };
        let last = rest.rsplit('/').next().unwrap_or(rest);
        // A `:` in the last segment can only start a tag (a registry port lives in the first one).
        let (name, tag) = match last.split_once(':') {
            Some((name, tag)) => (name, Some(tag.to_owned())),
            None => (last, None),
        };
        // A repository path component (distribution spec): lowercase alphanumerics and
        // separators. This also keeps `..` and friends from naming a directory outside the store.
        let component_ok = !name.is_empty()
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !component_ok {
            return Err(bad(
                "the image name must be lowercase letters, digits, '.', '_' or '-'",
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) if t.is_empty() => return Err(bad("empty tag")),
            (None, None) => Some("latest".to_owned()),
            (tag, _) => tag,
        };
        Ok(Self {
            name: name.to_owned(),
            tag,
            digest,
        })
    }
}

/// Why an image cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("invalid image reference {image:?}: {why}")]
    InvalidReference {
        /// The reference.
        image: String,
        /// What is wrong with it.
        why: String,
    },
    /// The store has no such image (the registry's "manifest unknown").
    #[error("failed to pull image {image:?}: not found in the node's image store {store} ({why})")]
    NotFound {
        /// The reference.
        image: String,
        /// The store directory.
        store: String,
        /// Which part did not match.
        why: String,
    },
    /// The layout exists but cannot be read or unpacked.
    #[error("image {image:?} is unusable: {why}")]
    Broken {
        /// The reference.
        image: String,
        /// What failed.
        why: String,
    },
}

impl ImageError {
    /// The container waiting reason a kubelet reports for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::InvalidReference { .. } => "InvalidImageName",
            ImageError::NotFound { .. } | ImageError::Broken { .. } => "ErrImagePull",
        }
    }
}

/// What the runtime needs of an image's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    /// `User` (`uid[:gid]` or a name in the image's `/etc/passwd`).
    pub user: Option<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env` as `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
}

/// An image ready to run.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// `sha256:<hex>` of the manifest: the image ID the pod status shows.
    pub digest: String,
    /// The unpacked root file system, shared read-only by every container of this image.
    pub rootfs: PathBuf,
    /// Defaults from the image configuration.
    pub defaults: ImageDefaults,
}

/// Image layouts under one directory, unpacked into a cache.
#[derive(Debug)]
pub struct ImageStore {
    layouts: PathBuf,
    cache: PathBuf,
    /// One lock per digest, so that concurrent pods unpack an image once.
    unpacking: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl ImageStore {
    /// Images are looked up in `layouts/<name>/` and unpacked into `cache/<digest hex>/`.
    pub fn new(layouts: impl Into<PathBuf>, cache: impl Into<PathBuf>) -> Self {
        Self {
            layouts: layouts.into(),
            cache: cache.into(),
            unpacking: Mutex::new(HashMap::new()),
        }
    }

    /// The directory of layouts.
    pub fn layouts(&self) -> &Path {
        &self.layouts
    }

    /// Finds `image` in the store: its layout directory, tag and manifest digest.
    pub fn resolve(&self, image: &str) -> Result<(PathBuf, String, String), ImageError> {
        let reference = ImageReference::parse(image)?;
        let not_found = |why: String| ImageError::NotFound {
            image: image.to_owned(),
            store: self.layouts.display().to_string(),
            why,
        };
        let layout = self.layouts.join(&reference.name);
        let index_path = layout.join("index.json");
        if !index_path.exists() {
            return Err(not_found(format!(
                "no layout {:?}; images here: {}",
                reference.name,
                self.names().join(", ")
            )));
        }
        let index = ImageIndex::from_file(&index_path).map_err(|e| ImageError::Broken {
            image: image.to_owned(),
            why: format!("{}: {e}", index_path.display()),
        })?;
        let entries: Vec<(Option<String>, String)> = index
            .manifests()
            .iter()
            .map(|m| {
                let tag = m
                    .annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .cloned();
                (tag, m.digest().to_string())
            })
            .collect();
        let chosen = entries
            .iter()
            .find(|(tag, digest)| match &reference.digest {
                Some(d) => digest == d,
                None => tag.as_deref() == reference.tag.as_deref(),
            });
        let Some((tag, digest)) = chosen else {
            let known: Vec<String> = entries
                .iter()
                .map(|(t, d)| format!("{}@{d}", t.as_deref().unwrap_or("<untagged>")))
                .collect();
            let wanted = reference
                .digest
                .clone()
                .or(reference.tag.clone())
                .unwrap_or_default();
            return Err(not_found(format!(
                "{} has no {wanted}; it has {}",
                reference.name,
                known.join(", ")
            )));
        };
        let Some(tag) = tag.clone() else {
            return Err(ImageError::Broken {
                image: image.to_owned(),
                why: format!("manifest {digest} has no tag to unpack it by"),
            });
        };
        Ok((layout, tag, digest.clone()))
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.layouts)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("index.json").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        if names.is_empty() {
            names.push("none (run `make images`)".into());
        }
        names
    }

    /// Resolves `image` and unpacks it unless this digest is unpacked already.
    pub async fn pull(&self, image: &str) -> Result<PulledImage, ImageError> {
        let (layout, tag, digest) = self.resolve(image)?;
        let broken = |why: String| ImageError::Broken {
            image: image.to_owned(),
            why,
        };
        let defaults = read_defaults(&layout, &digest).map_err(broken)?;
        let hex = digest.trim_start_matches("sha256:").to_owned();
        let target = self.cache.join(&hex);
        let rootfs = target.join("rootfs");
        let lock = {
            let mut map = self.unpacking.lock().await;
            map.entry(hex.clone()).or_default().clone()
        };
        let _held = lock.lock().await;
        if !rootfs.is_dir() {
            let tmp = self.cache.join(format!("{hex}.partial"));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)
                .map_err(|e| broken(format!("creating {}: {e}", tmp.display())))?;
            let reference = format!("{}:{tag}", layout.display());
            let out = tokio::process::Command::new("umoci")
                .args(["raw", "unpack", "--image", &reference])
                .arg(tmp.join("rootfs"))
                .output()
                .await
                .map_err(|e| broken(format!("running umoci: {e}")))?;
            if !out.status.success() {
                return Err(broken(format!(
                    "umoci raw unpack {reference}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            std::fs::rename(&tmp, &target)
                .map_err(|e| broken(format!("moving the unpacked image into place: {e}")))?;
            tracing::info!(%image, %digest, dir = %target.display(), "image unpacked");
        }
        Ok(PulledImage {
            digest,
            rootfs,
            defaults,
        })
    }
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    layout.join("blobs").join(algorithm).join(hex)
}

/// Reads the image configuration that manifest `digest` of `layout` points at.
fn read_defaults(layout: &Path, digest: &str) -> Result<ImageDefaults, String> {
    let manifest = ImageManifest::from_file(blob(layout, digest))
        .map_err(|e| format!("manifest {digest}: {e}"))?;
    let config_digest = manifest.config().digest().to_string();
    let config = ImageConfiguration::from_file(blob(layout, &config_digest))
        .map_err(|e| format!("config {config_digest}: {e}"))?;
    let c = config.config().clone().unwrap_or_default();
    Ok(ImageDefaults {
        user: c.user().clone().filter(|u| !u.is_empty()),
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_a_registry_would() {
        let r = ImageReference::parse("ghcr.io:443/acme/datastream-sidecar:0.1.0").unwrap();
        assert_eq!(
            (r.name.as_str(), r.tag.as_deref(), r.digest),
            ("datastream-sidecar", Some("0.1.0"), None)
        );
        let r = ImageReference::parse("datastream-operator").unwrap();
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let hex = "a".repeat(64);
        let r = ImageReference::parse(&format!("x/y@sha256:{hex}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest, Some(format!("sha256:{hex}")));
        assert!(ImageReference::parse("x@sha256:short").is_err());
        assert!(ImageReference::parse("x:").is_err());
        assert!(ImageReference::parse("registry/").is_err());
        for escaping in ["x/..:1", "x/.hidden", "x/UPPER:1", "x/a b"] {
            assert_eq!(
                ImageReference::parse(escaping).unwrap_err().reason(),
                "InvalidImageName",
                "{escaping}"
            );
        }
        assert_eq!(
            ImageReference::parse("x@md5:1").unwrap_err().reason(),
            "InvalidImageName"
        );
    }

    fn write_layout(dir: &Path, tag: &str) -> String {
        let config = r#"{"architecture":"amd64","os":"linux","config":{"User":"65532:65532","Entrypoint":["/usr/local/bin/x"],"Cmd":["serve"],"Env":["PATH=/bin"],"WorkingDir":"/w"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let put = |content: &str| {
            use std::fmt::Write;
            let hex = {
                // Not a real hash: the store reads blobs by name and never verifies them.
                let mut s = String::new();
                for b in content
                    .len()
                    .to_be_bytes()
                    .iter()
                    .chain(content.as_bytes())
                    .take(32)
                {
                    write!(s, "{b:02x}").unwrap();
                }
                format!("{s:0<64}")
            };
            std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
            std::fs::write(dir.join("blobs/sha256").join(&hex), content).unwrap();
            (format!("sha256:{hex}"), content.len())
        };
        let (cd, cs) = put(config);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[]}}"#
        );
        let (md, ms) = put(&manifest);
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms},"annotations":{{"{REF_NAME}":"{tag}"}}}}]}}"#
        );
        std::fs::write(dir.join("index.json"), index).unwrap();
        md
    }

    #[test]
    fn resolves_tags_and_digests_and_names_what_is_missing() {
        let store_dir = tempfile::tempdir().unwrap();
        let layout = store_dir.path().join("datastream-sidecar");
        std::fs::create_dir_all(&layout).unwrap();
        let digest = write_layout(&layout, "0.1.0");
        let store = ImageStore::new(store_dir.path(), store_dir.path().join("cache"));

        let (dir, tag, d) = store.resolve("ghcr.io/x/datastream-sidecar:0.1.0").unwrap();
        assert_eq!((dir, tag.as_str(), &d), (layout.clone(), "0.1.0", &digest));
        let (_, _, d) = store
            .resolve(&format!("any/datastream-sidecar@{digest}"))
            .unwrap();
        assert_eq!(d, digest);

        let e = store.resolve("x/datastream-sidecar:9.9").unwrap_err();
        assert_eq!(e.reason(), "ErrImagePull");
        assert!(
            e.to_string().contains("has no 9.9; it has 0.1.0@sha256:"),
            "{e}"
        );
        let e = store.resolve("x/datastream-sidecar").unwrap_err();
        assert!(e.to_string().contains("has no latest"), "{e}");
        let e = store.resolve("x/nginx:1.27").unwrap_err();
        assert!(
            e.to_string()
                .contains("no layout \"nginx\"; images here: datastream-sidecar"),
            "{e}"
        );
        let other = format!("sha256:{}", "b".repeat(64));
        assert!(
            store
                .resolve(&format!("datastream-sidecar@{other}"))
                .is_err()
        );

        let defaults = read_defaults(&layout, &digest).unwrap();
        assert_eq!(
            defaults,
            ImageDefaults {
                user: Some("65532:65532".into()),
                entrypoint: vec!["/usr/local/bin/x".into()],
                cmd: vec!["serve".into()],
                env: vec!["PATH=/bin".into()],
                working_dir: Some("/w".into()),
            }
        );
    }
}
