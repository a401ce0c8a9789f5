//! Writing certificates, keys and CRLs to disk for operators.
//!
//! Every file is written to a temporary name in the target directory with its
//! final mode set at creation, synced, then renamed into place, so a reader
//! never sees a half-written key or a key with loose permissions.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use certfleet_protocol::message::{CaRoot, CertBundle};
use clap::ValueEnum;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BundleFormat {
    Pem,
    Pkcs12,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CrlFormat {
    Der,
    Pem,
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".certfleet-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Read a password file's first line (without the newline).
pub(super) fn read_password(path: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read password file {}", path.display()))?,
    );
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        bail!("password file {} is empty", path.display());
    }
    Ok(zeroize::Zeroizing::new(line.to_string()))
}

fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output directory {}", dir.display()))
}

/// Write a bundle into `dir`; returns the paths written.
pub(super) fn write_bundle(
    bundle: &CertBundle,
    dir: &Path,
    format: BundleFormat,
    password: Option<&str>,
) -> anyhow::Result<Vec<PathBuf>> {
    ensure_dir(dir)?;
    let key_pem = bundle
        .key
        .expose_str()
        .context("controller sent a private key that is not PEM")?;
    match format {
        BundleFormat::Pem => {
            let fullchain = format!("{}{}", bundle.leaf_pem, bundle.chain_pem);
            let files: [(&str, &[u8], u32); 5] = [
                ("privkey.pem", key_pem.as_bytes(), 0o600),
                ("cert.pem", bundle.leaf_pem.as_bytes(), 0o644),
                ("chain.pem", bundle.chain_pem.as_bytes(), 0o644),
                ("fullchain.pem", fullchain.as_bytes(), 0o644),
                ("root.pem", bundle.root_pem.as_bytes(), 0o644),
            ];
            let mut written = Vec::new();
            for (name, data, mode) in files {
                // ACME bundles carry no root: the CA's root is public.
                if data.is_empty() && name == "root.pem" {
                    continue;
                }
                let path = dir.join(name);
                write_file(&path, data, mode)?;
                written.push(path);
            }
            Ok(written)
        }
        BundleFormat::Pkcs12 => {
            let Some(password) = password else {
                bail!("--format pkcs12 needs --password-file");
            };
            let der = pkcs12(bundle, key_pem, password)?;
            let path = dir.join("cert.p12");
            write_file(&path, &der, 0o600)?;
            Ok(vec![path])
        }
    }
}

fn pkcs12(bundle: &CertBundle, key_pem: &str, password: &str) -> anyhow::Result<Vec<u8>> {
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("private key is not PEM")?;
    let key = p12_keystore::PrivateKey::from_der(key.secret_der())
        .map_err(|e| anyhow::anyhow!("private key unusable for PKCS#12: {e}"))?;
    let mut certs = Vec::new();
    for pem in [&bundle.leaf_pem, &bundle.chain_pem, &bundle.root_pem] {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let der = der.context("certificate is not PEM")?;
            certs.push(
                p12_keystore::Certificate::from_der(&der)
                    .map_err(|e| anyhow::anyhow!("certificate unusable for PKCS#12: {e}"))?,
            );
        }
    }
    let local_key_id = crate::check::fingerprint(
        CertificateDer::pem_slice_iter(bundle.leaf_pem.as_bytes())
            .next()
            .context("no leaf certificate")??
            .as_ref(),
    );
    let chain = p12_keystore::PrivateKeyChain::new(local_key_id.into_bytes(), key, certs);
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        &bundle.id,
        p12_keystore::KeyStoreEntry::PrivateKeyChain(chain),
    );
    store
        .writer(password)
        .write()
        .map_err(|e| anyhow::anyhow!("cannot build PKCS#12: {e}"))
}

/// Write a CRL as DER or PEM.
pub(super) fn write_crl(der: &[u8], path: &Path, format: CrlFormat) -> anyhow::Result<()> {
    let bytes = match format {
        CrlFormat::Der => der.to_vec(),
        CrlFormat::Pem => {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let mut pem = String::from("-----BEGIN X509 CRL-----\n");
            for chunk in b64.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                pem.push('\n');
            }
            pem.push_str("-----END X509 CRL-----\n");
            pem.into_bytes()
        }
    };
    write_file(path, &bytes, 0o644)
}

/// `certfleet ca root`: the root and then the chain as one PEM bundle, to
/// stdout or (0644: nothing secret) into `file`. JSON prints the fields.
pub(super) fn write_ca_root(
    root: &CaRoot,
    file: Option<&Path>,
    out: &super::output::Output,
) -> anyhow::Result<()> {
    let mut bundle = String::new();
    for pem in [&root.root_pem, &root.chain_pem] {
        let pem = pem.trim();
        if !pem.is_empty() {
            bundle.push_str(pem);
            bundle.push('\n');
        }
    }
    if let Some(note) = &root.note {
        eprintln!("note: {note}");
    }
    match file {
        Some(path) => {
            write_file(path, bundle.as_bytes(), 0o644)?;
            out.files(
                path.parent().unwrap_or(Path::new(".")),
                &[path.to_path_buf()],
            )
        }
        None => out.emit(root, || bundle),
    }
}
