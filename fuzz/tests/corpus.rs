//! The fuzz harnesses in the normal test suite: every committed corpus file
//! goes through every harness (no panic), the seeds reach the deep paths
//! they were made for, and the committed seeds are the generated ones.

use std::fs;
use std::path::PathBuf;

use certfleet_fuzz::{corpus_dir, pem, seeds, TARGETS};
use certfleet_protocol::limits::{self, Caller, EnrollRequest};

fn files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir().join(target);
    let mut out: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

#[test]
fn every_corpus_file_replays_through_every_harness() {
    let mut total = 0;
    for (target, _) in TARGETS {
        let inputs = files(target);
        assert!(!inputs.is_empty(), "corpus/{target} is empty");
        for path in inputs {
            let data = fs::read(&path).unwrap();
            for (name, harness) in TARGETS {
                let run = std::panic::catch_unwind(|| harness(&data));
                assert!(run.is_ok(), "{name} panicked on {}", path.display());
            }
            total += 1;
        }
    }
    assert!(total >= 100, "only {total} corpus files");
}

#[test]
fn seeds_are_committed() {
    let seeds = seeds::all();
    if std::env::var_os("CERTFLEET_BLESS").is_some() {
        // Other files (inputs a fuzzing run found, kept as regression
        // seeds) stay.
        for (target, _) in TARGETS {
            fs::create_dir_all(corpus_dir().join(target)).unwrap();
        }
        for s in &seeds {
            fs::write(corpus_dir().join(s.target).join(&s.name), &s.bytes).unwrap();
        }
    }
    for s in &seeds {
        let path = corpus_dir().join(s.target).join(&s.name);
        assert!(
            path.exists(),
            "{} is missing: regenerate the seeds with \
             CERTFLEET_BLESS=1 cargo nextest run -p certfleet-fuzz seeds_are_committed",
            path.display()
        );
    }
    let bytes: usize = seeds.iter().map(|s| s.bytes.len()).sum();
    assert!(
        bytes < 256 * 1024,
        "seed corpora of {bytes} bytes: keep them small"
    );
}

#[test]
fn request_seeds_decode_for_their_role() {
    let mut roles = [0usize; 3];
    for path in files("request") {
        let data = fs::read(&path).unwrap();
        let (pick, body) = data.split_first().unwrap();
        let (tag, _) = limits::peek_tag(body).unwrap().unwrap();
        let class = limits::classify(tag).unwrap();
        let caller = [Caller::Enrolling, Caller::Agent, Caller::Admin][usize::from(pick % 3)];
        assert_eq!(class.caller, caller, "{}", path.display());
        roles[usize::from(pick % 3)] += 1;
        if caller == Caller::Enrolling {
            EnrollRequest::decode(body).unwrap();
        } else {
            limits::decode_request(body, &class).unwrap();
        }
    }
    assert!(roles.iter().all(|n| *n > 0), "{roles:?}");
    assert!(roles.iter().sum::<usize>() > limits::request_variants().len());
}

#[test]
fn pem_seeds_pass_the_checks_of_both_sides() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    for path in files("csr") {
        let text = fs::read_to_string(&path).unwrap();
        rcgen::CertificateSigningRequestParams::from_pem(&text).unwrap();
        pem::csr(text.as_bytes());
    }
    let data = fs::read(corpus_dir().join("certificate/bundle")).unwrap();
    let parts: Vec<&[u8]> = data.split(|b| *b == pem::SEPARATOR).collect();
    assert_eq!(parts.len(), 4);
    let text = |i: usize| String::from_utf8(parts[i].to_vec()).unwrap();
    let bundle = certfleet_protocol::message::CertBundle {
        id: "seed".into(),
        leaf_pem: text(0),
        chain_pem: text(1),
        root_pem: text(2),
        key: certfleet_protocol::Secret::new(parts[3].to_vec()),
    };
    let agent = certfleet_agent::config::Config::parse(
        std::path::Path::new("/etc/certfleet/agent.toml"),
        &fs::read_to_string(corpus_dir().join("agent_config/agent-nginx.toml")).unwrap(),
    );
    assert!(agent.is_ok(), "{:?}", agent.err());
    let leaf = CertificateDer::from_pem_slice(bundle.leaf_pem.as_bytes()).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(bundle.chain_pem.as_bytes()).unwrap()];
    let root = CertificateDer::from_pem_slice(bundle.root_pem.as_bytes()).unwrap();
    let key = rcgen::KeyPair::from_pem(&text(3)).unwrap();
    let names = vec![certfleet_protocol::name::parse(pem::DOMAIN).unwrap()];
    let checked =
        certfleet_controller::check::check_issued(&leaf, &chain, &root, &key, &names, pem::NOW)
            .unwrap();
    assert_eq!(
        checked.fingerprint,
        certfleet_controller::check::fingerprint(&leaf)
    );
    let validated = certfleet_agent::install::validate(&bundle, &pem::target(), pem::NOW).unwrap();
    assert_eq!(validated.fingerprint, checked.fingerprint);
    // The same bundle through the whole harness (agent validate included).
    pem::certificate(&data);
}
