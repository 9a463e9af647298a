//! SPIFFE IDs of Kubernetes workloads: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.

use std::fmt;
use std::str::FromStr;

/// The identity of every pod running as one ServiceAccount in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a workload SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{id:?} is not a workload SPIFFE ID (spiffe://<trust domain>/ns/<namespace>/sa/<service account>): {why}"
)]
pub struct InvalidId {
    id: String,
    why: &'static str,
}

impl WorkloadId {
    /// The identity of ServiceAccount `service_account` in `namespace` under `trust_domain`.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, InvalidId> {
        let id = Self {
            trust_domain: trust_domain.to_ascii_lowercase(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        };
        id.validate()?;
        Ok(id)
    }

    fn validate(&self) -> Result<(), InvalidId> {
        let bad = |why| {
            Err(InvalidId {
                id: self.to_string(),
                why,
            })
        };
        // SPIFFE: the trust domain is lowercase letters, digits, dots, dashes and underscores.
        if self.trust_domain.is_empty()
            || !self
                .trust_domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return bad("the trust domain must be non-empty [a-z0-9._-]");
        }
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
        };
        if !label(&self.namespace) {
            return bad("the namespace must be a Kubernetes name");
        }
        if !label(&self.service_account) {
            return bad("the service account must be a Kubernetes name");
        }
        Ok(())
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The ServiceAccount's name.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The identity of a Kubernetes user name `system:serviceaccount:<ns>:<sa>`, as a TokenReview
    /// reports it; `None` for any other user.
    pub fn from_service_account_user(trust_domain: &str, user: &str) -> Option<Self> {
        let rest = user.strip_prefix("system:serviceaccount:")?;
        let (namespace, service_account) = rest.split_once(':')?;
        Self::new(trust_domain, namespace, service_account).ok()
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for WorkloadId {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| InvalidId {
            id: s.to_owned(),
            why,
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("no spiffe:// scheme"))?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad("the path must be /ns/<namespace>/sa/<service account>"));
        };
        if td.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("the trust domain must be lowercase"));
        }
        Self::new(td, ns, sa)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_a_workload_id() {
        let id = WorkloadId::new("cluster.local", "shop", "catalog").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/catalog");
        assert_eq!(id.to_string().parse::<WorkloadId>().unwrap(), id);
        for bad in [
            "https://cluster.local/ns/shop/sa/catalog",
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/catalog/extra",
            "spiffe://Cluster.local/ns/shop/sa/catalog",
            "spiffe:///ns/shop/sa/catalog",
            "spiffe://cluster.local/ns//sa/catalog",
            "spiffe://cluster.local/ns/Shop/sa/catalog",
            "spiffe://cluster.local/sa/shop/ns/catalog",
        ] {
            assert!(bad.parse::<WorkloadId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn service_account_users_map_to_identities() {
        let id = WorkloadId::from_service_account_user(
            "cluster.local",
            "system:serviceaccount:shop:catalog-peers",
        )
        .unwrap();
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "catalog-peers");
        assert!(WorkloadId::from_service_account_user("cluster.local", "system:admin").is_none());
        assert!(
            WorkloadId::from_service_account_user("cluster.local", "system:serviceaccount:x")
                .is_none()
        );
    }
}
