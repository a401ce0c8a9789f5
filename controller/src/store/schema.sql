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

CREATE TABLE agents (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    labels      TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    last_seen   INTEGER,
    version     TEXT,
    targets     TEXT NOT NULL DEFAULT '[]',
    removed_at  INTEGER
, skew_secs INTEGER) STRICT;

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
, renews TEXT REFERENCES certificates(id), challenge TEXT, order_url TEXT, key_sealed BLOB, retry_at INTEGER, challenges_answered INTEGER NOT NULL DEFAULT 0, issuer TEXT REFERENCES issuers(name)) STRICT;

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

CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail  TEXT NOT NULL
) STRICT;

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
    created_at        INTEGER NOT NULL, lineage TEXT, renewal_error TEXT, renewal_attempts INTEGER NOT NULL DEFAULT 0, renewal_next_at INTEGER, renewal_blocked TEXT,
    UNIQUE (issuer, serial)
) STRICT;

CREATE TABLE credentials (
    serial     TEXT PRIMARY KEY,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'agent')),
    subject    TEXT NOT NULL,
    not_after  INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;

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

CREATE TABLE identity_ca (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem   TEXT NOT NULL,
    key_sealed BLOB NOT NULL,
    created_at INTEGER NOT NULL
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
, renew_before_secs INTEGER, fallback_issuers TEXT NOT NULL DEFAULT '[]', fallback_after_secs INTEGER) STRICT;

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

CREATE TABLE inventory_scans (
    agent       TEXT PRIMARY KEY REFERENCES agents(id),
    scanned_at  INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    problems    TEXT NOT NULL
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
, acme_directory TEXT, acme_account_sealed BLOB, acme_account_url TEXT, acme_ca_bundle TEXT, default_challenge TEXT, dns_update_sealed BLOB) STRICT;

CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    labels      TEXT NOT NULL,
    uses_left   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
, reenroll_agent TEXT) STRICT;

CREATE TABLE lineage_issuers (
    lineage       TEXT PRIMARY KEY,
    active_issuer TEXT NOT NULL REFERENCES issuers(name),
    active_since  INTEGER NOT NULL,
    fallback_since INTEGER,
    failing_since INTEGER,
    rate_limited  INTEGER NOT NULL DEFAULT 0,
    updated_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE lineage_strategies (
    lineage    TEXT PRIMARY KEY,
    strategy   TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;

CREATE TABLE rollout_targets (
    rollout  TEXT NOT NULL REFERENCES rollouts(id),
    agent    TEXT NOT NULL REFERENCES agents(id),
    target   TEXT NOT NULL,
    position INTEGER NOT NULL,
    wave     INTEGER NOT NULL,
    state    TEXT NOT NULL,
    error    TEXT,
    sent_at  INTEGER,
    done_at  INTEGER, failed_since INTEGER,
    PRIMARY KEY (rollout, agent, target)
) STRICT;

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
, retry_attempts INTEGER NOT NULL DEFAULT 0, retry_at INTEGER) STRICT;

CREATE UNIQUE INDEX applications_one_in_flight
    ON applications(instance) WHERE state IN ('pending', 'validating');

CREATE INDEX applications_renews ON applications(renews);

CREATE INDEX at_risk_certificate ON at_risk(not_after, certificate);

CREATE INDEX at_risk_not_after ON at_risk(not_after, deployment);

CREATE INDEX certificates_not_after ON certificates(not_after, id);

CREATE INDEX certificates_renews ON certificates(renews);

CREATE INDEX certificates_state_not_after ON certificates(state, not_after, id);

CREATE INDEX credentials_subject ON credentials(subject, role);

CREATE INDEX deployments_lineage ON deployments(lineage);

CREATE INDEX instances_unused ON instances(issuer, created_at) WHERE state = 'unused';

CREATE INDEX inventory_fingerprint ON inventory(fingerprint);

CREATE INDEX inventory_not_after ON inventory(not_after, agent, position);

CREATE INDEX lineage_issuers_fallback ON lineage_issuers(fallback_since)
    WHERE fallback_since IS NOT NULL;

CREATE INDEX rollouts_certificate ON rollouts(certificate, created_at);

CREATE INDEX rollouts_created ON rollouts(created_at, id);

CREATE UNIQUE INDEX rollouts_one_active_per_lineage
    ON rollouts(lineage) WHERE state IN ('running', 'paused');

CREATE INDEX rollouts_retry_at ON rollouts(retry_at) WHERE retry_at IS NOT NULL;

CREATE INDEX rollouts_state ON rollouts(state, created_at);
