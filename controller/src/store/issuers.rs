//! Issuers: their CA material and settings.

use super::*;

#[derive(Debug, Clone)]
pub struct IssuerRow {
    pub name: String,
    pub kind: IssuerKind,
    pub key: KeyType,
    pub root_pem: String,
    pub ca_pem: String,
    pub ca_key_sealed: Vec<u8>,
    pub crl_number: i64,
    pub crl_der: Option<Vec<u8>>,
    pub crl_at: Option<i64>,
    pub created_at: i64,
    pub acme: Option<AcmeIssuer>,
}

/// The ACME side of an issuer.
#[derive(Debug, Clone)]
pub struct AcmeIssuer {
    pub directory: String,
    /// Sealed `instant_acme::AccountCredentials` JSON.
    pub account_sealed: Vec<u8>,
    pub account_url: String,
    /// PEM of the CA that signs the ACME server's HTTPS certificate, when
    /// it is not publicly trusted.
    pub ca_bundle: Option<String>,
    pub default_challenge: String,
    /// Sealed RFC 2136 settings for DNS-01.
    pub dns_update_sealed: Option<Vec<u8>>,
}

pub(super) const ISSUER_COLS: &str = "name, kind, key_type, root_pem, ca_pem, ca_key_sealed, \
                           crl_number, crl_der, crl_at, created_at, acme_directory, \
                           acme_account_sealed, acme_account_url, acme_ca_bundle, \
                           default_challenge, dns_update_sealed";

pub(super) fn issuer_from_row(r: &Row<'_>) -> Result<IssuerRow, rusqlite::Error> {
    Ok(IssuerRow {
        name: r.get(0)?,
        kind: parse(r.get(1)?)?,
        key: parse(r.get(2)?)?,
        root_pem: r.get(3)?,
        ca_pem: r.get(4)?,
        ca_key_sealed: r.get(5)?,
        crl_number: r.get(6)?,
        crl_der: r.get(7)?,
        crl_at: r.get(8)?,
        created_at: r.get(9)?,
        acme: match r.get::<_, Option<String>>(10)? {
            Some(directory) => Some(AcmeIssuer {
                directory,
                account_sealed: r.get::<_, Option<Vec<u8>>>(11)?.unwrap_or_default(),
                account_url: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
                ca_bundle: r.get(13)?,
                default_challenge: r
                    .get::<_, Option<String>>(14)?
                    .unwrap_or_else(|| "http-01".into()),
                dns_update_sealed: r.get(15)?,
            }),
            None => None,
        },
    })
}

pub fn issuer_insert(conn: &Connection, i: &IssuerRow) -> Result<(), StoreError> {
    conn.execute(
        &format!(
            "INSERT INTO issuers ({ISSUER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
        ),
        params![
            i.name,
            i.kind.as_str(),
            i.key.as_str(),
            i.root_pem,
            i.ca_pem,
            i.ca_key_sealed,
            i.crl_number,
            i.crl_der,
            i.crl_at,
            i.created_at,
            i.acme.as_ref().map(|a| a.directory.clone()),
            i.acme.as_ref().map(|a| a.account_sealed.clone()),
            i.acme.as_ref().map(|a| a.account_url.clone()),
            i.acme.as_ref().and_then(|a| a.ca_bundle.clone()),
            i.acme.as_ref().map(|a| a.default_challenge.clone()),
            i.acme.as_ref().and_then(|a| a.dns_update_sealed.clone())
        ],
    )?;
    Ok(())
}

pub fn issuer_get(conn: &Connection, name: &str) -> Result<Option<IssuerRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {ISSUER_COLS} FROM issuers WHERE name = ?1"
        ))?
        .query_row([name], issuer_from_row)
        .optional()?)
}

pub fn issuer_list(conn: &Connection) -> Result<Vec<IssuerRow>, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {ISSUER_COLS} FROM issuers ORDER BY name"))?;
    let rows = stmt.query_map([], issuer_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn issuer_set_crl(
    conn: &Connection,
    name: &str,
    number: i64,
    der: &[u8],
    at: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE issuers SET crl_number = ?2, crl_der = ?3, crl_at = ?4 WHERE name = ?1",
        params![name, number, der, at],
    )?;
    Ok(())
}
