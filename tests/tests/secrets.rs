//! Issue #2, acceptance 5: a certificate's private key never appears in the
//! controller's logs or, unsealed, in its database — neither as PEM/base64
//! text, nor as DER, nor as the bare secret numbers.

use std::{collections::HashSet, fs, path::Path};

use anyhow::{ensure, Context, Result};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use certfleet_tests::{
    contains_bytes, openssl_ok, pem_blocks, read_pem, str_field, utf8, Controller,
    ControllerOptions,
};

/// Length of the base64 windows looked for (30 bytes of key material).
const WINDOW: usize = 40;

/// Where a leaked key could end up, with a name for messages.
fn haystacks(ctl: &Controller) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = vec![("controller log".to_owned(), fs::read(ctl.log_path())?)];
    for name in ["certfleet.db", "certfleet.db-wal", "certfleet.db-shm"] {
        let path = ctl.state_dir().join(name);
        if path.exists() {
            out.push((name.to_owned(), fs::read(&path)?));
        }
    }
    ensure!(
        out.iter().any(|(name, _)| name == "certfleet.db"),
        "no certfleet.db in the state directory"
    );
    Ok(out)
}

/// Base64 of `der` at each of the three byte alignments, so that any base64
/// text of public data can be recognized whatever its offset.
fn base64_alignments(der: &[u8]) -> Vec<String> {
    (0..3.min(der.len()))
        .map(|skip| STANDARD.encode(&der[skip..]))
        .collect()
}

/// The DER bodies of the public items: certificates and the public key.
fn public_material(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for name in ["cert.pem", "chain.pem", "root.pem"] {
        for block in read_pem(&dir.join(name))? {
            out.push(STANDARD.decode(&block.base64)?);
        }
    }
    let spki = openssl_ok(&["pkey", "-in", utf8(&dir.join("privkey.pem"))?, "-pubout"])?;
    for block in pem_blocks(&spki) {
        out.push(STANDARD.decode(&block.base64)?);
    }
    Ok(out)
}

/// The secret integers of a private key, big-endian without leading zeros,
/// from `openssl pkey -text` (EC: priv; RSA: privateExponent, primes,
/// exponents, coefficient).
fn secret_numbers(key: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let text = openssl_ok(&["pkey", "-in", utf8(key)?, "-noout", "-text"])?;
    const SECRET: [&str; 7] = [
        "priv:",
        "privateExponent:",
        "prime1:",
        "prime2:",
        "exponent1:",
        "exponent2:",
        "coefficient:",
    ];
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        let is_hex_line =
            !trimmed.is_empty() && trimmed.chars().all(|c| c.is_ascii_hexdigit() || c == ':');
        if is_hex_line && line.starts_with(char::is_whitespace) {
            if let Some((_, hex)) = current.as_mut() {
                hex.push_str(&trimmed.replace(':', ""));
            }
            continue;
        }
        out.extend(current.take());
        let header = trimmed.to_owned();
        if SECRET.contains(&header.as_str()) {
            current = Some((header, String::new()));
        }
    }
    out.extend(current.take());
    let mut numbers = Vec::new();
    for (name, hex) in out {
        let bytes = hex::decode(&hex).with_context(|| format!("{name} is not hex: {hex}"))?;
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let bytes = bytes[start..].to_vec();
        ensure!(bytes.len() >= 16, "{name} is implausibly short");
        numbers.push((name, bytes));
    }
    ensure!(
        !numbers.is_empty(),
        "found no secret numbers in openssl's description of the key:\n{text}"
    );
    Ok(numbers)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    contains_bytes(haystack, needle)
}

/// Fails if any trace of the private key in `dir/privkey.pem` is in `hay`
/// (`hay_windows` holds every [`WINDOW`]-byte window of `hay`).
fn check_no_key(
    dir: &Path,
    hay_name: &str,
    hay: &[u8],
    hay_windows: &HashSet<&[u8]>,
) -> Result<()> {
    let key_path = dir.join("privkey.pem");
    let blocks = read_pem(&key_path)?;
    ensure!(
        blocks.len() == 1,
        "privkey.pem holds {} blocks",
        blocks.len()
    );
    let key_b64 = &blocks[0].base64;
    let key_der = STANDARD.decode(key_b64)?;

    // The whole key, as DER and as base64 text.
    ensure!(!contains(hay, &key_der), "{hay_name} holds the key's DER");
    ensure!(
        !contains(hay, key_b64.as_bytes()),
        "{hay_name} holds the key's PEM body"
    );

    // Any 40-character window of the base64 that is not also the base64 of
    // public data (the public key is inside the PKCS#8 structure too, and
    // the certificate that carries it is stored on purpose).
    let public: Vec<String> = public_material(dir)?
        .iter()
        .flat_map(|der| base64_alignments(der))
        .collect();
    for start in 0..key_b64.len().saturating_sub(WINDOW) + 1 {
        let window = &key_b64[start..start + WINDOW];
        if public.iter().any(|p| p.contains(window)) {
            continue;
        }
        ensure!(
            !hay_windows.contains(window.as_bytes()),
            "{hay_name} holds {window:?}, a piece of the private key's base64 \
             (at offset {start})"
        );
    }

    // The secret numbers themselves, as bytes (both byte orders) and as hex.
    for (name, number) in secret_numbers(&key_path)? {
        let mut reversed = number.clone();
        reversed.reverse();
        let lower = hex::encode(&number);
        let upper = lower.to_ascii_uppercase();
        for (form, needle) in [
            ("big-endian bytes", number.as_slice()),
            ("little-endian bytes", reversed.as_slice()),
            ("lower-case hex", lower.as_bytes()),
            ("upper-case hex", upper.as_bytes()),
        ] {
            ensure!(
                !contains(hay, needle),
                "{hay_name} holds the key's {name} as {form}"
            );
        }
    }
    Ok(())
}

#[test]
fn private_keys_stay_out_of_logs_and_database() -> Result<()> {
    // Verbose logging widens what could leak.
    let ctl = Controller::start_with(ControllerOptions {
        env: vec![("RUST_LOG".to_owned(), "debug".to_owned())],
        ..ControllerOptions::default()
    })?;
    ctl.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    let mut downloaded = Vec::new();
    for (key, domain) in [
        ("ecdsa-p256", "ec.example.test"),
        ("rsa-2048", "rsa.example.test"),
    ] {
        let cert = ctl.issue("ca1", &["--key", key], &[domain])?;
        assert_eq!(cert["key"], key, "{cert}");
        let id = str_field(&cert, "id")?.to_owned();
        let dir = ctl.scratch(key)?;
        ctl.cli_ok(&["cert", "download", &id, "--out", utf8(&dir)?])?;
        // A PKCS#12 download releases the key through another path.
        let p12_dir = ctl.scratch(&format!("{key}-p12"))?;
        let password = p12_dir.join("password");
        fs::write(&password, "not-a-key")?;
        ctl.cli_ok(&[
            "cert",
            "download",
            &id,
            "--out",
            utf8(&p12_dir)?,
            "--format",
            "pkcs12",
            "--password-file",
            utf8(&password)?,
        ])?;
        downloaded.push(dir);
    }

    for (hay_name, hay) in haystacks(&ctl)? {
        let hay_windows: HashSet<&[u8]> = hay.windows(WINDOW).collect();
        for dir in &downloaded {
            check_no_key(dir, &hay_name, &hay, &hay_windows)
                .with_context(|| format!("key downloaded to {}", dir.display()))?;
        }
    }
    Ok(())
}

/// The detector itself: a key planted in a haystack in any of the forms
/// above is found, and the public material next to it is not mistaken for
/// it. Without this, a detector bug would make the test above pass vacuously.
#[test]
fn leak_detector_finds_planted_keys() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    for (name, newkey) in [("ec", "ec"), ("rsa", "rsa:2048")] {
        let dir = tmp.path().join(name);
        fs::create_dir(&dir)?;
        let key = dir.join("privkey.pem");
        let cert = dir.join("cert.pem");
        let mut args = vec![
            "req",
            "-x509",
            "-newkey",
            newkey,
            "-nodes",
            "-subj",
            "/CN=leak.example.test",
            "-days",
            "1",
            "-keyout",
            utf8(&key)?,
            "-out",
            utf8(&cert)?,
        ];
        if newkey == "ec" {
            args.extend_from_slice(&["-pkeyopt", "ec_paramgen_curve:P-256"]);
        }
        openssl_ok(&args)?;
        fs::copy(&cert, dir.join("chain.pem"))?;
        fs::copy(&cert, dir.join("root.pem"))?;

        let key_pem = fs::read(&key)?;
        let key_b64 = read_pem(&key)?[0].base64.clone();
        let key_der = STANDARD.decode(&key_b64)?;
        let (_, secret) = secret_numbers(&key)?.remove(0);
        let public = fs::read(&cert)?;
        let spki = openssl_ok(&["pkey", "-in", utf8(&key)?, "-pubout"])?;

        let noise = b"controller started; nothing to see here\n".repeat(100);
        let plant = |thing: &[u8]| {
            let mut hay = noise.clone();
            hay.extend_from_slice(thing);
            hay.extend_from_slice(&noise);
            hay
        };
        let check = |hay: &[u8]| {
            let windows: HashSet<&[u8]> = hay.windows(WINDOW).collect();
            check_no_key(&dir, "hay", hay, &windows)
        };
        let middle = &key_b64[key_b64.len() / 3..key_b64.len() / 3 + WINDOW];
        for (form, hay) in [
            ("PEM", plant(&key_pem)),
            ("DER", plant(&key_der)),
            ("40 base64 characters", plant(middle.as_bytes())),
            ("secret as hex", plant(hex::encode(&secret).as_bytes())),
            ("secret as bytes", plant(&secret)),
        ] {
            ensure!(
                check(&hay).is_err(),
                "{name}: a planted key ({form}) was missed"
            );
        }
        let mut innocent = plant(&public);
        innocent.extend_from_slice(spki.as_bytes());
        innocent.extend_from_slice(&STANDARD.decode(&read_pem(&cert)?[0].base64)?);
        check(&innocent).with_context(|| format!("{name}: public material taken for the key"))?;
    }
    Ok(())
}
