//! Names a certificate may carry: DNS host names (optionally a wildcard) and
//! IP addresses. Validation is shared by the CLI, the controller and the
//! agent so that all three reject the same inputs with the same words.
//!
//! The rules are those of the CA/Browser Forum Baseline Requirements
//! (§7.1.4.2 / §7.1.2.7.12) for publicly-trusted names, applied to every
//! issuer so that a name is either valid everywhere or refused: LDH labels of
//! 1–63 characters with no hyphen at either end, at most 253 characters in
//! all, a wildcard only as the whole leftmost label, no label with hyphens in
//! positions 3–4 except a genuine IDNA A-label (`xn--` that decodes to a
//! valid U-label), and no all-numeric top-level label. A string of digits
//! and dots is an IPv4 address or nothing: it never becomes a DNS name.

use std::net::IpAddr;

/// A validated subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SubjectName {
    /// Lower-case ASCII host name, possibly starting with `*.`.
    Dns(String),
    Ip(IpAddr),
}

impl SubjectName {
    pub fn is_wildcard(&self) -> bool {
        matches!(self, SubjectName::Dns(d) if d.starts_with("*."))
    }

    /// Whether this certificate name covers server name `want` (RFC 6125:
    /// `*.example.com` covers exactly one more label, never the bare name).
    pub fn covers(&self, want: &SubjectName) -> bool {
        match (self, want) {
            (SubjectName::Ip(a), SubjectName::Ip(b)) => a == b,
            (SubjectName::Dns(have), SubjectName::Dns(want)) => {
                have == want
                    || have.strip_prefix("*.").is_some_and(|suffix| {
                        want.split_once('.')
                            .is_some_and(|(first, rest)| first != "*" && rest == suffix)
                    })
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for SubjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubjectName::Dns(d) => f.write_str(d),
            SubjectName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("domain name is empty")]
    Empty,
    #[error("domain {name:?} is {len} characters long; the limit is 253")]
    TooLong { name: String, len: usize },
    #[error("domain {name:?} has an empty label (leading, trailing or doubled dot)")]
    EmptyLabel { name: String },
    #[error("domain {name:?} has a label longer than 63 characters")]
    LabelTooLong { name: String },
    #[error("domain {name:?} is not ASCII; give internationalized names in punycode (xn--…)")]
    NotPunycode { name: String },
    #[error("domain {name:?} contains {ch:?}; host names may use only letters, digits and '-'")]
    BadCharacter { name: String, ch: char },
    #[error("domain {name:?} has a label that starts or ends with '-'")]
    HyphenEdge { name: String },
    #[error("{name:?} is all digits and dots but not an IPv4 address; give four numbers from 0 to 255 (like 192.0.2.10) or a host name")]
    NumericNotIpv4 { name: String },
    #[error("domain {name:?} ends in the all-numeric label {label:?}; top-level domains are never all digits")]
    NumericTld { name: String, label: String },
    #[error("domain {name:?} has the label {label:?} with \"--\" in positions 3-4; only IDNA A-labels (xn--…) may, give other names without it")]
    ReservedLabel { name: String, label: String },
    #[error("domain {name:?} has the label {label:?}, which is not valid IDNA punycode; convert the Unicode name with an IDNA 2008 tool (e.g. `idn2`)")]
    BadALabel { name: String, label: String },
    #[error("domain {name:?}: a wildcard must be the whole leftmost label of a name with at least two more labels (like *.example.com)")]
    BadWildcard { name: String },
}

/// Parse and normalize one name given by a user or a peer.
pub fn parse(input: &str) -> Result<SubjectName, NameError> {
    if input.is_empty() {
        return Err(NameError::Empty);
    }
    if let Ok(ip) = input.parse::<IpAddr>() {
        return Ok(SubjectName::Ip(ip));
    }
    let name = input.to_string();
    // `999.1.1.1` and `1.2.3` look like addresses to every reader; issuing
    // them as DNS names would put a bogus name in a certificate.
    if input.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(NameError::NumericNotIpv4 { name });
    }
    if !input.is_ascii() {
        return Err(NameError::NotPunycode { name });
    }
    if input.len() > 253 {
        return Err(NameError::TooLong {
            len: input.len(),
            name,
        });
    }
    let lower = input.to_ascii_lowercase();
    let (wildcard, rest) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let labels: Vec<&str> = rest.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(NameError::EmptyLabel { name });
        }
        if label.len() > 63 {
            return Err(NameError::LabelTooLong { name });
        }
        if let Some(ch) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            if ch == '*' {
                return Err(NameError::BadWildcard { name });
            }
            return Err(NameError::BadCharacter { name, ch });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameError::HyphenEdge { name });
        }
        if label.get(2..4) == Some("--") {
            check_reserved_label(&name, label)?;
        }
    }
    if wildcard && labels.len() < 2 {
        return Err(NameError::BadWildcard { name });
    }
    if let Some(tld) = labels
        .last()
        .filter(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(NameError::NumericTld {
            label: (*tld).to_string(),
            name,
        });
    }
    Ok(SubjectName::Dns(lower))
}

/// A label with hyphens in positions 3–4 (an R-LDH label) is allowed only as
/// an A-label: `xn--` followed by Punycode that decodes to a U-label which
/// IDNA maps back to exactly this label (so it is valid and canonical).
fn check_reserved_label(name: &str, label: &str) -> Result<(), NameError> {
    let err = || NameError::BadALabel {
        name: name.to_string(),
        label: label.to_string(),
    };
    let Some(puny) = label.strip_prefix("xn--") else {
        return Err(NameError::ReservedLabel {
            name: name.to_string(),
            label: label.to_string(),
        });
    };
    let unicode = idna::punycode::decode_to_string(puny).ok_or_else(err)?;
    if unicode.is_ascii() {
        return Err(err());
    }
    match idna::domain_to_ascii_strict(&unicode) {
        Ok(again) if again == label => Ok(()),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        assert_eq!(
            parse("WWW.Example.com").unwrap(),
            SubjectName::Dns("www.example.com".into())
        );
        assert_eq!(
            parse("xn--bcher-kva.example").unwrap(),
            SubjectName::Dns("xn--bcher-kva.example".into())
        );
        assert!(parse("*.example.com").unwrap().is_wildcard());
        assert_eq!(
            parse("127.0.0.1").unwrap(),
            SubjectName::Ip("127.0.0.1".parse().unwrap())
        );
        assert!(matches!(parse("::1").unwrap(), SubjectName::Ip(_)));
        assert!(parse("localhost").is_ok());
    }

    #[test]
    fn rejects_malformed_names() {
        assert_eq!(parse(""), Err(NameError::Empty));
        assert!(matches!(parse("a..b"), Err(NameError::EmptyLabel { .. })));
        assert!(matches!(parse(".a.b"), Err(NameError::EmptyLabel { .. })));
        assert!(matches!(parse("a.b."), Err(NameError::EmptyLabel { .. })));
        let long = format!("{}.com", "a.".repeat(126));
        assert!(matches!(parse(&long), Err(NameError::TooLong { .. })));
        let label = format!("{}.com", "a".repeat(64));
        assert!(matches!(parse(&label), Err(NameError::LabelTooLong { .. })));
        assert!(matches!(
            parse("my_host.example.com"),
            Err(NameError::BadCharacter { ch: '_', .. })
        ));
        assert!(matches!(
            parse("bücher.example"),
            Err(NameError::NotPunycode { .. })
        ));
        assert!(matches!(parse("-a.com"), Err(NameError::HyphenEdge { .. })));
        assert!(matches!(parse("*.com"), Err(NameError::BadWildcard { .. })));
        assert!(matches!(
            parse("a.*.com"),
            Err(NameError::BadWildcard { .. })
        ));
        assert!(matches!(
            parse("f*.example.com"),
            Err(NameError::BadWildcard { .. })
        ));
    }

    #[test]
    fn digits_and_dots_are_an_ipv4_address_or_nothing() {
        for bad in [
            "999.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "256.0.0.1",
            "1..2.3",
            "123",
        ] {
            assert!(
                matches!(parse(bad), Err(NameError::NumericNotIpv4 { .. })),
                "{bad}: {:?}",
                parse(bad)
            );
        }
        assert!(matches!(
            parse("host.123"),
            Err(NameError::NumericTld { .. })
        ));
        assert!(matches!(
            parse("*.example.42"),
            Err(NameError::NumericTld { .. })
        ));
        // Digits are fine anywhere but the top-level label.
        assert!(parse("1.2.3.example").is_ok());
        assert!(parse("123.example.com").is_ok());
        let e = parse("999.1.1.1").unwrap_err().to_string();
        assert!(e.contains("not an IPv4 address"), "{e}");
    }

    #[test]
    fn reserved_labels_only_as_valid_a_labels() {
        assert!(parse("xn--bcher-kva.example").is_ok());
        assert!(parse("*.xn--bcher-kva.example").is_ok());
        assert!(parse("www.xn--mnchen-3ya.de").is_ok());
        assert!(matches!(
            parse("ab--cd.example"),
            Err(NameError::ReservedLabel { .. })
        ));
        // Labels that are not Punycode, or whose Punycode IDNA refuses.
        for bad in ["xn--.example", "xn--abc-.example", "xn--a-ecp.example"] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        assert!(matches!(
            parse("xn--abc.example"),
            Err(NameError::BadALabel { .. })
        ));
    }

    #[test]
    fn length_limits_are_exact() {
        let label63 = "a".repeat(63);
        assert!(parse(&format!("{label63}.example")).is_ok());
        // 4 labels of 63 + 3 dots = 255 > 253; 3×63 + 61 + 3 dots = 253.
        let ok = format!("{label63}.{label63}.{label63}.{}", "b".repeat(61));
        assert_eq!(ok.len(), 253);
        assert!(parse(&ok).is_ok());
        let too_long = format!("{ok}c");
        assert!(matches!(parse(&too_long), Err(NameError::TooLong { .. })));
    }

    #[test]
    fn wildcard_coverage() {
        let w = parse("*.example.com").unwrap();
        assert!(w.covers(&parse("www.example.com").unwrap()));
        assert!(!w.covers(&parse("example.com").unwrap()));
        assert!(!w.covers(&parse("a.b.example.com").unwrap()));
        assert!(parse("10.0.0.1")
            .unwrap()
            .covers(&parse("10.0.0.1").unwrap()));
        assert!(!parse("a.test").unwrap().covers(&parse("b.test").unwrap()));
        assert!(!parse("a.test")
            .unwrap()
            .covers(&parse("127.0.0.1").unwrap()));
    }

    #[test]
    fn error_messages_teach() {
        let e = parse("bücher.example").unwrap_err().to_string();
        assert!(e.contains("punycode"), "{e}");
    }
}
