//! Numbered, append-only schema migrations.
//!
//! Migration N brings the schema from `user_version` N-1 to N. A released
//! migration is never edited: changes go in a new one appended at the end.
//! `tests::schema_matches_expected` applies them all to an empty database and
//! compares the result with `schema.sql`.

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;

CREATE TABLE identity_ca (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem   TEXT NOT NULL,
    key_sealed BLOB NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE credentials (
    serial     TEXT PRIMARY KEY,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'agent')),
    subject    TEXT NOT NULL,
    not_after  INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;

CREATE TABLE issuers (
    name          TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    key_type      TEXT NOT NULL,
    root_pem      TEXT NOT NULL,
    ca_pem        TEXT NOT NULL,
    ca_key_sealed BLOB NOT NULL,
    crl_number    INTEGER NOT NULL DEFAULT 0,
    crl_der       BLOB,
    crl_at        INTEGER,
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE instances (
    id            TEXT PRIMARY KEY,
    issuer        TEXT NOT NULL REFERENCES issuers(name),
    validation    TEXT NOT NULL,
    max_domains   INTEGER NOT NULL,
    wildcard      INTEGER NOT NULL,
    validity_days INTEGER NOT NULL,
    key_type      TEXT NOT NULL,
    state         TEXT NOT NULL,
    application   TEXT,
    certificate   TEXT,
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE applications (
    id          TEXT PRIMARY KEY,
    instance    TEXT NOT NULL REFERENCES instances(id),
    domains     TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    certificate TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX applications_one_in_flight
    ON applications(instance) WHERE state IN ('pending', 'validating');

CREATE TABLE certificates (
    id                TEXT PRIMARY KEY,
    instance          TEXT NOT NULL REFERENCES instances(id),
    issuer            TEXT NOT NULL REFERENCES issuers(name),
    application       TEXT NOT NULL REFERENCES applications(id),
    domains           TEXT NOT NULL,
    serial            TEXT NOT NULL,
    fingerprint       TEXT NOT NULL UNIQUE,
    key_type          TEXT NOT NULL,
    not_before        INTEGER NOT NULL,
    not_after         INTEGER NOT NULL,
    state             TEXT NOT NULL,
    renews            TEXT REFERENCES certificates(id),
    leaf_pem          TEXT NOT NULL,
    chain_pem         TEXT NOT NULL,
    key_sealed        BLOB NOT NULL,
    revoked_at        INTEGER,
    revocation_reason TEXT,
    created_at        INTEGER NOT NULL,
    UNIQUE (issuer, serial)
) STRICT;

CREATE INDEX certificates_not_after ON certificates(not_after);

CREATE TABLE agents (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    labels      TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    last_seen   INTEGER,
    version     TEXT,
    targets     TEXT NOT NULL DEFAULT '[]',
    removed_at  INTEGER
) STRICT;

CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    labels      TEXT NOT NULL,
    uses_left   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail  TEXT NOT NULL
) STRICT;
"#,
    // 2: deployments of certificate lineages onto agents' targets, and the
    // agent's reported clock skew.
    r#"
ALTER TABLE agents ADD COLUMN skew_secs INTEGER;

CREATE TABLE deployments (
    id                 TEXT PRIMARY KEY,
    agent              TEXT NOT NULL REFERENCES agents(id),
    target             TEXT NOT NULL,
    lineage            TEXT NOT NULL REFERENCES certificates(id),
    desired_cert       TEXT NOT NULL REFERENCES certificates(id),
    installed_cert     TEXT REFERENCES certificates(id),
    status             TEXT NOT NULL,
    last_error         TEXT,
    served_fingerprint TEXT,
    updated_at         INTEGER NOT NULL,
    UNIQUE (agent, target)
) STRICT;

CREATE INDEX deployments_lineage ON deployments(lineage);
"#,
    // 3: renewal bookkeeping and rollouts.
    r#"
ALTER TABLE certificates ADD COLUMN lineage TEXT;
ALTER TABLE certificates ADD COLUMN renewal_error TEXT;
ALTER TABLE certificates ADD COLUMN renewal_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE certificates ADD COLUMN renewal_next_at INTEGER;
ALTER TABLE certificates ADD COLUMN renewal_blocked TEXT;
ALTER TABLE instances ADD COLUMN renew_before_secs INTEGER;
ALTER TABLE applications ADD COLUMN renews TEXT REFERENCES certificates(id);

UPDATE certificates SET lineage = id WHERE lineage IS NULL;

CREATE TABLE rollouts (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    lineage         TEXT NOT NULL,
    certificate     TEXT NOT NULL REFERENCES certificates(id),
    previous        TEXT REFERENCES certificates(id),
    strategy        TEXT NOT NULL,
    state           TEXT NOT NULL,
    reason          TEXT,
    current_wave    INTEGER NOT NULL DEFAULT -1,
    wave_started_at INTEGER,
    wave_done_at    INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX rollouts_one_active_per_lineage
    ON rollouts(lineage) WHERE state IN ('running', 'paused');

CREATE TABLE rollout_targets (
    rollout  TEXT NOT NULL REFERENCES rollouts(id),
    agent    TEXT NOT NULL REFERENCES agents(id),
    target   TEXT NOT NULL,
    position INTEGER NOT NULL,
    wave     INTEGER NOT NULL,
    state    TEXT NOT NULL,
    error    TEXT,
    sent_at  INTEGER,
    done_at  INTEGER,
    PRIMARY KEY (rollout, agent, target)
) STRICT;
"#,
    // 4: ACME issuers and resumable orders.
    r#"
ALTER TABLE issuers ADD COLUMN acme_directory TEXT;
ALTER TABLE issuers ADD COLUMN acme_account_sealed BLOB;
ALTER TABLE issuers ADD COLUMN acme_account_url TEXT;
ALTER TABLE issuers ADD COLUMN acme_ca_bundle TEXT;
ALTER TABLE issuers ADD COLUMN default_challenge TEXT;
ALTER TABLE issuers ADD COLUMN dns_update_sealed BLOB;
ALTER TABLE applications ADD COLUMN challenge TEXT;
ALTER TABLE applications ADD COLUMN order_url TEXT;
ALTER TABLE applications ADD COLUMN key_sealed BLOB;
ALTER TABLE applications ADD COLUMN retry_at INTEGER;
"#,
    // 5: whether an ACME order's challenges were already submitted, so a
    // resumed order does not ask the CA to validate twice.
    r#"
ALTER TABLE applications ADD COLUMN challenges_answered INTEGER NOT NULL DEFAULT 0;
"#,
    // 6: certificates agents discovered in use (each agent's latest
    // snapshot), and adoptions of discovered certificates waiting for
    // their first issuance.
    r#"
CREATE TABLE inventory_scans (
    agent       TEXT PRIMARY KEY REFERENCES agents(id),
    scanned_at  INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    problems    TEXT NOT NULL
) STRICT;

CREATE TABLE inventory (
    agent       TEXT NOT NULL REFERENCES agents(id),
    position    INTEGER NOT NULL,
    path        TEXT NOT NULL,
    source      TEXT NOT NULL,
    site        TEXT,
    target      TEXT,
    subject     TEXT NOT NULL,
    sans        TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    serial      TEXT NOT NULL,
    not_before  INTEGER,
    not_after   INTEGER,
    fingerprint TEXT,
    error       TEXT,
    PRIMARY KEY (agent, position)
) STRICT;

CREATE INDEX inventory_not_after ON inventory(not_after);
CREATE INDEX inventory_fingerprint ON inventory(fingerprint);

CREATE TABLE adoptions (
    application TEXT PRIMARY KEY REFERENCES applications(id),
    agent       TEXT NOT NULL REFERENCES agents(id),
    target      TEXT NOT NULL,
    path        TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    actor       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    rollout     TEXT
) STRICT;
"#,
    // 7: indexes the renewal pass needs so that a wave of N due certificates
    // costs N index lookups, not N table scans: "is this certificate already
    // renewed" (certificates.renews), "is its renewal in flight"
    // (applications.renews), and "an unused instance of this spec".
    r#"
CREATE INDEX certificates_renews ON certificates(renews);
CREATE INDEX applications_renews ON applications(renews);
CREATE INDEX instances_unused ON instances(issuer, created_at) WHERE state = 'unused';
"#,
    // 8: an agent's credentials by subject. Every agent lookup (each
    // connection's authentication, each hello, each rollout pass) reads the
    // newest identity's expiry; without this index that was a scan of every
    // credential, making `agent list` and a fleet-wide deploy quadratic.
    r#"
CREATE INDEX credentials_subject ON credentials(subject, role);
"#,
    // 9: the list orders operators read in, each an index in that order so
    // a keyset page is a range scan, not a sort of the whole table:
    // certificates soonest expiry first (ties by id), discovered
    // certificates soonest expiry first (ties by agent and position), and
    // rollouts newest first. The single-column expiry indexes are prefixes
    // of the new ones, which serve their queries too.
    r#"
DROP INDEX certificates_not_after;
CREATE INDEX certificates_not_after ON certificates(not_after, id);
DROP INDEX inventory_not_after;
CREATE INDEX inventory_not_after ON inventory(not_after, agent, position);
CREATE INDEX rollouts_created ON rollouts(created_at, id);
"#,
    // 10: a re-enroll token is bound to the agent it brings back; NULL for
    // an ordinary join token, which enrolls a new agent.
    r#"
ALTER TABLE join_tokens ADD COLUMN reenroll_agent TEXT;
"#,
    // 11: self-healing renewals and strategy memory. A renewal rollout that
    // halted or finished with failed targets is retried on a persisted
    // schedule (`retry_at`, `retry_attempts`) so a restarted controller keeps
    // the back-off where it was; a lineage remembers the strategy of its last
    // deploy so its renewals roll out the way the operator asked.
    r#"
ALTER TABLE rollouts ADD COLUMN retry_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN retry_at INTEGER;
CREATE INDEX rollouts_retry_at ON rollouts(retry_at) WHERE retry_at IS NOT NULL;
CREATE TABLE lineage_strategies (
    lineage    TEXT PRIMARY KEY,
    strategy   TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
"#,
    // 12: fallback issuers. An instance names the issuers its renewals fall
    // back to (a JSON list, '[]' for none) and how long an issuer may fail
    // first; an application records the issuer it was sent to when that is
    // not its instance's (NULL: the instance's); a lineage that ever failed
    // over has a row saying which issuer it renews from and since when
    // (`fallback_since` NULL while that is the primary).
    r#"
ALTER TABLE instances ADD COLUMN fallback_issuers TEXT NOT NULL DEFAULT '[]';
ALTER TABLE instances ADD COLUMN fallback_after_secs INTEGER;
ALTER TABLE applications ADD COLUMN issuer TEXT REFERENCES issuers(name);
CREATE TABLE lineage_issuers (
    lineage       TEXT PRIMARY KEY,
    active_issuer TEXT NOT NULL REFERENCES issuers(name),
    active_since  INTEGER NOT NULL,
    fallback_since INTEGER,
    failing_since INTEGER,
    rate_limited  INTEGER NOT NULL DEFAULT 0,
    updated_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX lineage_issuers_fallback ON lineage_issuers(fallback_since)
    WHERE fallback_since IS NOT NULL;
"#,
    // 13: at-risk items, one per deployment at risk, with when the
    // condition began (`since`) so it is kept across passes and restarts.
    // No foreign key to deployments: removing an agent deletes its
    // deployments, and the next pass clears (and audits) their items.
    // A rollout target remembers when it first failed (`failed_since`,
    // kept across automatic retries, cleared once installed), and rollouts
    // are found by certificate, for the pass's per-target look-ups.
    r#"
CREATE TABLE at_risk (
    deployment  TEXT PRIMARY KEY,
    agent       TEXT NOT NULL,
    target      TEXT NOT NULL,
    certificate TEXT NOT NULL,
    not_after   INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    reason_text TEXT NOT NULL,
    since       INTEGER NOT NULL,
    raised_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX at_risk_not_after ON at_risk(not_after, deployment);
CREATE INDEX at_risk_certificate ON at_risk(not_after, certificate);
ALTER TABLE rollout_targets ADD COLUMN failed_since INTEGER;
CREATE INDEX rollouts_certificate ON rollouts(certificate, created_at);
"#,
    // 14: the passes that run every few seconds find what they look at
    // without reading every certificate and rollout ever made: certificates
    // by state and expiry (expiry marks the active ones past `not_after`,
    // renewal reads the heads near theirs), rollouts by state (the running
    // few).
    r#"
CREATE INDEX certificates_state_not_after ON certificates(state, not_after, id);
CREATE INDEX rollouts_state ON rollouts(state, created_at);
"#,
];
