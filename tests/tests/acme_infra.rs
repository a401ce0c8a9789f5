//! The ACME test infrastructure on its own, without certfleet: Pebble with
//! its own TLS certificate, pebble-challtestsrv as its resolver, nginx on
//! Pebble's HTTP-01 port, and BIND taking TSIG-signed dynamic updates.
//!
//! The issuance tests drive Pebble with a deliberately tiny ACME client made
//! of `openssl` and `curl` (RS256 account key, no retries beyond `badNonce`),
//! so a failure here points at the infrastructure, not at certfleet.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use certfleet_tests::acme::{https_get, Bind, ChallTestSrv, Pebble, PebbleOptions, WebrootNginx};
use certfleet_tests::{cert_serial, http_get, openssl_ok, run_with_timeout, str_field, utf8};
use serde_json::{json, Value};
use tempfile::TempDir;

const ZONE: &str = "acme.test.";

#[test]
fn pebble_challtestsrv_and_webroot_nginx_issue_and_revoke_over_http01() -> Result<()> {
    let cts = ChallTestSrv::start()?;
    // Pebble's default 5% badNonce stays on: MiniAcme retries them.
    let pebble = Pebble::start(PebbleOptions::new(cts.dns_addr()))?;
    let nginx = WebrootNginx::start(pebble.http_port)?;

    // The directory answers with the bundle, and only with it.
    let dir = https_get(&pebble.directory_url(), pebble.ca_bundle_path())?;
    ensure!(dir.status == 200, "directory answered {}", dir.status);
    let directory: Value = serde_json::from_slice(&dir.body)?;
    str_field(&directory, "newAccount")?;
    let untrusted = run_with_timeout(
        Command::new("curl").args(["-sS", "--capath", "/nonexistent", &pebble.directory_url()]),
        Duration::from_secs(10),
    )?;
    ensure!(
        !untrusted.status.success(),
        "curl trusted Pebble without the CA bundle"
    );

    let roots = pebble.roots_pem()?;
    ensure!(roots.starts_with("-----BEGIN CERTIFICATE-----"), "{roots}");

    // A file in the webroot is served on Pebble's HTTP-01 port.
    fs::write(nginx.challenge_dir().join("probe-token_1"), "probe-body")?;
    let resp = http_get(&format!(
        "http://127.0.0.1:{}/.well-known/acme-challenge/probe-token_1",
        pebble.http_port
    ))?;
    ensure!(resp.status == 200 && resp.body == b"probe-body", "{resp:?}");

    // A real HTTP-01 issuance: Pebble resolves the name through challtestsrv
    // (→ 127.0.0.1) and fetches the token from nginx.
    let mut client = MiniAcme::new(&pebble)?;
    let name = "www.example.test";
    let leaf = client.issue(&[name], "http-01", |token, key_auth| {
        fs::write(nginx.challenge_dir().join(token), key_auth)?;
        Ok(())
    })?;
    ensure!(
        nginx.access_log().contains("/.well-known/acme-challenge/"),
        "Pebble never fetched a challenge: {}",
        nginx.access_log()
    );
    client.verify_chain(&leaf, &roots)?;
    let serial = cert_serial(&leaf)?;
    let status = pebble.cert_status_by_serial(&serial)?;
    ensure!(status["Status"] == "Valid", "{status}");

    client.revoke(&leaf, 4)?;
    let status = pebble.cert_status_by_serial(&serial)?;
    eprintln!("cert-status-by-serial after revocation: {status}");
    ensure!(status["Status"] == "Revoked", "{status}");
    ensure!(status["Reason"] == 4, "{status}");
    ensure!(status["RevokedAt"].is_string(), "{status}");
    Ok(())
}

#[test]
fn bind_accepts_updates_signed_with_its_key_only() -> Result<()> {
    let bind = Bind::start(ZONE)?;
    assert_eq!(bind.zone, ZONE);
    assert_eq!(bind.a("anything.acme.test")?, ["127.0.0.1"]);
    assert_eq!(bind.a("acme.test")?, ["127.0.0.1"]);

    let name = "_acme-challenge.www.acme.test.";
    ensure!(bind.txt(name)?.is_empty(), "{name} has TXT records already");
    let out = bind.nsupdate(
        &bind.tsig_secret_b64,
        &[&format!("update add {name} 60 TXT \"token-value-1\"")],
    )?;
    ensure!(
        out.status.success(),
        "nsupdate with the right key failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(bind.txt(name)?, ["token-value-1"]);

    let wrong = openssl_ok(&["rand", "-base64", "32"])?;
    let other = "_acme-challenge.other.acme.test.";
    let out = bind.nsupdate(
        wrong.trim(),
        &[&format!("update add {other} 60 TXT \"forged\"")],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "nsupdate with a wrong key succeeded: {stderr}"
    );
    eprintln!("nsupdate with a wrong key: {stderr}");
    ensure!(bind.txt(other)?.is_empty(), "the forged record was added");

    // Deleting works too (what the controller does after validation).
    let out = bind.nsupdate(
        &bind.tsig_secret_b64,
        &[&format!("update delete {name} TXT")],
    )?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(bind.txt(name)?.is_empty(), "the record is still there");
    Ok(())
}

#[test]
fn pebble_resolves_through_bind_for_a_wildcard_over_dns01() -> Result<()> {
    let bind = Bind::start(ZONE)?;
    let mut opts = PebbleOptions::new(bind.addr);
    opts.no_nonce_reject = true;
    let pebble = Pebble::start(opts)?;
    let roots = pebble.roots_pem()?;

    let mut client = MiniAcme::new(&pebble)?;
    let leaf = client.issue(&["*.acme.test"], "dns-01", |_token, key_auth| {
        let value = b64url(&sha256(key_auth.as_bytes())?);
        let out = bind.nsupdate(
            &bind.tsig_secret_b64,
            &[&format!(
                "update add _acme-challenge.acme.test. 60 TXT \"{value}\""
            )],
        )?;
        ensure!(out.status.success(), "{out:?}");
        ensure!(
            bind.txt("_acme-challenge.acme.test")? == [value],
            "not served"
        );
        Ok(())
    })?;
    client.verify_chain(&leaf, &roots)?;
    let text = openssl_ok(&[
        "x509",
        "-in",
        utf8(&leaf)?,
        "-noout",
        "-ext",
        "subjectAltName",
    ])?;
    ensure!(text.contains("DNS:*.acme.test"), "{text}");
    Ok(())
}

#[test]
fn pebble_requires_the_configured_eab_key() -> Result<()> {
    let cts = ChallTestSrv::start()?;
    let mut opts = PebbleOptions::new(cts.dns_addr());
    opts.eab = Some((
        "kid-1".to_owned(),
        "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W".to_owned(),
    ));
    let pebble = Pebble::start(opts)?;
    let dir = https_get(&pebble.directory_url(), pebble.ca_bundle_path())?;
    let directory: Value = serde_json::from_slice(&dir.body)?;
    ensure!(
        directory["meta"]["externalAccountRequired"] == true,
        "{directory}"
    );
    // An account without EAB is refused.
    let mut client = MiniAcme::new(&pebble)?;
    let err = client.new_account().expect_err("no EAB, yet an account");
    ensure!(
        format!("{err:#}").contains("externalAccountRequired"),
        "{err:#}"
    );
    Ok(())
}

/// The smallest ACME client that proves the infrastructure: RS256 account
/// key, one order at a time, polling without backoff.
struct MiniAcme {
    dir: TempDir,
    ca_bundle: PathBuf,
    directory: Value,
    key: PathBuf,
    jwk: Value,
    thumbprint: String,
    kid: Option<String>,
    nonce: Option<String>,
    files: u32,
}

impl MiniAcme {
    fn new(pebble: &Pebble) -> Result<MiniAcme> {
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("account.pem");
        openssl_ok(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            utf8(&key)?,
        ])?;
        let modulus = openssl_ok(&["rsa", "-in", utf8(&key)?, "-noout", "-modulus"])?;
        let n = hex::decode(
            modulus
                .trim()
                .strip_prefix("Modulus=")
                .ok_or_else(|| anyhow!("unexpected modulus output {modulus}"))?,
        )?;
        let n = b64url(&n);
        // RFC 7638: the required members in lexicographic order, no
        // whitespace.
        let canonical = format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#);
        let thumbprint = b64url(&sha256(canonical.as_bytes())?);
        let jwk = json!({ "e": "AQAB", "kty": "RSA", "n": n });
        let body = https_get(&pebble.directory_url(), pebble.ca_bundle_path())?.body;
        Ok(MiniAcme {
            ca_bundle: pebble.ca_bundle_path().to_owned(),
            directory: serde_json::from_slice(&body)?,
            dir,
            key,
            jwk,
            thumbprint,
            kid: None,
            nonce: None,
            files: 0,
        })
    }

    fn scratch(&mut self, name: &str) -> PathBuf {
        self.files += 1;
        self.dir.path().join(format!("{}-{name}", self.files))
    }

    fn url(&self, key: &str) -> Result<String> {
        Ok(str_field(&self.directory, key)?.to_owned())
    }

    /// POSTs a JWS of `payload` (`None`: POST-as-GET); retries `badNonce`.
    fn post(&mut self, url: &str, payload: Option<&Value>) -> Result<(u16, String, Vec<u8>)> {
        for _ in 0..10 {
            let nonce = match self.nonce.take() {
                Some(n) => n,
                None => {
                    let resp = https_get(&self.url("newNonce")?, &self.ca_bundle)?;
                    header(&resp.headers, "replay-nonce")
                        .ok_or_else(|| anyhow!("no nonce: {}", resp.headers))?
                }
            };
            let mut protected = json!({ "alg": "RS256", "nonce": nonce, "url": url });
            match &self.kid {
                Some(kid) => protected["kid"] = json!(kid),
                None => protected["jwk"] = self.jwk.clone(),
            }
            let protected = b64url(protected.to_string().as_bytes());
            let payload = payload.map_or(String::new(), |p| b64url(p.to_string().as_bytes()));
            let input = self.scratch("signing-input");
            fs::write(&input, format!("{protected}.{payload}"))?;
            let sig = run_with_timeout(
                Command::new("openssl").args([
                    "dgst",
                    "-sha256",
                    "-binary",
                    "-sign",
                    utf8(&self.key)?,
                    utf8(&input)?,
                ]),
                Duration::from_secs(20),
            )?;
            ensure!(sig.status.success(), "signing failed: {sig:?}");
            let body = self.scratch("jws.json");
            fs::write(
                &body,
                json!({ "protected": protected, "payload": payload, "signature": b64url(&sig.stdout) })
                    .to_string(),
            )?;
            let (status, headers, resp) = curl_post(url, &self.ca_bundle, &body)?;
            self.nonce = header(&headers, "replay-nonce");
            if status == 400 && String::from_utf8_lossy(&resp).contains("badNonce") {
                continue;
            }
            return Ok((status, headers, resp));
        }
        bail!("POST {url}: badNonce ten times in a row")
    }

    fn post_json(&mut self, url: &str, payload: Option<&Value>) -> Result<(String, Value)> {
        let (status, headers, body) = self.post(url, payload)?;
        let v: Value = serde_json::from_slice(&body)
            .with_context(|| format!("POST {url}: {status} {}", String::from_utf8_lossy(&body)))?;
        ensure!(
            (200..300).contains(&status),
            "POST {url} answered {status}: {v}"
        );
        Ok((headers, v))
    }

    fn new_account(&mut self) -> Result<()> {
        let url = self.url("newAccount")?;
        let (headers, _) = self.post_json(&url, Some(&json!({ "termsOfServiceAgreed": true })))?;
        self.kid = Some(header(&headers, "location").ok_or_else(|| anyhow!("no account URL"))?);
        Ok(())
    }

    /// Orders `names`, answers each authorization's `kind` challenge with
    /// `publish(token, key_authorization)`, and returns the chain's path.
    fn issue(
        &mut self,
        names: &[&str],
        kind: &str,
        mut publish: impl FnMut(&str, &str) -> Result<()>,
    ) -> Result<PathBuf> {
        self.new_account()?;
        let ids: Vec<Value> = names
            .iter()
            .map(|n| json!({ "type": "dns", "value": n }))
            .collect();
        let url = self.url("newOrder")?;
        let (headers, order) = self.post_json(&url, Some(&json!({ "identifiers": ids })))?;
        let order_url = header(&headers, "location").ok_or_else(|| anyhow!("no order URL"))?;
        for authz in order["authorizations"]
            .as_array()
            .ok_or_else(|| anyhow!("{order}"))?
        {
            let authz_url = authz.as_str().ok_or_else(|| anyhow!("{authz}"))?.to_owned();
            let (_, authz) = self.post_json(&authz_url, None)?;
            if authz["status"] == "valid" {
                continue;
            }
            let challenge = authz["challenges"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
                .ok_or_else(|| anyhow!("no {kind} challenge in {authz}"))?
                .clone();
            let token = str_field(&challenge, "token")?;
            publish(token, &format!("{token}.{}", self.thumbprint))?;
            self.post_json(str_field(&challenge, "url")?, Some(&json!({})))?;
            self.poll(&authz_url, "valid")?;
        }
        let order = self.poll(&order_url, "ready")?;
        let key = self.scratch("leaf-key.pem");
        let csr = self.scratch("leaf.csr");
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        openssl_ok(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/",
            "-addext",
            &format!("subjectAltName={}", san.join(",")),
            "-keyout",
            utf8(&key)?,
            "-outform",
            "DER",
            "-out",
            utf8(&csr)?,
        ])?;
        let finalize = str_field(&order, "finalize")?.to_owned();
        self.post_json(&finalize, Some(&json!({ "csr": b64url(&fs::read(&csr)?) })))?;
        let order = self.poll(&order_url, "valid")?;
        let (status, _, chain) = self.post(str_field(&order, "certificate")?, None)?;
        ensure!(status == 200, "certificate download answered {status}");
        let path = self.scratch("chain.pem");
        fs::write(&path, chain)?;
        Ok(path)
    }

    fn poll(&mut self, url: &str, want: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, v) = self.post_json(url, None)?;
            if v["status"] == want {
                return Ok(v);
            }
            ensure!(v["status"] != "invalid", "{url} became invalid: {v}");
            ensure!(Instant::now() < deadline, "{url} never became {want}: {v}");
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The chain (leaf + intermediate) verifies up to `roots`.
    fn verify_chain(&mut self, chain: &Path, roots: &str) -> Result<()> {
        let roots_path = self.scratch("roots.pem");
        fs::write(&roots_path, roots)?;
        let text = fs::read_to_string(chain)?;
        let split = text
            .find("-----END CERTIFICATE-----")
            .ok_or_else(|| anyhow!("no certificate in {text}"))?
            + "-----END CERTIFICATE-----".len();
        let untrusted = self.scratch("intermediates.pem");
        fs::write(&untrusted, &text[split..])?;
        openssl_ok(&[
            "verify",
            "-CAfile",
            utf8(&roots_path)?,
            "-untrusted",
            utf8(&untrusted)?,
            utf8(chain)?,
        ])?;
        Ok(())
    }

    fn revoke(&mut self, chain: &Path, reason: u8) -> Result<()> {
        let der = self.scratch("leaf.der");
        openssl_ok(&[
            "x509",
            "-in",
            utf8(chain)?,
            "-outform",
            "DER",
            "-out",
            utf8(&der)?,
        ])?;
        let url = self.url("revokeCert")?;
        let payload = json!({ "certificate": b64url(&fs::read(&der)?), "reason": reason });
        let (status, _, body) = self.post(&url, Some(&payload))?;
        ensure!(
            status == 200,
            "revokeCert answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

fn curl_post(url: &str, ca: &Path, body: &Path) -> Result<(u16, String, Vec<u8>)> {
    let out = run_with_timeout(
        Command::new("curl").args([
            "-sS",
            "-i",
            "--cacert",
            utf8(ca)?,
            "-H",
            "Content-Type: application/jose+json",
            "--data-binary",
            &format!("@{}", utf8(body)?),
            url,
        ]),
        Duration::from_secs(20),
    )?;
    ensure!(out.status.success(), "curl POST {url}: {out:?}");
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("POST {url}: no header end"))?;
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("POST {url}: bad status line {headers}"))?;
    Ok((status, headers, raw[split + 4..].to_vec()))
}

fn header(headers: &str, name: &str) -> Option<String> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

fn sha256(data: &[u8]) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("input");
    fs::write(&input, data)?;
    let out = run_with_timeout(
        Command::new("openssl").args(["dgst", "-sha256", "-binary", utf8(&input)?]),
        Duration::from_secs(20),
    )?;
    ensure!(out.status.success() && out.stdout.len() == 32, "{out:?}");
    Ok(out.stdout)
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}
