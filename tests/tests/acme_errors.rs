//! ACME failures name their cause and the fix, against a real Pebble: an
//! untrusted TLS certificate (and `--ca-bundle`), a directory URL that
//! answers 404, a CA that refuses connections both at `issuer add` and
//! during an application, a CA whose address does not answer (timed out).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Result;
use certfleet_tests::acme::{free_udp_tcp_port, Pebble, PebbleOptions};
use certfleet_tests::{expect_cli_error, str_field, utf8, Controller};

/// Pebble's VA never runs in these tests (nothing is validated), so its DNS
/// server is any address.
fn pebble() -> Result<Pebble> {
    Pebble::start(PebbleOptions::new(SocketAddr::from(([127, 0, 0, 1], 9))))
}

fn issuer_add(
    ctl: &Controller,
    name: &str,
    directory: &str,
    ca_bundle: Option<&str>,
) -> Result<String> {
    let mut args = vec![
        "issuer",
        "add",
        name,
        "--kind",
        "acme",
        "--directory",
        directory,
    ];
    if let Some(bundle) = ca_bundle {
        args.extend_from_slice(&["--ca-bundle", bundle]);
    }
    let out = ctl.cli(&args)?;
    expect_cli_error(&out, &format!("issuer add {name} --directory {directory}"))
}

#[test]
fn untrusted_tls_certificate_names_the_ca_bundle_flag() -> Result<()> {
    let pebble = pebble()?;
    let ctl = Controller::start()?;
    // Pebble's TLS certificate comes from a CA the test made, which no
    // system trust store holds.
    let err = issuer_add(&ctl, "pebble", &pebble.directory_url(), None)?;
    assert!(err.contains("not trusted"), "{err}");
    assert!(err.contains("unknown issuer"), "{err}");
    assert!(err.contains("--ca-bundle"), "{err}");
    assert!(err.contains(&pebble.directory_url()), "{err}");
    assert!(err.contains("\"pebble\""), "names the issuer: {err}");
    assert!(!err.contains("client error (Connect)"), "{err}");
    Ok(())
}

#[test]
fn directory_url_answering_404_says_so() -> Result<()> {
    let pebble = pebble()?;
    let ctl = Controller::start()?;
    let wrong = format!("https://{}/directory-that-is-not-there", pebble.listen);
    let err = issuer_add(&ctl, "pebble", &wrong, Some(utf8(pebble.ca_bundle_path())?))?;
    assert!(err.contains("HTTP 404"), "{err}");
    assert!(err.contains(&wrong), "{err}");
    assert!(!err.contains("JSON"), "{err}");
    Ok(())
}

#[test]
fn refused_connection_at_issuer_add_names_the_ca() -> Result<()> {
    let ctl = Controller::start()?;
    // A port nothing listens on (found free a moment ago).
    let url = format!("https://127.0.0.1:{}/dir", free_udp_tcp_port()?);
    let err = issuer_add(&ctl, "down-ca", &url, None)?;
    assert!(err.contains("connection refused"), "{err}");
    assert!(err.contains(&url), "{err}");
    assert!(err.contains("\"down-ca\""), "{err}");
    Ok(())
}

#[test]
fn timed_out_connection_at_issuer_add_names_the_ca() -> Result<()> {
    // A listener whose accept queue holds one connection, and one that
    // fills it: the kernel drops every further SYN, so connecting times out
    // as it does towards a firewalled CA.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(0)?)?;
    let addr = listener.local_addr()?;
    let _fills_the_queue = TcpStream::connect(addr)?;
    let ctl = Controller::start()?;
    let url = format!("https://{addr}/dir");
    let started = Instant::now();
    let err = issuer_add(&ctl, "firewalled-ca", &url, None)?;
    assert!(err.contains("timed out"), "{err}");
    assert!(err.contains(&url), "{err}");
    assert!(err.contains("\"firewalled-ca\""), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the connect timeout bounds the wait: {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn refused_connection_during_an_application_names_the_ca() -> Result<()> {
    let pebble = pebble()?;
    let ctl = Controller::start()?;
    let url = pebble.directory_url();
    let bundle = utf8(pebble.ca_bundle_path())?.to_owned();
    ctl.cli_json(&[
        "issuer",
        "add",
        "pebble",
        "--kind",
        "acme",
        "--directory",
        &url,
        "--ca-bundle",
        &bundle,
    ])?;
    let inst = ctl.cli_json(&["instance", "create", "--issuer", "pebble"])?;
    let id = str_field(&inst, "id")?.to_owned();
    // The CA goes away after the issuer was added.
    drop(pebble);
    let out = ctl.cli(&[
        "cert",
        "apply",
        "--instance",
        &id,
        "--domain",
        "www.acme.test",
        "--wait",
    ])?;
    let err = expect_cli_error(&out, "cert apply while the CA is down")?;
    assert!(err.contains("connection refused"), "{err}");
    assert!(err.contains("\"pebble\""), "names the issuer: {err}");
    assert!(err.contains(&url), "names the URL: {err}");
    Ok(())
}
