//! `certfleet admin …`: operators' credentials, and the checks every
//! command makes on the credential it is about to use.
//!
//! The private key of a new credential is made here and never sent: the
//! controller (or, offline, the identity CA read from the state directory)
//! signs a certificate signing request, and the CLI writes certificate,
//! identity CA and key into one 0600 file.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use certfleet_protocol::message::{AdminCredentialInfo, AdminIssued, Request, Response, Timestamp};
use clap::Subcommand;
use time::OffsetDateTime;

use super::output::{fields, Output};
use super::table::table;
use crate::client::{Client, Credential};

/// Within this long of its expiry, every command warns about its credential.
pub(super) const EXPIRY_WARNING_DAYS: i64 = 30;

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Issue a credential for a new operator and write it (mode 0600).
    ///
    /// With --state-dir, the credential is made on this host from the
    /// controller's state directory, with no controller connection and no
    /// existing credential: the way back in for a locked-out operator. It
    /// works whether the controller runs or not.
    Create {
        /// Operator name; the audit log names them `admin:NAME`.
        name: String,
        /// File to write the credential into (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Make the credential offline from this controller state directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Master key file, when it is not <state-dir>/master.key (offline only).
        #[arg(long, requires = "state_dir")]
        master_key_file: Option<PathBuf>,
    },
    /// Every admin credential: operator, serial, expiry, revocation.
    List,
    /// Get a new credential for the operator of the credential in use (which
    /// stays valid until it expires or is revoked).
    Renew {
        /// Write the new credential here (must not exist) instead of
        /// replacing the credential file in use.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke every credential of an operator, at once (open connections
    /// included).
    Revoke {
        name: String,
        /// Revoke even when no valid admin credential would be left.
        #[arg(long)]
        force: bool,
    },
    /// Check the controller's database for damage: SQLite's full
    /// integrity_check and foreign_key_check, on the controller host.
    ///
    /// Works with the controller running or stopped; exits with status 1
    /// when it finds damage (then restore a backup: `admin restore`).
    /// `serve` runs the quicker quick_check at every start.
    Check {
        /// The controller's state directory.
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Write a consistent backup of the controller's database (mode 0600).
    ///
    /// The running controller takes the snapshot with SQLite's online
    /// backup API, without stopping its work, and the CLI copies it into
    /// FILE. With --state-dir the snapshot is taken on this host from the
    /// state directory, controller running or not. The backup holds every
    /// private key sealed under the master key, not the key itself: keep a
    /// copy of the master key apart.
    Backup {
        /// File to write the backup into (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Take the snapshot on this host from this state directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Put a backup in place of the controller's database.
    ///
    /// The controller must be stopped (the state directory's lock tells).
    /// The backup is checked in full, and the state directory's master key
    /// must be the one it was made with; the current database is kept
    /// beside it as certfleet.db.before-restore-<time>.
    Restore {
        /// The backup file (from `admin backup`).
        file: PathBuf,
        /// The controller's state directory.
        #[arg(long)]
        state_dir: PathBuf,
        /// Master key file, when it is not <state-dir>/master.key.
        #[arg(long)]
        master_key_file: Option<PathBuf>,
    },
}

/// Run an `admin` command; `connect` opens the controller connection for
/// the commands that need one.
pub(super) async fn run<F, Fut>(
    cmd: AdminCmd,
    credential: Option<&Path>,
    connect: F,
    out: &Output,
) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Client>>,
{
    match cmd {
        AdminCmd::Create {
            name,
            out: file,
            state_dir: Some(dir),
            master_key_file,
        } => {
            refuse_existing(&file)?;
            let issued = tokio::task::spawn_blocking(move || {
                create_offline(&dir, master_key_file.as_deref(), &name)
            })
            .await??;
            write_new(&file, &issued.0, &issued.1)?;
            print_issued(out, &issued.0.credential, &file)
        }
        AdminCmd::Create {
            name,
            out: file,
            state_dir: None,
            ..
        } => {
            refuse_existing(&file)?;
            let (key, csr_pem) = Credential::new_key()?;
            let client = connect().await?;
            let r = client.call(&Request::AdminCreate { name, csr_pem }).await;
            client.close();
            let issued = expect_response!(r?, AdminIssued);
            write_new(&file, &issued, &key)?;
            print_issued(out, &issued.credential, &file)
        }
        AdminCmd::Renew { out: file } => {
            let Some(current) = credential else {
                bail!("no credential to renew: pass --credential FILE or set CERTFLEET_CREDENTIAL");
            };
            if let Some(f) = &file {
                refuse_existing(f)?;
            }
            let (key, csr_pem) = Credential::new_key()?;
            let client = connect().await.map_err(|e| {
                // A revoked or expired credential cannot renew itself; say
                // how to get a new one instead.
                e.context(format!(
                    "`admin renew` needs a valid credential, and {} was refused",
                    current.display()
                ))
            })?;
            let r = client.call(&Request::AdminRenew { csr_pem }).await;
            client.close();
            let issued = expect_response!(r?, AdminIssued);
            let target = match file {
                Some(f) => {
                    write_new(&f, &issued, &key)?;
                    f
                }
                None => {
                    // Replaced atomically: a failure leaves the old file,
                    // which stays valid.
                    Credential::write_pem(current, &issued.cert_pem, &issued.ca_pem, &key)?;
                    current.to_path_buf()
                }
            };
            print_issued(out, &issued.credential, &target)
        }
        AdminCmd::List => {
            let client = connect().await?;
            let r = client.call(&Request::AdminList).await;
            client.close();
            let list = expect_response!(r?, AdminCredentials);
            credentials(out, &list)
        }
        AdminCmd::Check { state_dir } => super::backup::check(state_dir, out).await,
        AdminCmd::Backup {
            out: file,
            state_dir: Some(dir),
        } => super::backup::backup_offline(dir, file, out).await,
        AdminCmd::Backup {
            out: file,
            state_dir: None,
        } => {
            let client = connect().await?;
            let r = super::backup::backup_online(&client, file, out).await;
            client.close();
            r
        }
        AdminCmd::Restore {
            file,
            state_dir,
            master_key_file,
        } => super::backup::restore(file, state_dir, master_key_file, out).await,
        AdminCmd::Revoke { name, force } => {
            let client = connect().await?;
            let r = client.call(&Request::AdminRevoke { name, force }).await;
            client.close();
            let list = expect_response!(r?, AdminCredentials);
            credentials(out, &list)
        }
    }
}

fn create_offline(
    dir: &Path,
    master_key_file: Option<&Path>,
    name: &str,
) -> anyhow::Result<(AdminIssued, String)> {
    let state = crate::server::open_existing(dir, master_key_file)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let now = crate::clock::from_env().now();
    let actor = format!("local:{}", whoami());
    let issued = state
        .store
        .call_blocking(|c| {
            crate::admin::issue(
                c,
                &state.identity,
                crate::service::Issue::Create,
                name,
                &key,
                &actor,
                now,
            )
        })
        .map_err(|e| anyhow!("cannot create admin {name:?} in {}: {e}", dir.display()))?;
    Ok((issued, key.serialize_pem()))
}

/// Who ran an offline command, for the audit log: the Unix user.
fn whoami() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {uid}"))
}

fn refuse_existing(file: &Path) -> anyhow::Result<()> {
    if file.exists() {
        bail!(
            "{} already exists; a credential is never written over a file: choose another --out",
            file.display()
        );
    }
    Ok(())
}

/// Write a credential into a file that must not exist, mode 0600 from the
/// start.
fn write_new(file: &Path, issued: &AdminIssued, key_pem: &str) -> anyhow::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".credential")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write a credential into {}", dir.display()))?;
    tmp.write_all(issued.cert_pem.as_bytes())?;
    tmp.write_all(issued.ca_pem.as_bytes())?;
    tmp.write_all(key_pem.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist_noclobber(file).map_err(|e| {
        anyhow!(
            "cannot write credential {} ({}); admin {} holds a credential (serial {}) no file \
             has: revoke it with `certfleet admin revoke {}` and create it again",
            file.display(),
            e.error,
            issued.credential.name,
            issued.credential.serial,
            issued.credential.name
        )
    })?;
    Ok(())
}

fn print_issued(out: &Output, c: &AdminCredentialInfo, file: &Path) -> anyhow::Result<()> {
    out.emit(c, || {
        format!(
            "{}\nwrote {}\n",
            fields(&[
                ("admin", c.name.clone()),
                ("serial", c.serial.clone()),
                ("not after", c.not_after.to_string()),
            ]),
            file.display()
        )
    })
}

fn credentials(out: &Output, list: &[AdminCredentialInfo]) -> anyhow::Result<()> {
    out.emit(list, || {
        let now = crate::clock::from_env().now().unix_timestamp();
        let rows = list
            .iter()
            .map(|c| {
                let state = match c.revoked_at {
                    Some(t) => format!("revoked {t}"),
                    None if c.not_after.0 <= now => "expired".into(),
                    None => "valid".into(),
                };
                vec![
                    c.name.clone(),
                    c.serial.clone(),
                    c.not_after.to_string(),
                    state,
                ]
            })
            .collect();
        table(&["NAME", "SERIAL", "NOT AFTER", "STATE"], rows)
    })
}

/// Checks on the credential a command is about to use: refuse an expired
/// one with the way back, warn (stderr) when it expires within
/// [`EXPIRY_WARNING_DAYS`] or when other users can read it.
pub(super) fn check_credential(
    path: &Path,
    cred: &Credential,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "warning: credential {} is readable by other users (mode {:o}); anyone who \
                 can read it can act as its admin: chmod 600 {}",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            );
        }
    }
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(&cred.cert) else {
        // The handshake will say what is wrong with it.
        return Ok(());
    };
    let not_after = x509.validity().not_after.timestamp();
    let who = crate::identity::peer_identity(&cred.cert)
        .map(|p| p.subject)
        .unwrap_or_else(|_| "NAME".into());
    let when = Timestamp(not_after);
    let now = now.unix_timestamp();
    if not_after <= now {
        bail!(
            "credential {} (admin {who}) expired at {when}; an expired credential cannot be \
             renewed: ask another admin for a new one (`certfleet admin create NAME --out \
             FILE`), or on the controller host run `certfleet admin create {who} --state-dir \
             DIR --out FILE`",
            path.display()
        );
    }
    if not_after - now <= EXPIRY_WARNING_DAYS * 86_400 {
        eprintln!(
            "warning: credential {} (admin {who}) expires at {when}, in {} days; get a new one \
             with `certfleet admin renew --credential {}`",
            path.display(),
            (not_after - now) / 86_400,
            path.display()
        );
    }
    Ok(())
}
