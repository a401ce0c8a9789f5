//! Rendering of command results as tables (for people) or JSON (for
//! scripts; the shapes are the protocol types, documented in docs/cli.md).

use std::path::{Path, PathBuf};

use certfleet_protocol::message::{
    ApplicationInfo, AuditEntry, CertInfo, InstanceInfo, IssuerInfo,
};
use serde::Serialize;

use super::Format;

pub(super) struct Output {
    format: Format,
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `key: value` lines for one object.
fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    pairs
        .iter()
        .map(|(k, v)| format!("{:<w$} {v}\n", format!("{k}:")))
        .collect()
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

impl Output {
    pub(super) fn new(format: Format) -> Self {
        Output { format }
    }

    fn emit<T: Serialize + ?Sized>(
        &self,
        value: &T,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        match self.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
            Format::Table => print!("{}", text()),
        }
        Ok(())
    }

    pub(super) fn issuer(&self, i: &IssuerInfo) -> anyhow::Result<()> {
        self.emit(i, || {
            fields(&[
                ("name", i.name.clone()),
                ("kind", i.kind.to_string()),
                ("key", i.key.to_string()),
                ("ca", i.ca_subject.clone()),
                ("root sha256", i.root_fingerprint.clone()),
                ("crl", i.crl_url.clone()),
                ("created", i.created_at.to_string()),
            ])
        })
    }

    pub(super) fn issuers(&self, list: &[IssuerInfo]) -> anyhow::Result<()> {
        self.emit(list, || {
            table(
                &["NAME", "KIND", "KEY", "CREATED", "CRL"],
                list.iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            i.kind.to_string(),
                            i.key.to_string(),
                            i.created_at.to_string(),
                            i.crl_url.clone(),
                        ]
                    })
                    .collect(),
            )
        })
    }

    pub(super) fn instance(&self, i: &InstanceInfo) -> anyhow::Result<()> {
        self.emit(i, || {
            fields(&[
                ("id", i.id.clone()),
                ("state", i.state.to_string()),
                ("issuer", i.spec.issuer.clone()),
                ("type", i.spec.validation.to_string()),
                ("domains", i.spec.max_domains.to_string()),
                ("wildcard", i.spec.wildcard.to_string()),
                ("validity", format!("{} days", i.spec.validity_days)),
                ("key", i.spec.key.to_string()),
                ("application", opt(&i.application)),
                ("certificate", opt(&i.certificate)),
                ("created", i.created_at.to_string()),
            ])
        })
    }

    pub(super) fn instances(&self, list: &[InstanceInfo]) -> anyhow::Result<()> {
        self.emit(list, || {
            table(
                &[
                    "ID",
                    "STATE",
                    "ISSUER",
                    "TYPE",
                    "DOMAINS",
                    "WILDCARD",
                    "DAYS",
                    "KEY",
                    "CERTIFICATE",
                ],
                list.iter()
                    .map(|i| {
                        vec![
                            i.id.clone(),
                            i.state.to_string(),
                            i.spec.issuer.clone(),
                            i.spec.validation.to_string(),
                            i.spec.max_domains.to_string(),
                            if i.spec.wildcard { "yes" } else { "no" }.into(),
                            i.spec.validity_days.to_string(),
                            i.spec.key.to_string(),
                            opt(&i.certificate),
                        ]
                    })
                    .collect(),
            )
        })
    }

    pub(super) fn application(&self, a: &ApplicationInfo) -> anyhow::Result<()> {
        self.emit(a, || {
            fields(&[
                ("application", a.id.clone()),
                ("state", a.state.to_string()),
                ("instance", a.instance.clone()),
                ("domains", a.domains.join(", ")),
                ("attempts", a.attempts.to_string()),
                ("certificate", opt(&a.certificate)),
                ("last error", opt(&a.last_error)),
                ("updated", a.updated_at.to_string()),
            ])
        })
    }

    pub(super) fn cert(&self, c: &CertInfo) -> anyhow::Result<()> {
        self.emit(c, || {
            let mut f = vec![
                ("id", c.id.clone()),
                ("state", c.state.to_string()),
                ("domains", c.domains.join(", ")),
                ("issuer", c.issuer.clone()),
                ("instance", c.instance.clone()),
                ("serial", c.serial.clone()),
                ("sha256", c.fingerprint.clone()),
                ("key", c.key.to_string()),
                ("not before", c.not_before.to_string()),
                ("not after", c.not_after.to_string()),
            ];
            if let Some(r) = &c.renews {
                f.push(("renews", r.clone()));
            }
            if let Some(at) = c.revoked_at {
                f.push(("revoked", at.to_string()));
            }
            if let Some(r) = c.revocation_reason {
                f.push(("reason", r.to_string()));
            }
            fields(&f)
        })
    }

    pub(super) fn certs(&self, list: &[CertInfo]) -> anyhow::Result<()> {
        self.emit(list, || {
            table(
                &["ID", "STATE", "NOT AFTER", "ISSUER", "DOMAINS"],
                list.iter()
                    .map(|c| {
                        vec![
                            c.id.clone(),
                            c.state.to_string(),
                            c.not_after.to_string(),
                            c.issuer.clone(),
                            c.domains.join(","),
                        ]
                    })
                    .collect(),
            )
        })
    }

    pub(super) fn audit(&self, list: &[AuditEntry]) -> anyhow::Result<()> {
        self.emit(list, || {
            table(
                &["ID", "AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "DETAIL"],
                list.iter()
                    .map(|a| {
                        vec![
                            a.id.to_string(),
                            a.at.to_string(),
                            a.actor.clone(),
                            a.action.clone(),
                            a.target.clone(),
                            a.outcome.clone(),
                            a.detail.clone(),
                        ]
                    })
                    .collect(),
            )
        })
    }

    pub(super) fn files(&self, dir: &Path, files: &[PathBuf]) -> anyhow::Result<()> {
        #[derive(Serialize)]
        struct Written<'a> {
            dir: &'a Path,
            files: &'a [PathBuf],
        }
        self.emit(&Written { dir, files }, || {
            files
                .iter()
                .map(|f| format!("wrote {}\n", f.display()))
                .collect()
        })
    }
}
