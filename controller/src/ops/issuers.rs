//! Which issuer an operation means, read inside the caller's transaction.

use rusqlite::Connection;

use crate::error::{Result, ServiceError};
use crate::store::{self, IssuerRow};

/// The issuer an operator means: the one named, or the only one there is.
pub(crate) fn pick_issuer(conn: &Connection, issuer: Option<String>) -> Result<IssuerRow> {
    let name = match issuer {
        Some(n) => n,
        None => {
            let all = store::issuer_list(conn)?;
            match all.as_slice() {
                [one] => one.name.clone(),
                [] => {
                    return Err(ServiceError::Invalid(
                        "no issuers yet; add one with `certfleet issuer add`".into(),
                    ))
                }
                many => {
                    return Err(ServiceError::Invalid(format!(
                        "several issuers exist ({}); choose one with --issuer",
                        many.iter()
                            .map(|i| i.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        }
    };
    store::issuer_get(conn, &name)?.ok_or(ServiceError::NotFound {
        what: "issuer",
        id: name,
    })
}
