//! Reconcile errors. Variant names are stable: they become the `reason` label of the error metric.

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Server-side apply of a child was refused or failed.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        /// Kind of the child.
        kind: &'static str,
        /// Name of the child.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Deleting a child that is no longer wanted failed.
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        /// Kind of the child.
        kind: &'static str,
        /// Name of the child.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Growing a replica's PersistentVolumeClaim was refused (typically: its StorageClass does
    /// not allow volume expansion).
    #[error("resizing PersistentVolumeClaim {name}: {source}")]
    ResizeClaim {
        /// Name of the claim.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// A child's name is taken by an object this DataStream does not control: the operator
    /// neither takes it over nor, later, lets it be garbage-collected.
    #[error(
        "{kind} {name} already exists and is {holder}: the operator will not take it over; rename the DataStream or remove the {kind}"
    )]
    NameConflict {
        /// Kind of the child.
        kind: &'static str,
        /// Name of the child (and of the object in the way).
        name: String,
        /// Who controls the object in the way, in words.
        holder: String,
    },
    /// Looking up whether a child's name is free failed.
    #[error("looking up {kind} {name}: {source}")]
    Lookup {
        /// Kind of the child.
        kind: &'static str,
        /// Name of the child.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Writing the DataStream's status failed.
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    /// The DataStream has no namespace (it is namespaced, so this means a corrupt object).
    #[error("the DataStream has no namespace")]
    MissingNamespace,
}

impl Error {
    /// Reason of the `Degraded` condition this error sets.
    pub fn condition_reason(&self) -> &'static str {
        match self {
            Error::ResizeClaim { .. } => "VolumeResizeFailed",
            Error::NameConflict { .. } => "NameConflict",
            _ => "ReconcileFailed",
        }
    }

    /// Reason of the Warning event this error publishes.
    pub fn event_reason(&self) -> &'static str {
        match self {
            Error::NameConflict { .. } => "NameConflict",
            _ => "ReconcileFailed",
        }
    }

    /// Bounded label for metrics: the variant name.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Apply { .. } => "Apply",
            Error::Delete { .. } => "Delete",
            Error::ResizeClaim { .. } => "ResizeClaim",
            Error::NameConflict { .. } => "NameConflict",
            Error::Lookup { .. } => "Lookup",
            Error::Status(_) => "Status",
            Error::MissingNamespace => "MissingNamespace",
        }
    }
}

/// Result of reconcile steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;
