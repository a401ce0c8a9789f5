//! The messages exchanged over certfleet connections.
//!
//! Every connection starts with [`Hello`] / [`HelloReply`] on its first
//! bidirectional stream; after that each bidirectional stream carries one
//! [`Request`] and one [`Response`]. Enum variants are encoded by index, so
//! new variants go at the end of an enum and nothing is ever reordered.
//! The serde names below are also the CLI's JSON output (`docs/cli.md`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::secret::Secret;
use crate::version::VersionRange;

/// A point in time, in whole seconds since the Unix epoch. Encoded as an
/// integer on the wire and as RFC 3339 text in human-readable formats (JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn to_rfc3339(self) -> String {
        time::OffsetDateTime::from_unix_timestamp(self.0)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| self.0.to_string())
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_rfc3339())
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            let t =
                time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                    .map_err(serde::de::Error::custom)?;
            Ok(Timestamp(t.unix_timestamp()))
        } else {
            Ok(Timestamp(i64::deserialize(d)?))
        }
    }
}

/// Labels as a map: `{"role":"web"}` in JSON. Postcard encodes a map
/// exactly as it encodes a sequence of pairs (a length, then key and value
/// of each), so the wire bytes are those of `Vec<(String, String)>`.
pub mod labels {
    use serde::de::{MapAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(labels: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(labels.iter().map(|(k, v)| (k, v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Vec<(String, String)>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of label names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // The hint comes from the peer: bound what it may reserve.
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(pair) = map.next_entry()? {
                    out.push(pair);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Pairs)
    }
}

/// First message of a connection, from the connecting side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub versions: VersionRange,
    /// Software name and version, for the controller's records and errors.
    pub software: String,
}

/// The controller's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Accepted { version: u16, controller: String },
    Refused { reason: String },
}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "unknown {} {s:?}; expected one of: {}",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

named_enum!(
    /// Key algorithm of a certificate or CA.
    KeyType {
        EcdsaP256 = "ecdsa-p256",
        EcdsaP384 = "ecdsa-p384",
        Rsa2048 = "rsa-2048",
        Rsa3072 = "rsa-3072",
        Rsa4096 = "rsa-4096",
    }
);

named_enum!(
    /// Validation level purchased with an instance.
    ValidationType { Dv = "dv", Ov = "ov", Ev = "ev" }
);

named_enum!(
    /// Kind of CA behind an issuer.
    IssuerKind { Builtin = "builtin", Acme = "acme" }
);

named_enum!(
    InstanceState {
        Unused = "unused",
        Applying = "applying",
        Issued = "issued",
        Expired = "expired",
        Revoked = "revoked",
    }
);

named_enum!(
    ApplicationState {
        Pending = "pending",
        Validating = "validating",
        Issued = "issued",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

named_enum!(
    CertState {
        Active = "active",
        Superseded = "superseded",
        Revoked = "revoked",
        Expired = "expired",
    }
);

named_enum!(
    /// RFC 5280 revocation reasons an operator may give.
    RevocationReason {
        Unspecified = "unspecified",
        KeyCompromise = "keyCompromise",
        Superseded = "superseded",
        CessationOfOperation = "cessationOfOperation",
        AffiliationChanged = "affiliationChanged",
    }
);

impl RevocationReason {
    /// The CRLReason code of RFC 5280 §5.3.1.
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
        }
    }
}

impl ApplicationState {
    /// Whether the application still occupies its instance.
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            ApplicationState::Pending | ApplicationState::Validating
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerInfo {
    pub name: String,
    pub kind: IssuerKind,
    pub key: KeyType,
    pub created_at: Timestamp,
    /// Subject of the CA certificate that signs leaves.
    pub ca_subject: String,
    /// SHA-256 of the root certificate (hex); empty for ACME issuers.
    pub root_fingerprint: String,
    pub crl_url: String,
    /// ACME directory URL (ACME issuers).
    pub directory: Option<String>,
    /// ACME account URL (ACME issuers).
    pub account_url: Option<String>,
    /// Challenge used when `cert apply` names none (ACME issuers).
    pub default_challenge: Option<String>,
}

/// What was purchased: the limits every application on the instance obeys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub issuer: String,
    pub validation: ValidationType,
    pub max_domains: u32,
    pub wildcard: bool,
    pub validity_days: u32,
    pub key: KeyType,
    /// Renew this long before expiry (default 30 days, at most a third of
    /// the lifetime).
    pub renew_before_days: Option<u32>,
    /// Issuers a renewal falls back to, in order, when the primary
    /// (`issuer`) keeps refusing or rate-limits.
    pub fallback_issuers: Vec<String>,
    /// How long applications to an issuer may fail before the renewal
    /// switches to the next one (default one hour).
    pub fallback_after_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub spec: InstanceSpec,
    pub state: InstanceState,
    pub created_at: Timestamp,
    /// The newest application made on this instance.
    pub application: Option<String>,
    /// The certificate issued on this instance.
    pub certificate: Option<String>,
    /// Which issuer the renewals of this instance's lineage apply to, when
    /// the lineage has ever failed over (absent: the primary, as always).
    pub issuing: Option<IssuingStatus>,
}

/// The issuer a lineage currently renews from, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuingStatus {
    /// The lineage (its first certificate's id).
    pub lineage: String,
    /// The issuer renewals apply to now.
    pub active_issuer: String,
    /// When `active_issuer` became the one renewals apply to.
    pub active_since: Timestamp,
    /// When the lineage left its primary issuer; absent while on the primary.
    pub fallback_since: Option<Timestamp>,
    /// When applications to `active_issuer` started failing; absent when
    /// its last application succeeded.
    pub failing_since: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationInfo {
    pub id: String,
    pub instance: String,
    pub domains: Vec<String>,
    pub state: ApplicationState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub certificate: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    pub id: String,
    pub instance: String,
    pub issuer: String,
    pub domains: Vec<String>,
    /// Serial number, upper-case hex.
    pub serial: String,
    /// SHA-256 of the leaf certificate's DER (lower-case hex).
    pub fingerprint: String,
    pub key: KeyType,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub state: CertState,
    /// The certificate this one renews (its lineage predecessor).
    pub renews: Option<String>,
    pub revoked_at: Option<Timestamp>,
    pub revocation_reason: Option<RevocationReason>,
    pub leaf_pem: String,
    pub chain_pem: String,
    /// Present for certificates still in service.
    pub renewal: Option<RenewalInfo>,
}

/// A certificate with its private key, for download or installation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertBundle {
    pub id: String,
    /// The leaf certificate.
    pub leaf_pem: String,
    /// Intermediates, leaf-side first, without the root.
    pub chain_pem: String,
    /// The root that anchors the chain.
    pub root_pem: String,
    /// PKCS#8 PEM private key.
    pub key: Secret,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crl {
    pub issuer: String,
    pub der: Vec<u8>,
}

named_enum!(
    /// Where a deployment stands on its agent. `missing`: the agent was
    /// told it holds a certificate it does not hold; the controller sends
    /// the bundle with the next fetch.
    DeploymentStatus {
        Pending = "pending",
        Installed = "installed",
        RolledBack = "rolled_back",
        Failed = "failed",
        Missing = "missing",
    }
);

/// A join token as printed for the operator, with the pin the enrolling
/// agent must check the controller's identity CA against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// `cfjt1.<id>.<secret>`; shown once, only a hash is stored.
    pub token: Secret,
    pub id: String,
    /// `sha256:<hex>` of the identity CA's public key.
    pub ca_pin: String,
    #[serde(with = "labels")]
    pub labels: Vec<(String, String)>,
    pub uses: u32,
    pub expires_at: Timestamp,
}

/// An admin credential as `admin list` shows it (never its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCredentialInfo {
    /// The operator, as the audit log names them (`admin:<name>`).
    pub name: String,
    /// Certificate serial (upper-case hex).
    pub serial: String,
    pub created_at: Timestamp,
    pub not_after: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A freshly issued admin credential: its certificate and the identity CA
/// (the CLI adds the private key it kept and writes the credential file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminIssued {
    pub credential: AdminCredentialInfo,
    pub cert_pem: String,
    pub ca_pem: String,
}

/// A target an agent declares in its own configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub name: String,
    pub kind: String,
    /// Names the target serves; a deployed certificate must cover them.
    pub domains: Vec<String>,
    /// Whether the target has a webroot for ACME HTTP-01 challenges.
    pub webroot: bool,
}

/// RFC 2136 dynamic-update settings for DNS-01.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsUpdateSpec {
    pub server: String,
    pub zone: String,
    pub tsig_name: String,
    pub tsig_algorithm: String,
    pub tsig_secret: Secret,
}

/// What the controller asks a connected agent to do, on a bidirectional
/// stream the controller opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentCommand {
    /// Publish an HTTP-01 key authorization under the webroot of every
    /// target that serves `domain`.
    PublishChallenge {
        domain: String,
        token: String,
        key_authorization: Secret,
    },
    /// Remove what `PublishChallenge` wrote.
    RemoveChallenge { domain: String, token: String },
    /// Scan for certificates in use now and send an inventory report.
    Discover,
}

/// The agent's answer to an [`AgentCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCommandReply {
    /// Files written or removed.
    pub files: u32,
    pub error: Option<String>,
}

/// What an agent tells the controller when it connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    pub hostname: String,
    pub version: String,
    pub labels: Vec<(String, String)>,
    pub targets: Vec<TargetInfo>,
    /// The agent's clock, for skew detection.
    pub now: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub id: String,
    pub name: String,
    #[serde(with = "labels")]
    pub labels: Vec<(String, String)>,
    pub targets: Vec<TargetInfo>,
    pub version: Option<String>,
    pub enrolled_at: Timestamp,
    pub last_seen: Option<Timestamp>,
    pub connected: bool,
    pub identity_expires: Option<Timestamp>,
    /// Agent clock minus controller clock at the agent's last connect.
    pub clock_skew_secs: Option<i64>,
}

/// One certificate an agent should have installed on one of its targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredInstall {
    pub deployment: String,
    pub target: String,
    pub certificate: String,
    pub fingerprint: String,
    pub not_after: Timestamp,
    /// The certificate and its key; left out when the controller already
    /// holds the deployment as installed, so keys are released only when an
    /// install is due.
    pub bundle: Option<CertBundle>,
}

/// How an install went, reported by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallReport {
    pub deployment: String,
    pub certificate: String,
    pub status: DeploymentStatus,
    /// Fingerprint of the leaf the server was seen serving, when verified.
    pub served_fingerprint: Option<String>,
    /// Error and captured command output, size-capped by the agent.
    pub error: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentInfo {
    pub id: String,
    pub agent: String,
    pub agent_name: String,
    pub target: String,
    pub lineage: String,
    pub desired: String,
    pub installed: Option<String>,
    pub status: DeploymentStatus,
    pub last_error: Option<String>,
    pub served_fingerprint: Option<String>,
    pub updated_at: Timestamp,
}

/// Sent by the controller on a unidirectional stream of its own: the
/// agent's desired state changed (or it was removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Poke {
    DesiredStateChanged,
}

/// Renewal state of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalInfo {
    pub due_at: Timestamp,
    /// Why renewal cannot proceed (for example no instance left in the pool).
    pub blocked: Option<String>,
    pub last_error: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: Option<Timestamp>,
}

/// How a rollout proceeds, as the operator gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrategySpec {
    pub canary: u32,
    /// `N` targets or `P%` of all targets per wave after the canary.
    pub wave: String,
    pub pause_secs: u64,
    pub max_failures: u32,
    pub offline_deadline_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutTargetInfo {
    pub agent: String,
    pub agent_name: String,
    pub target: String,
    pub wave: u32,
    /// `waiting`, `in_progress`, `installed`, `failed` or `skipped`.
    pub state: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutInfo {
    pub id: String,
    /// `deploy`, `renewal` or `rollback`.
    pub kind: String,
    pub lineage: String,
    pub certificate: String,
    pub previous: Option<String>,
    /// `running`, `paused`, `halted`, `completed` or `aborted`.
    pub state: String,
    pub reason: Option<String>,
    pub strategy: StrategySpec,
    pub current_wave: i64,
    pub waves: u32,
    pub targets: Vec<RolloutTargetInfo>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// `certfleet status`: the fleet on one screen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub agents: AgentCounts,
    pub certificates: CertCounts,
    pub expiring: ExpiringCounts,
    pub renewals: RenewalCounts,
    pub rollouts: RolloutCounts,
    /// Deployments at risk of serving an expired certificate.
    pub at_risk: AtRiskStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCounts {
    pub online: u32,
    pub offline: u32,
    pub clock_skewed: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertCounts {
    pub active: u32,
    pub superseded: u32,
    pub revoked: u32,
    pub expired: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiringCounts {
    pub within_30d: u32,
    pub within_7d: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalCounts {
    pub blocked: u32,
    pub failing: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutCounts {
    pub running: u32,
    pub paused: u32,
    pub halted: u32,
}

/// One certificate an agent found in use on its host (discovery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEntry {
    /// File the certificate was read from.
    pub path: String,
    /// What pointed at it: `nginx`, `apache`, `haproxy` or `path` (a
    /// `discovery.paths` glob of the agent's config).
    pub source: String,
    /// Which site serves it: nginx `server_name`s, Apache `ServerName` /
    /// `ServerAlias`, HAProxy frontend; `None` for `path` entries.
    pub site: Option<String>,
    /// The agent's own target whose `fullchain` or `cert` is this path.
    pub target: Option<String>,
    pub subject: String,
    /// Subject alternative names (DNS names and IP addresses).
    pub sans: Vec<String>,
    pub issuer: String,
    /// Serial number, upper-case hex.
    pub serial: String,
    pub not_before: Option<Timestamp>,
    pub not_after: Option<Timestamp>,
    /// SHA-256 of the leaf's DER (lower-case hex).
    pub fingerprint: Option<String>,
    /// Why the file could not be read or parsed; the other fields are
    /// empty then.
    pub error: Option<String>,
}

/// An agent's whole discovery snapshot; replaces the previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReport {
    pub scanned_at: Timestamp,
    pub entries: Vec<InventoryEntry>,
    /// Problems not tied to one certificate: a server command that failed,
    /// a pattern that matched more files than the cap.
    pub problems: Vec<String>,
}

impl InventoryReport {
    /// Most entries one report may carry; the agent stops scanning there.
    pub const MAX_ENTRIES: usize = 2000;
    /// Most problems one report may carry.
    pub const MAX_PROBLEMS: usize = 100;
    /// Longest text field (path, subject, error …) in bytes.
    pub const MAX_FIELD: usize = 4096;
    /// Most names listed per certificate.
    pub const MAX_SANS: usize = 200;

    /// Whether the report stays within the limits above.
    pub fn check(&self) -> Result<(), String> {
        if self.entries.len() > Self::MAX_ENTRIES {
            return Err(format!(
                "inventory report has {} entries; at most {} are accepted",
                self.entries.len(),
                Self::MAX_ENTRIES
            ));
        }
        if self.problems.len() > Self::MAX_PROBLEMS {
            return Err(format!(
                "inventory report has {} problems; at most {} are accepted",
                self.problems.len(),
                Self::MAX_PROBLEMS
            ));
        }
        let long = |s: &str| s.len() > Self::MAX_FIELD;
        for e in &self.entries {
            let texts = [
                Some(&e.path),
                Some(&e.source),
                e.site.as_ref(),
                e.target.as_ref(),
                Some(&e.subject),
                Some(&e.issuer),
                Some(&e.serial),
                e.fingerprint.as_ref(),
                e.error.as_ref(),
            ];
            if texts.into_iter().flatten().any(|t| long(t))
                || e.sans.len() > Self::MAX_SANS
                || e.sans.iter().any(|t| long(t))
            {
                return Err(format!(
                    "inventory entry for {:?} exceeds the field limits",
                    e.path.chars().take(200).collect::<String>()
                ));
            }
        }
        if self.problems.iter().any(|p| long(p)) {
            return Err("an inventory problem text exceeds the field limit".into());
        }
        Ok(())
    }
}

/// A discovered certificate as the controller lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryItem {
    pub agent: String,
    pub agent_name: String,
    pub scanned_at: Timestamp,
    pub entry: InventoryEntry,
    /// The certfleet certificate with this fingerprint, when certfleet
    /// issued it.
    pub managed: Option<String>,
}

/// `certfleet inventory list`: the certificates and each agent's problems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryList {
    pub items: Vec<InventoryItem>,
    /// `(agent name, problem)` from the latest scans.
    pub problems: Vec<(String, String)>,
}

/// What `certfleet inventory adopt` started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptionInfo {
    pub agent: String,
    pub agent_name: String,
    pub target: String,
    pub path: String,
    /// Fingerprint of the discovered certificate being replaced.
    pub fingerprint: String,
    pub domains: Vec<String>,
    pub instance: String,
    pub application: ApplicationInfo,
}

/// A request on an admin connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    IssuerAdd {
        name: String,
        kind: IssuerKind,
        key: KeyType,
    },
    IssuerList,
    InstanceCreate(InstanceSpec),
    InstanceList,
    InstanceShow {
        id: String,
    },
    CertApply {
        instance: String,
        domains: Vec<String>,
    },
    ApplicationShow {
        id: String,
    },
    CertList {
        expiring_within_secs: Option<i64>,
    },
    CertShow {
        id: String,
    },
    CertDownload {
        id: String,
    },
    CertRevoke {
        id: String,
        reason: RevocationReason,
    },
    CaCrl {
        issuer: Option<String>,
    },
    AuditList {
        limit: u32,
    },
    // Enrollment: the only request accepted without a client certificate.
    Enroll {
        token: Secret,
        /// PEM certificate signing request for the agent's own key.
        csr_pem: String,
        hostname: String,
    },
    // Agent requests (agent identity).
    AgentHello(AgentHello),
    DesiredState,
    Report(InstallReport),
    RenewIdentity {
        csr_pem: String,
    },
    // Fleet administration (admin identity).
    TokenCreate {
        labels: Vec<(String, String)>,
        ttl_secs: u64,
        uses: u32,
    },
    AgentList,
    AgentShow {
        id: String,
    },
    AgentRemove {
        id: String,
    },
    Deploy {
        certificate: String,
        selector: String,
        target: String,
    },
    DeploymentList {
        certificate: Option<String>,
        agent: Option<String>,
    },
    // Renewal and rollouts.
    CertRenew {
        id: String,
    },
    CertRevokeForced {
        id: String,
        reason: RevocationReason,
    },
    DeployRollout {
        certificate: String,
        selector: String,
        target: String,
        strategy: StrategySpec,
    },
    RolloutList,
    RolloutShow {
        id: String,
    },
    RolloutPause {
        id: String,
    },
    RolloutResume {
        id: String,
    },
    RolloutAbort {
        id: String,
    },
    RolloutRollback {
        id: String,
        strategy: StrategySpec,
    },
    Status,
    // ACME.
    IssuerAddAcme {
        name: String,
        directory: String,
        contact: Vec<String>,
        eab_kid: Option<String>,
        eab_hmac_key: Option<Secret>,
        ca_bundle_pem: Option<String>,
        default_challenge: String,
        dns: Option<DnsUpdateSpec>,
    },
    IssuerShow {
        name: String,
    },
    CertApplyChallenge {
        instance: String,
        domains: Vec<String>,
        challenge: Option<String>,
    },
    // Discovery (agent identity): the whole snapshot, replacing the last.
    InventoryReport(InventoryReport),
    // Inventory (admin identity).
    InventoryList {
        expiring_within_secs: Option<i64>,
        agent: Option<String>,
    },
    InventoryAdopt {
        agent: String,
        /// A discovered path or a fingerprint.
        certificate: String,
        issuer: String,
        validity_days: Option<u32>,
        key: KeyType,
    },
    /// Ask a connected agent to scan now.
    InventoryScan {
        agent: String,
    },
    /// The root and chain of an issuer (the only one when `issuer` is not
    /// given). Releases no key.
    CaRoot {
        issuer: Option<String>,
    },
    /// Plan a request through the code that would carry it out, and change
    /// nothing (`--dry-run`): answered with `Plan`.
    DryRun(Planned),
    /// One page of a list (see [`crate::list`]).
    List {
        query: crate::list::ListQuery,
        page: crate::list::PageRequest,
    },
    /// A new admin credential for operator `name`, for the public key in
    /// `csr_pem` (the private key never leaves the CLI). Refused while
    /// `name` holds a valid credential.
    AdminCreate {
        name: String,
        csr_pem: String,
    },
    /// Every admin credential, revoked and expired ones included.
    AdminList,
    /// A new credential for the operator of the credential in use (which
    /// stays valid until it expires or is revoked).
    AdminRenew {
        csr_pem: String,
    },
    /// Revoke every valid credential of operator `name`; without `force`,
    /// refused when no valid admin credential would be left.
    AdminRevoke {
        name: String,
        force: bool,
    },
    /// A single-use join token bound to agent `agent` (id or unique name):
    /// enrolling with it gives that agent a new identity and revokes the
    /// old one, keeping its id, labels and deployments. Answered with
    /// `Response::Token`.
    TokenCreateReenroll {
        agent: String,
        ttl_secs: u64,
    },
}

/// Broad class of a failed request, so clients can choose exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    NotFound,
    InvalidArgument,
    Conflict,
    PermissionDenied,
    Unavailable,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Issuer(IssuerInfo),
    Issuers(Vec<IssuerInfo>),
    Instance(InstanceInfo),
    Instances(Vec<InstanceInfo>),
    Application(ApplicationInfo),
    Certificate(CertInfo),
    Certificates(Vec<CertInfo>),
    Bundle(CertBundle),
    Crl(Crl),
    Audit(Vec<AuditEntry>),
    Error(RpcError),
    Enrolled {
        agent: String,
        cert_pem: String,
        ca_pem: String,
    },
    Ack,
    Desired(Vec<DesiredInstall>),
    Identity {
        cert_pem: String,
    },
    Token(JoinToken),
    Agent(AgentInfo),
    Agents(Vec<AgentInfo>),
    Deployments(Vec<DeploymentInfo>),
    Rollout(RolloutInfo),
    Rollouts(Vec<RolloutInfo>),
    Status(FleetStatus),
    Inventory(InventoryList),
    Adoption(AdoptionInfo),
    CaRoot(CaRoot),
    Plan(Plan),
    Page(ListPage),
    /// A credential just issued (`AdminCreate`, `AdminRenew`).
    AdminIssued(AdminIssued),
    /// Admin credentials (`AdminList`; `AdminRevoke`: those it revoked).
    AdminCredentials(Vec<AdminCredentialInfo>),
}

/// `certfleet ca root`: what anchors an issuer's certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRoot {
    pub issuer: String,
    pub kind: IssuerKind,
    /// The self-signed root; empty when certfleet does not hold it (ACME).
    pub root_pem: String,
    /// The intermediates that sign leaves, leaf-side first, without the
    /// root: the issuing CA of a built-in issuer, or the chain the ACME CA
    /// sent with its newest certificate.
    pub chain_pem: String,
    /// What is missing and where to get it, when something is.
    pub note: Option<String>,
}

/// The requests `--dry-run` plans. A closed set rather than a boxed
/// `Request`, so a peer cannot nest dry runs to exhaust the decoder's stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Planned {
    Deploy {
        certificate: String,
        selector: String,
        target: String,
        strategy: StrategySpec,
    },
    CertRenew {
        id: String,
    },
    CertRevoke {
        id: String,
        reason: RevocationReason,
        force: bool,
    },
    InventoryAdopt {
        agent: String,
        certificate: String,
        issuer: String,
        validity_days: Option<u32>,
        key: KeyType,
    },
}

/// What a planned request would answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanOutcome {
    Rollout(RolloutInfo),
    /// A renewal: the application it would start, and the deployments its
    /// certificate would be rolled out to once issued.
    Renewal {
        application: ApplicationInfo,
        rollout_to: Vec<DeploymentInfo>,
    },
    Certificate(CertInfo),
    Adoption(AdoptionInfo),
}

/// What a request would do, computed by the code that would do it and then
/// rolled back (`--dry-run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The action as the audit log names it: `deploy`, `cert.renew`,
    /// `cert.revoke`, `inventory.adopt`.
    pub action: String,
    /// What it acts on (a certificate id, an agent).
    pub target: String,
    /// Why it would be refused; `None` when it would go ahead.
    pub refused: Option<RpcError>,
    /// What it would answer: the rollout with its targets and waves, the
    /// renewal's application, the revoked certificate, the adoption. Ids
    /// in it were never stored.
    pub outcome: Option<PlanOutcome>,
}

// Pages of a list (what a client asks is in `crate::list`).

/// A certificate as listed: [`CertInfo`] without its PEMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSummary {
    pub id: String,
    pub instance: String,
    pub issuer: String,
    pub domains: Vec<String>,
    pub serial: String,
    pub fingerprint: String,
    pub key: KeyType,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub state: CertState,
    pub renews: Option<String>,
    pub revoked_at: Option<Timestamp>,
    pub revocation_reason: Option<RevocationReason>,
    pub renewal: Option<RenewalInfo>,
}

/// A rollout as listed: [`RolloutInfo`] with counts
/// instead of one entry per target (a fleet-wide rollout has thousands).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub id: String,
    pub kind: String,
    pub lineage: String,
    pub certificate: String,
    pub previous: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    pub strategy: StrategySpec,
    pub current_wave: i64,
    pub waves: u32,
    /// Targets in the rollout.
    pub targets: u32,
    /// Targets that have installed the certificate.
    pub installed: u32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The rows of one page; the variant matches the [`ListQuery`](crate::list::ListQuery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageRows {
    Certificates(Vec<CertSummary>),
    Agents(Vec<AgentInfo>),
    Deployments(Vec<DeploymentInfo>),
    Audit(Vec<AuditEntry>),
    Instances(Vec<InstanceInfo>),
    Issuers(Vec<IssuerInfo>),
    Rollouts(Vec<RolloutSummary>),
    Inventory(Vec<InventoryItem>),
    /// `(agent name, problem)`.
    InventoryProblems(Vec<(String, String)>),
    AtRiskCertificates(Vec<AtRiskCertificate>),
    AtRiskDeployments(Vec<AtRiskItem>),
}

impl PageRows {
    pub fn len(&self) -> usize {
        match self {
            PageRows::Certificates(r) => r.len(),
            PageRows::Agents(r) => r.len(),
            PageRows::Deployments(r) => r.len(),
            PageRows::Audit(r) => r.len(),
            PageRows::Instances(r) => r.len(),
            PageRows::Issuers(r) => r.len(),
            PageRows::Rollouts(r) => r.len(),
            PageRows::Inventory(r) => r.len(),
            PageRows::InventoryProblems(r) => r.len(),
            PageRows::AtRiskCertificates(r) => r.len(),
            PageRows::AtRiskDeployments(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One page of a list answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPage {
    pub rows: PageRows,
    /// Pass back for the next page; `None` when this page is the last.
    pub continue_token: Option<String>,
}

// At-risk items (`certfleet status`, `cert list --at-risk`,
// `deployment list --at-risk`).

named_enum!(
    /// Why a deployment is at risk of serving an expired certificate:
    /// `renewal_failing` (the renewal of the served certificate keeps
    /// failing), `rollout_failed` (the install of the newer certificate
    /// failed on this target), `rollout_halted` (its rollout halted or was
    /// aborted before reaching this target), `agent_offline` (the agent has
    /// been offline longer than its deadline), `no_instance` (no instance
    /// is left to renew with), `half_window_left` (less than half of the
    /// renewal window is left, whatever the cause), `fallback_issuer` (the
    /// lineage renews from a fallback issuer because its primary keeps
    /// failing; raised at the switch, cleared when the primary is back).
    /// New reasons are appended at the end; clients match with a catch-all
    /// arm.
    #[non_exhaustive]
    AtRiskReason {
        RenewalFailing = "renewal_failing",
        RolloutFailed = "rollout_failed",
        RolloutHalted = "rollout_halted",
        AgentOffline = "agent_offline",
        NoInstance = "no_instance",
        HalfWindowLeft = "half_window_left",
        FallbackIssuer = "fallback_issuer",
    }
);

/// A deployment whose served certificate nears expiry with no newer one
/// installed because something failed (or with less than half of its
/// renewal window left).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtRiskItem {
    pub deployment: String,
    pub agent: String,
    pub agent_name: String,
    pub target: String,
    /// The certificate the target serves.
    pub certificate: String,
    pub domains: Vec<String>,
    pub not_after: Timestamp,
    pub reason: AtRiskReason,
    /// The error or cause behind `reason`, in words.
    pub reason_text: String,
    /// When the condition began (not when it was noticed).
    pub since: Timestamp,
}

/// A certificate served by at least one at-risk deployment: the earliest
/// of its items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtRiskCertificate {
    pub id: String,
    pub domains: Vec<String>,
    pub issuer: String,
    pub state: CertState,
    pub not_after: Timestamp,
    pub reason: AtRiskReason,
    pub reason_text: String,
    pub since: Timestamp,
    /// How many deployments serving it are at risk.
    pub deployments: u32,
}

/// The at-risk part of [`FleetStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtRiskStatus {
    /// Every deployment at risk.
    pub total: u32,
    /// The first of them, soonest expiry first (at most
    /// [`STATUS_AT_RISK_ITEMS`]).
    pub items: Vec<AtRiskItem>,
    /// The controller's time when the status was taken, for "expires in".
    pub now: Timestamp,
}

/// Most at-risk items `status` carries; `cert list --at-risk` and
/// `deployment list --at-risk` have them all.
pub const STATUS_AT_RISK_ITEMS: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, encode, DEFAULT_MAX_FRAME};

    fn round_trip<T>(msg: &T)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let bytes = encode(msg, DEFAULT_MAX_FRAME).unwrap();
        let back: T = decode(&bytes, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(&back, msg);
    }

    fn spec() -> InstanceSpec {
        InstanceSpec {
            issuer: "builtin".into(),
            validation: ValidationType::Dv,
            max_domains: 3,
            wildcard: true,
            validity_days: 90,
            key: KeyType::EcdsaP384,
            renew_before_days: Some(10),
            fallback_issuers: vec!["backup".into()],
            fallback_after_secs: Some(3600),
        }
    }

    fn cert() -> CertInfo {
        CertInfo {
            id: "cert-1".into(),
            instance: "inst-1".into(),
            issuer: "builtin".into(),
            domains: vec!["a.example".into(), "127.0.0.1".into()],
            serial: "0A".into(),
            fingerprint: "ab".repeat(32),
            key: KeyType::Rsa2048,
            not_before: Timestamp(1_700_000_000),
            not_after: Timestamp(1_800_000_000),
            state: CertState::Revoked,
            renews: Some("cert-0".into()),
            revoked_at: Some(Timestamp(1_750_000_000)),
            revocation_reason: Some(RevocationReason::KeyCompromise),
            leaf_pem: "leaf".into(),
            chain_pem: "chain".into(),
            renewal: Some(RenewalInfo {
                due_at: Timestamp(1_790_000_000),
                blocked: None,
                last_error: Some("CA down".into()),
                attempts: 2,
                next_attempt_at: Some(Timestamp(1_790_000_600)),
            }),
        }
    }

    fn agent_hello() -> AgentHello {
        AgentHello {
            hostname: "web-1".into(),
            version: "0.1.0".into(),
            labels: vec![("role".into(), "web".into())],
            targets: vec![TargetInfo {
                name: "nginx".into(),
                kind: "nginx".into(),
                domains: vec!["www.example.test".into()],
                webroot: true,
            }],
            now: Timestamp(100),
        }
    }

    fn agent_info() -> AgentInfo {
        AgentInfo {
            id: "agent-1".into(),
            name: "web-1".into(),
            labels: vec![("role".into(), "web".into())],
            targets: agent_hello().targets,
            version: Some("0.1.0".into()),
            enrolled_at: Timestamp(1),
            last_seen: None,
            connected: false,
            identity_expires: Some(Timestamp(2)),
            clock_skew_secs: Some(-3),
        }
    }

    fn strategy() -> StrategySpec {
        StrategySpec {
            canary: 1,
            wave: "25%".into(),
            pause_secs: 0,
            max_failures: 0,
            offline_deadline_secs: 600,
        }
    }

    fn rollout() -> RolloutInfo {
        RolloutInfo {
            id: "r".into(),
            kind: "renewal".into(),
            lineage: "c0".into(),
            certificate: "c1".into(),
            previous: Some("c0".into()),
            state: "halted".into(),
            reason: Some("budget".into()),
            strategy: strategy(),
            current_wave: 1,
            waves: 3,
            targets: vec![RolloutTargetInfo {
                agent: "a".into(),
                agent_name: "web-1".into(),
                target: "nginx".into(),
                wave: 0,
                state: "failed".into(),
                error: Some("nginx -t".into()),
            }],
            created_at: Timestamp(1),
            updated_at: Timestamp(2),
        }
    }

    fn inventory_report() -> InventoryReport {
        InventoryReport {
            scanned_at: Timestamp(7),
            entries: vec![
                InventoryEntry {
                    path: "/etc/nginx/tls/fullchain.pem".into(),
                    source: "nginx".into(),
                    site: Some("www.example.test".into()),
                    target: Some("nginx".into()),
                    subject: "CN=www.example.test".into(),
                    sans: vec!["www.example.test".into(), "192.0.2.1".into()],
                    issuer: "CN=Old CA".into(),
                    serial: "0A".into(),
                    not_before: Some(Timestamp(1)),
                    not_after: Some(Timestamp(2)),
                    fingerprint: Some("ab".repeat(32)),
                    error: None,
                },
                InventoryEntry {
                    path: "/etc/ssl/broken.pem".into(),
                    source: "path".into(),
                    site: None,
                    target: None,
                    subject: String::new(),
                    sans: vec![],
                    issuer: String::new(),
                    serial: String::new(),
                    not_before: None,
                    not_after: None,
                    fingerprint: None,
                    error: Some("no certificate in the file".into()),
                },
            ],
            problems: vec!["pattern /srv/*.pem matched more than 1000 files".into()],
        }
    }

    #[test]
    fn inventory_limits() {
        let mut r = inventory_report();
        assert!(r.check().is_ok());
        r.entries[0].sans = vec!["a".into(); InventoryReport::MAX_SANS + 1];
        assert!(r.check().is_err());
        let mut r = inventory_report();
        r.entries = vec![r.entries[1].clone(); InventoryReport::MAX_ENTRIES + 1];
        assert!(r.check().unwrap_err().contains("entries"));
        let mut r = inventory_report();
        r.entries[1].error = Some("x".repeat(InventoryReport::MAX_FIELD + 1));
        assert!(r.check().is_err());
    }

    /// One value of every message type; a new variant must be added here.
    fn all_requests() -> Vec<Request> {
        vec![
            Request::IssuerAdd {
                name: "ca".into(),
                kind: IssuerKind::Builtin,
                key: KeyType::EcdsaP256,
            },
            Request::IssuerList,
            Request::InstanceCreate(spec()),
            Request::InstanceList,
            Request::InstanceShow { id: "i".into() },
            Request::CertApply {
                instance: "i".into(),
                domains: vec!["x.example".into()],
            },
            Request::ApplicationShow { id: "a".into() },
            Request::CertList {
                expiring_within_secs: Some(86_400),
            },
            Request::CertShow { id: "c".into() },
            Request::CertDownload { id: "c".into() },
            Request::CertRevoke {
                id: "c".into(),
                reason: RevocationReason::CessationOfOperation,
            },
            Request::CaCrl { issuer: None },
            Request::AuditList { limit: 10 },
            Request::Enroll {
                token: Secret::new(b"cfjt1.a.b".to_vec()),
                csr_pem: "csr".into(),
                hostname: "web-1".into(),
            },
            Request::AgentHello(agent_hello()),
            Request::DesiredState,
            Request::Report(InstallReport {
                deployment: "d".into(),
                certificate: "c".into(),
                status: DeploymentStatus::RolledBack,
                served_fingerprint: None,
                error: Some("nginx -t failed".into()),
                duration_ms: 12,
            }),
            Request::RenewIdentity {
                csr_pem: "csr".into(),
            },
            Request::TokenCreate {
                labels: vec![("role".into(), "web".into())],
                ttl_secs: 3600,
                uses: 2,
            },
            Request::AgentList,
            Request::AgentShow { id: "a".into() },
            Request::AgentRemove { id: "a".into() },
            Request::Deploy {
                certificate: "c".into(),
                selector: "role=web".into(),
                target: "nginx".into(),
            },
            Request::DeploymentList {
                certificate: None,
                agent: Some("a".into()),
            },
            Request::CertRenew { id: "c".into() },
            Request::CertRevokeForced {
                id: "c".into(),
                reason: RevocationReason::Superseded,
            },
            Request::DeployRollout {
                certificate: "c".into(),
                selector: "role=web".into(),
                target: "nginx".into(),
                strategy: strategy(),
            },
            Request::RolloutList,
            Request::RolloutShow { id: "r".into() },
            Request::RolloutPause { id: "r".into() },
            Request::RolloutResume { id: "r".into() },
            Request::RolloutAbort { id: "r".into() },
            Request::RolloutRollback {
                id: "r".into(),
                strategy: strategy(),
            },
            Request::Status,
            Request::IssuerAddAcme {
                name: "le".into(),
                directory: "https://acme.test/dir".into(),
                contact: vec!["mailto:ops@example.com".into()],
                eab_kid: Some("kid".into()),
                eab_hmac_key: Some(Secret::new(b"k".to_vec())),
                ca_bundle_pem: None,
                default_challenge: "dns-01".into(),
                dns: Some(DnsUpdateSpec {
                    server: "127.0.0.1:53".into(),
                    zone: "example.com.".into(),
                    tsig_name: "k".into(),
                    tsig_algorithm: "hmac-sha256".into(),
                    tsig_secret: Secret::new(b"s".to_vec()),
                }),
            },
            Request::IssuerShow { name: "le".into() },
            Request::CertApplyChallenge {
                instance: "i".into(),
                domains: vec!["a.test".into()],
                challenge: Some("http-01".into()),
            },
            Request::InventoryReport(inventory_report()),
            Request::InventoryList {
                expiring_within_secs: Some(86_400),
                agent: Some("web-1".into()),
            },
            Request::InventoryAdopt {
                agent: "web-1".into(),
                certificate: "/etc/nginx/tls/fullchain.pem".into(),
                issuer: "ca1".into(),
                validity_days: None,
                key: KeyType::EcdsaP256,
            },
            Request::InventoryScan {
                agent: "web-1".into(),
            },
            Request::CaRoot {
                issuer: Some("ca".into()),
            },
            Request::DryRun(Planned::Deploy {
                certificate: "cert-1".into(),
                selector: "agent=web-1".into(),
                target: "nginx".into(),
                strategy: StrategySpec {
                    canary: 1,
                    wave: "25%".into(),
                    pause_secs: 0,
                    max_failures: 0,
                    offline_deadline_secs: 600,
                },
            }),
            Request::DryRun(Planned::CertRenew {
                id: "cert-1".into(),
            }),
            Request::DryRun(Planned::CertRevoke {
                id: "cert-1".into(),
                reason: RevocationReason::Superseded,
                force: true,
            }),
            Request::DryRun(Planned::InventoryAdopt {
                agent: "web-1".into(),
                certificate: "/etc/nginx/tls/fullchain.pem".into(),
                issuer: "ca".into(),
                validity_days: None,
                key: KeyType::EcdsaP256,
            }),
            Request::List {
                query: crate::list::ListQuery::Deployments {
                    certificate: Some("cert-1".into()),
                    agent: None,
                },
                page: crate::list::PageRequest {
                    limit: 500,
                    continue_token: Some("c1.00".into()),
                },
            },
            Request::List {
                query: crate::list::ListQuery::AtRiskCertificates,
                page: crate::list::PageRequest {
                    limit: 20,
                    continue_token: None,
                },
            },
            Request::List {
                query: crate::list::ListQuery::AtRiskDeployments,
                page: crate::list::PageRequest {
                    limit: 20,
                    continue_token: None,
                },
            },
            Request::AdminCreate {
                name: "alice".into(),
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            },
            Request::AdminList,
            Request::AdminRenew {
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            },
            Request::AdminRevoke {
                name: "alice".into(),
                force: true,
            },
            Request::TokenCreateReenroll {
                agent: "web-1".into(),
                ttl_secs: 3600,
            },
        ]
    }

    fn all_responses() -> Vec<Response> {
        let admin = AdminCredentialInfo {
            name: "alice".into(),
            serial: "4F00".into(),
            created_at: Timestamp(1),
            not_after: Timestamp(2),
            revoked_at: None,
        };
        let issuer = IssuerInfo {
            name: "ca".into(),
            kind: IssuerKind::Builtin,
            key: KeyType::EcdsaP256,
            created_at: Timestamp(1),
            ca_subject: "CN=x".into(),
            root_fingerprint: "00".into(),
            crl_url: "http://127.0.0.1/crl".into(),
            directory: Some("https://acme.test/dir".into()),
            account_url: Some("https://acme.test/acct/1".into()),
            default_challenge: Some("http-01".into()),
        };
        let instance = InstanceInfo {
            id: "i".into(),
            spec: spec(),
            state: InstanceState::Applying,
            created_at: Timestamp(2),
            application: Some("a".into()),
            certificate: None,
            issuing: Some(IssuingStatus {
                lineage: "cert-0".into(),
                active_issuer: "backup".into(),
                active_since: Timestamp(3),
                fallback_since: Some(Timestamp(3)),
                failing_since: None,
            }),
        };
        let app = ApplicationInfo {
            id: "a".into(),
            instance: "i".into(),
            domains: vec!["d".into()],
            state: ApplicationState::Failed,
            attempts: 2,
            last_error: Some("no".into()),
            certificate: None,
            created_at: Timestamp(3),
            updated_at: Timestamp(4),
        };
        vec![
            Response::Issuer(issuer.clone()),
            Response::Issuers(vec![issuer]),
            Response::Instance(instance.clone()),
            Response::Instances(vec![instance]),
            Response::Application(app.clone()),
            Response::Certificate(cert()),
            Response::Certificates(vec![cert(), cert()]),
            Response::Bundle(CertBundle {
                id: "c".into(),
                leaf_pem: "l".into(),
                chain_pem: "c".into(),
                root_pem: "r".into(),
                key: Secret::new(b"k".to_vec()),
            }),
            Response::Crl(Crl {
                issuer: "ca".into(),
                der: vec![1, 2, 3],
            }),
            Response::Audit(vec![AuditEntry {
                id: 1,
                at: Timestamp(5),
                actor: "admin".into(),
                action: "cert.revoke".into(),
                target: "c".into(),
                outcome: "ok".into(),
                detail: String::new(),
            }]),
            Response::Error(RpcError {
                kind: ErrorKind::Conflict,
                message: "busy".into(),
            }),
            Response::Enrolled {
                agent: "agent-1".into(),
                cert_pem: "c".into(),
                ca_pem: "ca".into(),
            },
            Response::Ack,
            Response::Desired(vec![DesiredInstall {
                deployment: "d".into(),
                target: "nginx".into(),
                certificate: "c".into(),
                fingerprint: "f".into(),
                not_after: Timestamp(3),
                bundle: Some(CertBundle {
                    id: "c".into(),
                    leaf_pem: "l".into(),
                    chain_pem: "c".into(),
                    root_pem: "r".into(),
                    key: Secret::new(b"k".to_vec()),
                }),
            }]),
            Response::Identity {
                cert_pem: "c".into(),
            },
            Response::Token(JoinToken {
                token: Secret::new(b"cfjt1.x.y".to_vec()),
                id: "x".into(),
                ca_pin: "sha256:00".into(),
                labels: vec![],
                uses: 1,
                expires_at: Timestamp(9),
            }),
            Response::Agent(agent_info()),
            Response::Agents(vec![agent_info()]),
            Response::Deployments(vec![DeploymentInfo {
                id: "d".into(),
                agent: "a".into(),
                agent_name: "web-1".into(),
                target: "nginx".into(),
                lineage: "c".into(),
                desired: "c".into(),
                installed: None,
                status: DeploymentStatus::Pending,
                last_error: None,
                served_fingerprint: None,
                updated_at: Timestamp(1),
            }]),
            Response::Rollout(rollout()),
            Response::Rollouts(vec![rollout()]),
            Response::Status(FleetStatus::default()),
            Response::Inventory(InventoryList {
                items: vec![InventoryItem {
                    agent: "agent-1".into(),
                    agent_name: "web-1".into(),
                    scanned_at: Timestamp(7),
                    entry: inventory_report().entries[0].clone(),
                    managed: Some("cert-1".into()),
                }],
                problems: vec![("web-1".into(), "nginx -T failed".into())],
            }),
            Response::Adoption(AdoptionInfo {
                agent: "agent-1".into(),
                agent_name: "web-1".into(),
                target: "nginx".into(),
                path: "/etc/nginx/tls/fullchain.pem".into(),
                fingerprint: "ab".repeat(32),
                domains: vec!["www.example.test".into()],
                instance: "inst-1".into(),
                application: app.clone(),
            }),
            Response::CaRoot(CaRoot {
                issuer: "ca".into(),
                kind: IssuerKind::Acme,
                root_pem: String::new(),
                chain_pem: "-----BEGIN CERTIFICATE-----".into(),
                note: Some("the CA publishes its root".into()),
            }),
            Response::Plan(Plan {
                action: "deploy".into(),
                target: "cert-1".into(),
                refused: None,
                outcome: Some(PlanOutcome::Rollout(rollout())),
            }),
            Response::Plan(Plan {
                action: "cert.renew".into(),
                target: "cert-1".into(),
                refused: None,
                outcome: Some(PlanOutcome::Renewal {
                    application: app,
                    rollout_to: vec![],
                }),
            }),
            Response::Plan(Plan {
                action: "cert.revoke".into(),
                target: "cert-1".into(),
                refused: Some(RpcError {
                    kind: ErrorKind::Conflict,
                    message: "in service".into(),
                }),
                outcome: None,
            }),
            Response::Page(ListPage {
                rows: PageRows::Audit(vec![AuditEntry {
                    id: 9,
                    at: Timestamp(9),
                    actor: "admin".into(),
                    action: "cert.revoke".into(),
                    target: "cert-1".into(),
                    outcome: "refused".into(),
                    detail: "still deployed".into(),
                }]),
                continue_token: None,
            }),
            Response::AdminIssued(AdminIssued {
                credential: admin.clone(),
                cert_pem: "cert".into(),
                ca_pem: "ca".into(),
            }),
            Response::AdminCredentials(vec![
                admin.clone(),
                AdminCredentialInfo {
                    revoked_at: Some(Timestamp(3)),
                    ..admin
                },
            ]),
            Response::Status(FleetStatus {
                at_risk: AtRiskStatus {
                    total: 3,
                    items: vec![at_risk_item()],
                    now: Timestamp(1_700_000_000),
                },
                ..FleetStatus::default()
            }),
            Response::Page(ListPage {
                rows: PageRows::AtRiskDeployments(vec![at_risk_item()]),
                continue_token: Some("c1.00".into()),
            }),
            Response::Page(ListPage {
                rows: PageRows::AtRiskCertificates(vec![AtRiskCertificate {
                    id: "cert-1".into(),
                    domains: vec!["a.example".into()],
                    issuer: "ca".into(),
                    state: CertState::Superseded,
                    not_after: Timestamp(1_800_000_000),
                    reason: AtRiskReason::HalfWindowLeft,
                    reason_text: "less than half".into(),
                    since: Timestamp(1_790_000_000),
                    deployments: 2,
                }]),
                continue_token: None,
            }),
        ]
    }

    fn at_risk_item() -> AtRiskItem {
        AtRiskItem {
            deployment: "dep-1".into(),
            agent: "agent-1".into(),
            agent_name: "web-1".into(),
            target: "nginx".into(),
            certificate: "cert-1".into(),
            domains: vec!["a.example".into()],
            not_after: Timestamp(1_800_000_000),
            reason: AtRiskReason::RolloutFailed,
            reason_text: "rolled_back: nginx -t failed".into(),
            since: Timestamp(1_790_000_000),
        }
    }

    #[test]
    fn at_risk_items_in_json_carry_reason_text_and_since() {
        let v = serde_json::to_value(at_risk_item()).unwrap();
        assert_eq!(v["reason"], "rollout_failed");
        assert_eq!(v["reason_text"], "rolled_back: nginx -t failed");
        assert_eq!(v["since"], "2026-09-21T14:13:20Z");
        for r in AtRiskReason::ALL {
            assert_eq!(r.as_str().parse::<AtRiskReason>(), Ok(*r));
        }
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(&Hello {
            versions: crate::PROTOCOL,
            software: "certfleet 0.1.0".into(),
        });
        round_trip(&HelloReply::Accepted {
            version: 0,
            controller: "x".into(),
        });
        round_trip(&HelloReply::Refused { reason: "r".into() });
        round_trip(&Poke::DesiredStateChanged);
        round_trip(&AgentCommand::PublishChallenge {
            domain: "a.test".into(),
            token: "tok".into(),
            key_authorization: Secret::new(b"tok.thumb".to_vec()),
        });
        round_trip(&AgentCommand::RemoveChallenge {
            domain: "a.test".into(),
            token: "tok".into(),
        });
        round_trip(&AgentCommand::Discover);
        round_trip(&AgentCommandReply {
            files: 1,
            error: None,
        });
        for r in all_requests() {
            round_trip(&r);
        }
        for r in all_responses() {
            round_trip(&r);
        }
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic pseudo-random garbage plus every prefix of real frames.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..512usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = decode::<Request>(&bytes, DEFAULT_MAX_FRAME);
            let _ = crate::frame::decode_body::<Response>(&bytes);
            let _ = crate::frame::decode_body::<Hello>(&bytes);
        }
        for r in all_responses() {
            let f = encode(&r, DEFAULT_MAX_FRAME).unwrap();
            for cut in 0..f.len() {
                assert!(decode::<Response>(&f[..cut], DEFAULT_MAX_FRAME).is_err());
            }
        }
    }

    #[test]
    fn huge_length_inside_body_does_not_allocate() {
        // A body claiming a vector of u32::MAX elements must fail cleanly.
        let body = [5u8, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(crate::frame::decode_body::<Request>(&body).is_err());
    }

    #[test]
    fn json_uses_names_and_rfc3339() {
        let json = serde_json::to_value(cert()).unwrap();
        assert_eq!(json["state"], "revoked");
        assert_eq!(json["key"], "rsa-2048");
        assert_eq!(json["revocation_reason"], "keyCompromise");
        assert_eq!(json["not_before"], "2023-11-14T22:13:20Z");
        let back: CertInfo = serde_json::from_value(json).unwrap();
        assert_eq!(back, cert());
    }

    #[test]
    fn labels_are_a_json_object_and_pairs_on_the_wire() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Map {
            #[serde(with = "labels")]
            labels: Vec<(String, String)>,
        }
        #[derive(Serialize)]
        struct Pairs {
            labels: Vec<(String, String)>,
        }
        let pairs = vec![
            ("role".to_string(), "web".to_string()),
            ("env".into(), "prod".into()),
        ];
        let map = Map {
            labels: pairs.clone(),
        };
        let json = serde_json::to_value(&map).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"labels": {"role": "web", "env": "prod"}})
        );
        // Same postcard bytes as the pair list the wire carried before.
        assert_eq!(
            postcard::to_stdvec(&map).unwrap(),
            postcard::to_stdvec(&Pairs { labels: pairs }).unwrap()
        );
        round_trip_map(&map);
    }

    fn round_trip_map<T>(msg: &T)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let back: T = postcard::from_bytes(&postcard::to_stdvec(msg).unwrap()).unwrap();
        assert_eq!(&back, msg);
    }

    #[test]
    fn names_parse_back() {
        for k in KeyType::ALL {
            assert_eq!(k.as_str().parse::<KeyType>().unwrap(), *k);
        }
        let err = "rsa-1024".parse::<KeyType>().unwrap_err();
        assert!(err.contains("ecdsa-p256"), "{err}");
    }
}
