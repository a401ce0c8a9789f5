//! What anchors an issuer's certificates, for operators who need to trust
//! them (`certfleet ca root`): public material only, so reading it releases
//! no key and is not audited.

use certfleet_protocol::message::{CaRoot, IssuerKind};
use rusqlite::OptionalExtension;

use crate::error::{Result, ServiceError};

pub(crate) use crate::ops::issuers::pick_issuer;
use crate::service::Service;

impl Service {
    /// The root and issuing chain of a built-in issuer; for an ACME issuer
    /// the chain its CA sent with the newest certificate, and a note that
    /// the root is the CA's to publish.
    pub async fn ca_root(&self, issuer: Option<String>) -> Result<CaRoot> {
        self.store
            .call(move |c| -> Result<CaRoot> {
                let row = pick_issuer(c, issuer)?;
                if row.acme.is_none() {
                    return Ok(CaRoot {
                        issuer: row.name,
                        kind: IssuerKind::Builtin,
                        root_pem: row.root_pem,
                        chain_pem: row.ca_pem,
                        note: None,
                    });
                }
                let chain: Option<String> = c
                    .query_row(
                        "SELECT chain_pem FROM certificates WHERE issuer = ?1 \
                         ORDER BY created_at DESC, id DESC LIMIT 1",
                        [&row.name],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(chain_pem) = chain else {
                    return Err(ServiceError::NotFound {
                        what: "chain of ACME issuer",
                        id: format!(
                            "{} (certfleet learns an ACME CA's chain with its first \
                             certificate, and never holds its root: get the root from the CA, \
                             whose directory is {})",
                            row.name,
                            row.acme
                                .as_ref()
                                .map(|a| a.directory.as_str())
                                .unwrap_or("")
                        ),
                    });
                };
                Ok(CaRoot {
                    note: Some(format!(
                        "{} is an ACME CA: this is the chain it sent with its newest \
                         certificate; certfleet does not hold its root, which the CA \
                         publishes (directory {})",
                        row.name,
                        row.acme
                            .as_ref()
                            .map(|a| a.directory.as_str())
                            .unwrap_or("")
                    )),
                    issuer: row.name,
                    kind: IssuerKind::Acme,
                    root_pem: String::new(),
                    chain_pem,
                })
            })
            .await
    }
}
