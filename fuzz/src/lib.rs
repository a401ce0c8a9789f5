//! Fuzz harnesses for everything certfleet decodes from a peer or a file it
//! does not control: the frame decoder and every wire message (through the
//! role-checked, bounded decode the controller and the agent use), the agent
//! config parser, the nginx / Apache / HAProxy discovery parsers, and the
//! PEM/DER certificates, keys and CSRs that arrive over the network.
//!
//! Each harness takes arbitrary bytes, must never panic, and asserts a
//! property where one exists (decode → encode → decode gives the same
//! value; a refused message is an error of the right kind). The same
//! functions run under AFL (`src/main.rs`, feature `afl`, driven by
//! `scripts/fuzz.sh`) and under the normal test suite, which replays every
//! corpus file in `corpus/<target>/` through every harness.

pub mod pem;
pub mod seeds;
pub mod text;
pub mod wire;

/// A harness: arbitrary bytes in, a panic on a bug.
pub type Harness = fn(&[u8]);

/// Every fuzz target, by the name of its corpus directory and of its AFL
/// run.
pub const TARGETS: &[(&str, Harness)] = &[
    ("frame", wire::frame),
    ("request", wire::request),
    ("message", wire::message),
    ("structured", wire::structured),
    ("agent_config", text::agent_config),
    ("nginx", text::nginx),
    ("apache", text::apache),
    ("haproxy", text::haproxy),
    ("csr", pem::csr),
    ("certificate", pem::certificate),
];

/// The harness named `name`.
pub fn target(name: &str) -> Option<Harness> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, h)| *h)
}

/// The directory holding the committed seed corpora.
pub fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}
