//! The image map: which local binary a container image runs, and how `command`/`args` become an argv.
//!
//! An image whose last path segment (ignoring any `:tag` and `@digest`) is one of [`MAPPED_BINARIES`] runs
//! `<bin-dir>/<that name>`, whatever the registry prefix or tag. Any other image cannot run here and the
//! container waits with reason [`IMAGE_NOT_MAPPED`] (`ErrImagePull`, as a kubelet says).
//!
//! `command` and `args` follow Kubernetes semantics with the mapped binary as the image entrypoint:
//! - no `command`: the mapped binary runs with `args`;
//! - `command` given: it replaces the entrypoint. Its first element is resolved through the map too when
//!   its file name is one of our binaries (so `command: ["/usr/local/bin/datastream-sidecar"]` still runs
//!   the cargo-built binary); otherwise it runs as given (absolute path or looked up in `PATH`), which is
//!   handy for `sh -c` style debugging. The rest of `command` followed by `args` is its argument list.

use std::path::{Path, PathBuf};

/// Binaries built by this workspace that images may name.
pub const MAPPED_BINARIES: [&str; 3] = [
    "datastream-operator",
    "datastream-sidecar",
    "datastream-demo-replica",
];

/// Waiting reason of a container whose image maps to no local binary: the kubelet's reason for an
/// image it cannot pull, so that the operator's failure reporting sees what it would on a cluster.
pub const IMAGE_NOT_MAPPED: &str = "ErrImagePull";

/// Returns the mapped binary name of `image`, if any.
pub fn binary_for_image(image: &str) -> Option<&'static str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    // A `:` in the last segment can only be a tag (a registry port lives in the first segment).
    let name = last.split(':').next().unwrap_or(last);
    MAPPED_BINARIES.iter().copied().find(|b| *b == name)
}

/// The program and arguments a container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    /// Executable path, or a bare name looked up in the container's `PATH`.
    pub program: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<String>,
}

/// Why an image cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image {image:?} maps to no local binary (known: {known})", known = MAPPED_BINARIES.join(", "))]
pub struct ImageNotMapped {
    /// The offending image reference.
    pub image: String,
}

/// Resolves images against a directory of cargo-built binaries.
#[derive(Debug, Clone)]
pub struct ImageMap {
    bin_dir: PathBuf,
}

impl ImageMap {
    /// Images resolve to binaries inside `bin_dir` (e.g. `target/debug`).
    pub fn new(bin_dir: impl Into<PathBuf>) -> Self {
        Self {
            bin_dir: bin_dir.into(),
        }
    }

    /// The directory binaries are taken from.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Builds the entrypoint of a container from its image, `command` and `args` (already `$(VAR)`-expanded).
    pub fn entrypoint(
        &self,
        image: &str,
        command: &[String],
        args: &[String],
    ) -> Result<Entrypoint, ImageNotMapped> {
        let mapped = binary_for_image(image).ok_or_else(|| ImageNotMapped {
            image: image.to_owned(),
        })?;
        match command.split_first() {
            None => Ok(Entrypoint {
                program: self.bin_dir.join(mapped),
                args: args.to_vec(),
            }),
            Some((first, rest)) => {
                let file_name = Path::new(first)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or(first);
                let program = match MAPPED_BINARIES.iter().find(|b| **b == file_name) {
                    Some(bin) => self.bin_dir.join(bin),
                    None => PathBuf::from(first),
                };
                let mut all = rest.to_vec();
                all.extend_from_slice(args);
                Ok(Entrypoint { program, args: all })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn image_names_with_registry_tag_and_digest() {
        assert_eq!(
            binary_for_image("datastream-sidecar"),
            Some("datastream-sidecar")
        );
        assert_eq!(
            binary_for_image("ghcr.io/acme/datastream-operator:v1.2"),
            Some("datastream-operator")
        );
        assert_eq!(
            binary_for_image("localhost:5000/x/datastream-demo-replica@sha256:abc"),
            Some("datastream-demo-replica")
        );
        assert_eq!(
            binary_for_image("reg:5000/datastream-sidecar:dev@sha256:abc"),
            Some("datastream-sidecar")
        );
        assert_eq!(binary_for_image("nginx:1.27"), None);
        assert_eq!(binary_for_image("datastream-sidecar-extra"), None);
        assert_eq!(binary_for_image("datastream-sidecar/other"), None);
    }

    #[test]
    fn default_entrypoint_takes_args() {
        let m = ImageMap::new("/t/debug");
        let e = m
            .entrypoint(
                "e2e/datastream-demo-replica:dev",
                &[],
                &s(&["--listen", "0.0.0.0:9"]),
            )
            .unwrap();
        assert_eq!(e.program, PathBuf::from("/t/debug/datastream-demo-replica"));
        assert_eq!(e.args, s(&["--listen", "0.0.0.0:9"]));
    }

    #[test]
    fn command_naming_our_binary_is_mapped() {
        let m = ImageMap::new("/t/debug");
        let e = m
            .entrypoint(
                "x/datastream-sidecar:1",
                &s(&["/usr/bin/datastream-sidecar", "--config"]),
                &s(&["/c.yaml"]),
            )
            .unwrap();
        assert_eq!(e.program, PathBuf::from("/t/debug/datastream-sidecar"));
        assert_eq!(e.args, s(&["--config", "/c.yaml"]));
    }

    #[test]
    fn foreign_command_runs_as_given() {
        let m = ImageMap::new("/t/debug");
        let e = m
            .entrypoint("datastream-sidecar", &s(&["sh", "-c"]), &s(&["exit 3"]))
            .unwrap();
        assert_eq!(e.program, PathBuf::from("sh"));
        assert_eq!(e.args, s(&["-c", "exit 3"]));
    }

    #[test]
    fn unmapped_image_is_an_error() {
        let m = ImageMap::new("/t/debug");
        let err = m.entrypoint("busybox", &s(&["sh"]), &[]).unwrap_err();
        assert_eq!(err.image, "busybox");
    }
}
