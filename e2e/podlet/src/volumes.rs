//! Materialising pod volumes in the pod directory, and refreshing projected service-account tokens.
//!
//! Supported: `emptyDir`, `hostPath`, `persistentVolumeClaim` (the bound PersistentVolume's `hostPath` or
//! `local` directory, resolved by [`crate::claims`] before the sandbox exists), `configMap`, `secret`,
//! `downwardAPI` (fieldRef items) and `projected` (serviceAccountToken via the TokenRequest API bound to
//! the pod, configMap, secret, downwardAPI) — which covers the `kube-api-access-*` volume the
//! ServiceAccount admission plugin injects. `emptyDir`, `hostPath` and claims are writable (a claim is
//! read-only when its volume source says `readOnly: true`), the others read-only. ConfigMap and
//! Secret content is written at pod start and re-synced every [`OBJECT_SYNC`] (the kubelet's sync is
//! about a minute); a changed file is replaced atomically, one file at a time (the kubelet swaps a
//! whole volume at once through its `..data` symlink). Tokens are re-requested at 80 % of their
//! lifetime and replaced atomically. Other volume types keep the pod's containers waiting.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Container, KeyToPath, ObjectFieldSelector, Pod, ServiceAccount, Volume,
};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::claims::ClaimMount;
use crate::env::{PodFacts, field_value};
use crate::objects::{self, Data};
use crate::runtime::BindMount;

/// Token lifetime when a projection does not say (the admission plugin's 3607 s).
const DEFAULT_TOKEN_SECONDS: i64 = 3607;
/// How often ConfigMap and Secret volumes are re-synced with their objects.
pub const OBJECT_SYNC: Duration = Duration::from_secs(10);

/// Why the volumes of a pod cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A referenced object is missing and not optional.
    #[error("{kind} {name:?} not found")]
    Missing {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Object name.
        name: String,
    },
    /// A referenced key is missing and not optional.
    #[error("key {key:?} not found in {kind} {name:?}")]
    MissingKey {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Object name.
        name: String,
        /// Key.
        key: String,
    },
    /// A volume type the podlet does not implement.
    #[error("volume {0:?}: unsupported volume type")]
    Unsupported(String),
    /// A `persistentVolumeClaim` volume whose claim was not resolved first.
    #[error("volume {0:?}: claim not resolved")]
    UnresolvedClaim(String),
    /// A path that would escape the volume directory.
    #[error("invalid path {0:?} in volume")]
    BadPath(String),
    /// Talking to the API failed.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// Writing files failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
struct TokenFile {
    file: PathBuf,
    audience: Option<String>,
    expiration_seconds: i64,
    refresh_at: Timestamp,
}

/// Files written from a ConfigMap or a Secret, to re-sync.
#[derive(Debug, Clone)]
struct ObjectFiles {
    dir: PathBuf,
    kind: &'static str,
    name: String,
    items: Option<Vec<KeyToPath>>,
    default_mode: Option<i32>,
}

/// The prepared volumes of one pod.
#[derive(Debug, Default)]
pub struct Volumes {
    paths: HashMap<String, PathBuf>,
    read_only: HashMap<String, bool>,
    tokens: Vec<TokenFile>,
    objects: Vec<ObjectFiles>,
    /// When the objects are next re-synced.
    objects_sync_at: Option<Timestamp>,
    /// The pod's `fsGroup`, given to re-synced files too.
    fs_group: Option<u32>,
    /// Volumes whose ownership `fsGroup` manages (all but `hostPath`, as in the kubelet).
    fs_group_managed: Vec<String>,
}

impl Volumes {
    /// Prepares every volume of `pod` under `dir` (one sub-directory per volume that needs content);
    /// `claims` holds the resolved `persistentVolumeClaim` volumes ([`crate::claims::resolve`]).
    pub async fn prepare(
        client: &Client,
        pod: &Pod,
        facts: &PodFacts,
        dir: &Path,
        claims: &HashMap<String, ClaimMount>,
    ) -> Result<Self, VolumeError> {
        let mut v = Volumes::default();
        for vol in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            v.prepare_one(client, pod, facts, dir, vol, claims).await?;
        }
        Ok(v)
    }

    async fn prepare_one(
        &mut self,
        client: &Client,
        pod: &Pod,
        facts: &PodFacts,
        dir: &Path,
        vol: &Volume,
        claims: &HashMap<String, ClaimMount>,
    ) -> Result<(), VolumeError> {
        let ns = facts.namespace.as_str();
        let path = dir.join(&vol.name);
        let mut read_only = true;
        if let Some(hp) = &vol.host_path {
            self.paths.insert(vol.name.clone(), PathBuf::from(&hp.path));
            self.read_only.insert(vol.name.clone(), false);
            return Ok(());
        }
        if vol.persistent_volume_claim.is_some() {
            // The volume's own directory: it outlives the pod, so nothing goes under `dir`.
            let c = claims
                .get(&vol.name)
                .ok_or_else(|| VolumeError::UnresolvedClaim(vol.name.clone()))?;
            self.paths.insert(vol.name.clone(), c.path.clone());
            self.read_only.insert(vol.name.clone(), c.read_only);
            self.fs_group_managed.push(vol.name.clone());
            return Ok(());
        }
        std::fs::create_dir_all(&path)?;
        self.fs_group_managed.push(vol.name.clone());
        if let Some(empty_dir) = &vol.empty_dir {
            read_only = false;
            if empty_dir.medium.as_deref() == Some("Memory") {
                // As the kubelet does: one tmpfs for the pod, bind-mounted into each container, so
                // its containers share it and its pages count against the node's memory.
                let size = empty_dir
                    .size_limit
                    .as_ref()
                    .map(|q| crate::security::parse_bytes(&q.0))
                    .transpose()
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                mount_tmpfs(&path, size)?;
            }
        } else if let Some(cm) = &vol.config_map {
            let data = objects::config_map(client, ns, &cm.name).await?;
            write_data(
                &path,
                "configmap",
                &cm.name,
                data,
                cm.items.as_deref(),
                cm.optional,
                cm.default_mode,
            )?;
            self.watch_object(
                &path,
                "configmap",
                &cm.name,
                cm.items.as_deref(),
                cm.default_mode,
            );
        } else if let Some(s) = &vol.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = objects::secret(client, ns, &name).await?;
            write_data(
                &path,
                "secret",
                &name,
                data,
                s.items.as_deref(),
                s.optional,
                s.default_mode,
            )?;
            self.watch_object(&path, "secret", &name, s.items.as_deref(), s.default_mode);
        } else if let Some(d) = &vol.downward_api {
            for item in d.items.iter().flatten() {
                write_field(
                    &path,
                    &item.path,
                    item.field_ref.as_ref(),
                    facts,
                    item.mode.or(d.default_mode),
                )?;
            }
        } else if let Some(p) = &vol.projected {
            for src in p.sources.iter().flatten() {
                if let Some(t) = &src.service_account_token {
                    let file = safe_join(&path, &t.path)?;
                    let mut token = TokenFile {
                        file,
                        audience: t.audience.clone(),
                        expiration_seconds: t.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
                        refresh_at: Timestamp::now(),
                    };
                    request_token(client, pod, facts, &mut token, p.default_mode).await?;
                    self.tokens.push(token);
                } else if let Some(cm) = &src.config_map {
                    let data = objects::config_map(client, ns, &cm.name).await?;
                    write_data(
                        &path,
                        "configmap",
                        &cm.name,
                        data,
                        cm.items.as_deref(),
                        cm.optional,
                        p.default_mode,
                    )?;
                    self.watch_object(
                        &path,
                        "configmap",
                        &cm.name,
                        cm.items.as_deref(),
                        p.default_mode,
                    );
                } else if let Some(s) = &src.secret {
                    let data = objects::secret(client, ns, &s.name).await?;
                    write_data(
                        &path,
                        "secret",
                        &s.name,
                        data,
                        s.items.as_deref(),
                        s.optional,
                        p.default_mode,
                    )?;
                    self.watch_object(&path, "secret", &s.name, s.items.as_deref(), p.default_mode);
                } else if let Some(d) = &src.downward_api {
                    for item in d.items.iter().flatten() {
                        write_field(
                            &path,
                            &item.path,
                            item.field_ref.as_ref(),
                            facts,
                            item.mode.or(p.default_mode),
                        )?;
                    }
                } else {
                    return Err(VolumeError::Unsupported(vol.name.clone()));
                }
            }
        } else {
            return Err(VolumeError::Unsupported(vol.name.clone()));
        }
        self.paths.insert(vol.name.clone(), path);
        self.read_only.insert(vol.name.clone(), read_only);
        Ok(())
    }

    fn watch_object(
        &mut self,
        dir: &Path,
        kind: &'static str,
        name: &str,
        items: Option<&[KeyToPath]>,
        default_mode: Option<i32>,
    ) {
        self.objects.push(ObjectFiles {
            dir: dir.to_owned(),
            kind,
            name: name.to_owned(),
            items: items.map(<[KeyToPath]>::to_vec),
            default_mode,
        });
        self.objects_sync_at = Some(after(Timestamp::now(), OBJECT_SYNC));
    }

    /// The earliest time a token must be refreshed or the objects re-synced.
    pub fn next_refresh(&self) -> Option<Timestamp> {
        self.tokens
            .iter()
            .map(|t| t.refresh_at)
            .chain(self.objects_sync_at)
            .min()
    }

    /// Re-syncs ConfigMap and Secret files with their objects when due: a changed file is
    /// replaced atomically; a deleted object or key leaves the files as they are (as the kubelet
    /// does, which keeps the last content until the pod goes).
    pub async fn sync_objects(&mut self, client: &Client, ns: &str) -> Result<(), VolumeError> {
        let now = Timestamp::now();
        if self.objects_sync_at.is_none_or(|t| t > now) {
            return Ok(());
        }
        self.objects_sync_at = Some(after(now, OBJECT_SYNC));
        for o in &self.objects {
            let data = match o.kind {
                "secret" => objects::secret(client, ns, &o.name).await?,
                _ => objects::config_map(client, ns, &o.name).await?,
            };
            if data.is_none() {
                continue;
            }
            // Missing keys are skipped rather than failing the sync.
            write_data(
                &o.dir,
                o.kind,
                &o.name,
                data,
                o.items.as_deref(),
                Some(true),
                o.default_mode,
            )?;
        }
        if let Some(gid) = self.fs_group {
            self.apply_fs_group(gid)?;
        }
        Ok(())
    }

    /// Re-requests every token that is due.
    pub async fn refresh_tokens(
        &mut self,
        client: &Client,
        pod: &Pod,
        facts: &PodFacts,
    ) -> Result<(), VolumeError> {
        let now = Timestamp::now();
        let mut result = Ok(());
        for t in self.tokens.iter_mut().filter(|t| t.refresh_at <= now) {
            if let Err(e) = request_token(client, pod, facts, t, None).await {
                // Retry soon, but not in a tight loop; the old token stays valid until it expires.
                t.refresh_at = now
                    .checked_add(jiff::SignedDuration::from_secs(10))
                    .unwrap_or(now);
                result = Err(e);
            }
        }
        result
    }

    /// Gives the pod's `fsGroup` the volumes it manages, as the kubelet does before containers start:
    /// every file and directory gets group `gid` with the owner's read (and, in writable volumes,
    /// write) permission; directories get the set-group-ID bit so that new files join the group.
    pub fn apply_fs_group(&mut self, gid: u32) -> std::io::Result<()> {
        self.fs_group = Some(gid);
        for name in &self.fs_group_managed {
            let (Some(path), writable) = (
                self.paths.get(name),
                !self.read_only.get(name).copied().unwrap_or(true),
            ) else {
                continue;
            };
            give_group(path, gid, writable)?;
        }
        Ok(())
    }

    /// Bind mounts for `container`'s `volumeMounts`. A missing `subPath` of a writable volume is created
    /// as a directory, as the kubelet does (StatefulSets often keep their data in a sub-directory of
    /// the claim).
    pub fn mounts_for(&self, container: &Container) -> Result<Vec<BindMount>, String> {
        let mut out = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            let base = self
                .paths
                .get(&m.name)
                .ok_or_else(|| format!("volumeMount {:?} names no prepared volume", m.name))?;
            let volume_ro = self.read_only.get(&m.name).copied().unwrap_or(false);
            let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => {
                    let p = safe_join(base, sub).map_err(|e| e.to_string())?;
                    if !volume_ro && !p.exists() {
                        std::fs::create_dir_all(&p)
                            .map_err(|e| format!("creating subPath {}: {e}", p.display()))?;
                    }
                    p
                }
                None => base.clone(),
            };
            out.push(BindMount {
                source,
                target: PathBuf::from(&m.mount_path),
                read_only: volume_ro || m.read_only == Some(true),
            });
        }
        Ok(out)
    }
}

async fn request_token(
    client: &Client,
    pod: &Pod,
    facts: &PodFacts,
    t: &mut TokenFile,
    mode: Option<i32>,
) -> Result<(), VolumeError> {
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: t.audience.clone().map(|a| vec![a]),
            expiration_seconds: Some(t.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..TokenRequest::default()
    };
    let api = Api::<ServiceAccount>::namespaced(client.clone(), &facts.namespace);
    let resp: TokenRequest = api
        .create_subresource(
            "token",
            &facts.service_account,
            &PostParams::default(),
            &req,
        )
        .await?;
    let status = resp.status.unwrap_or_default();
    let token = status.token.unwrap_or_default();
    let now = Timestamp::now();
    let expires = status.expiration_timestamp.map(|t| t.0).unwrap_or(now);
    let ttl = expires.duration_since(now).as_secs().max(0);
    let refresh_in = Duration::from_secs(u64::try_from(ttl * 8 / 10).unwrap_or(0).max(10));
    t.refresh_at = now
        .checked_add(
            jiff::SignedDuration::try_from(refresh_in)
                .unwrap_or(jiff::SignedDuration::from_secs(10)),
        )
        .unwrap_or(now);
    write_atomic(&t.file, token.as_bytes(), mode)?;
    tracing::debug!(pod = %facts.name, file = %t.file.display(), refresh_at = %t.refresh_at, "service account token written");
    Ok(())
}

fn write_field(
    dir: &Path,
    rel: &str,
    field: Option<&ObjectFieldSelector>,
    facts: &PodFacts,
    mode: Option<i32>,
) -> Result<(), VolumeError> {
    let Some(f) = field else {
        tracing::warn!(
            path = rel,
            "downwardAPI resourceFieldRef items are not supported; file left out"
        );
        return Ok(());
    };
    let value = match f.field_path.as_str() {
        "metadata.labels" => format_map(&facts.labels),
        "metadata.annotations" => format_map(&facts.annotations),
        p => field_value(p, facts).map_err(|e| VolumeError::BadPath(e.to_string()))?,
    };
    write_atomic(&safe_join(dir, rel)?, value.as_bytes(), mode)?;
    Ok(())
}

/// The downward API's `key="value"` lines.
fn format_map(m: &std::collections::BTreeMap<String, String>) -> String {
    m.iter().map(|(k, v)| format!("{k}={v:?}\n")).collect()
}

fn write_data(
    dir: &Path,
    kind: &'static str,
    name: &str,
    data: Option<Data>,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    default_mode: Option<i32>,
) -> Result<(), VolumeError> {
    let Some(data) = data else {
        return if optional == Some(true) {
            Ok(())
        } else {
            Err(VolumeError::Missing {
                kind,
                name: name.to_owned(),
            })
        };
    };
    match items {
        None => {
            for (k, v) in &data {
                write_atomic(&safe_join(dir, k)?, v, default_mode)?;
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        write_atomic(&safe_join(dir, &item.path)?, v, item.mode.or(default_mode))?
                    }
                    None if optional == Some(true) => {}
                    None => {
                        return Err(VolumeError::MissingKey {
                            kind,
                            name: name.to_owned(),
                            key: item.key.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// Joins a relative path from the API under `dir`, refusing absolute paths and `..`.
pub fn safe_join(dir: &Path, rel: &str) -> Result<PathBuf, VolumeError> {
    let p = Path::new(rel);
    if rel.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(VolumeError::BadPath(rel.to_owned()));
    }
    Ok(dir.join(p))
}

/// Mounts a tmpfs at `path` (limited to `size` bytes when given; the kernel's default is half of
/// the memory otherwise). The pod's teardown unmounts it.
fn mount_tmpfs(path: &Path, size: Option<i64>) -> std::io::Result<()> {
    let mut options = "mode=0777".to_owned();
    if let Some(size) = size {
        options.push_str(&format!(",size={size}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(std::io::Error::from)
}

fn give_group(path: &Path, gid: u32, writable: bool) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, None, Some(gid))?;
    let mode = meta.permissions().mode() & 0o7777;
    // The group gets what the owner has (read, and write where the volume is writable).
    let mut group = (mode & 0o400) >> 3;
    if writable {
        group |= (mode & 0o200) >> 3;
    }
    let mut new = mode | group;
    if meta.is_dir() {
        new |= 0o2000 | ((mode & 0o100) >> 3);
        for entry in std::fs::read_dir(path)? {
            give_group(&entry?.path(), gid, writable)?;
        }
    }
    if new != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(new))?;
    }
    Ok(())
}

/// Writes through a temporary file and a rename, so a reader never sees a half-written token.
/// `now` plus `d`.
fn after(now: Timestamp, d: Duration) -> Timestamp {
    now.checked_add(jiff::SignedDuration::try_from(d).unwrap_or_default())
        .unwrap_or(now)
}

/// Replaces `path` with `content` through a rename, unless it already holds exactly that.
fn write_atomic(path: &Path, content: &[u8], mode: Option<i32>) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("podlet-tmp");
    std::fs::write(&tmp, content)?;
    let mode = mode.and_then(|m| u32::try_from(m).ok()).unwrap_or(0o644);
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o777))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::VolumeMount;

    #[test]
    fn safe_join_rejects_escapes() {
        let d = Path::new("/x");
        assert_eq!(safe_join(d, "a/b").unwrap(), PathBuf::from("/x/a/b"));
        assert!(safe_join(d, "../etc").is_err());
        assert!(safe_join(d, "/etc").is_err());
        assert!(safe_join(d, "").is_err());
    }

    #[test]
    fn data_with_items_modes_and_optional() {
        let dir = tempfile::tempdir().unwrap();
        let data: Data = [
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]
        .into();
        let items = [KeyToPath {
            key: "b".into(),
            path: "sub/b.txt".into(),
            mode: Some(0o600),
        }];
        write_data(
            dir.path(),
            "configmap",
            "cm",
            Some(data.clone()),
            Some(&items),
            None,
            None,
        )
        .unwrap();
        let f = dir.path().join("sub/b.txt");
        assert_eq!(std::fs::read(&f).unwrap(), b"2");
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dir.path().join("a").exists());

        write_data(
            dir.path(),
            "secret",
            "s",
            Some(data),
            None,
            None,
            Some(0o640),
        )
        .unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"1");

        assert!(write_data(dir.path(), "secret", "gone", None, None, Some(true), None).is_ok());
        assert!(matches!(
            write_data(dir.path(), "secret", "gone", None, None, None, None),
            Err(VolumeError::Missing { .. })
        ));
        let missing = [KeyToPath {
            key: "zz".into(),
            path: "zz".into(),
            mode: None,
        }];
        assert!(matches!(
            write_data(
                dir.path(),
                "configmap",
                "cm",
                Some(Data::new()),
                Some(&missing),
                None,
                None
            ),
            Err(VolumeError::MissingKey { .. })
        ));
    }

    #[test]
    fn downward_api_files() {
        let dir = tempfile::tempdir().unwrap();
        let facts = PodFacts {
            namespace: "ns1".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..PodFacts::default()
        };
        let sel = |p: &str| ObjectFieldSelector {
            field_path: p.into(),
            api_version: None,
        };
        write_field(
            dir.path(),
            "namespace",
            Some(&sel("metadata.namespace")),
            &facts,
            None,
        )
        .unwrap();
        write_field(
            dir.path(),
            "labels",
            Some(&sel("metadata.labels")),
            &facts,
            None,
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("namespace")).unwrap(),
            "ns1"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("labels")).unwrap(),
            "app=\"web\"\n"
        );
    }

    #[test]
    fn mounts_follow_volume_kind_and_sub_path() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch");
        let mut v = Volumes::default();
        v.paths.insert("cfg".into(), "/pod/volumes/cfg".into());
        v.read_only.insert("cfg".into(), true);
        v.paths.insert("scratch".into(), scratch.clone());
        v.read_only.insert("scratch".into(), false);
        let c = Container {
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "cfg".into(),
                    mount_path: "/etc/app".into(),
                    ..Default::default()
                },
                VolumeMount {
                    name: "scratch".into(),
                    mount_path: "/tmp/x".into(),
                    sub_path: Some("inner".into()),
                    ..Default::default()
                },
            ]),
            ..Container::default()
        };
        let m = v.mounts_for(&c).unwrap();
        assert_eq!(
            m[0],
            BindMount {
                source: "/pod/volumes/cfg".into(),
                target: "/etc/app".into(),
                read_only: true
            }
        );
        assert_eq!(
            m[1],
            BindMount {
                source: scratch.join("inner"),
                target: "/tmp/x".into(),
                read_only: false
            }
        );
        // The missing subPath of a writable volume was created; a read-only one is never touched.
        assert!(scratch.join("inner").is_dir());
        let bad = Container {
            volume_mounts: Some(vec![VolumeMount {
                name: "nope".into(),
                mount_path: "/x".into(),
                ..Default::default()
            }]),
            ..Container::default()
        };
        assert!(v.mounts_for(&bad).is_err());
    }
}
