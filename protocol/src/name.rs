//! Names a certificate may carry: DNS host names (optionally a wildcard) and
//! IP addresses. Validation is shared by the CLI, the controller and the
//! agent so that all three reject the same inputs with the same words.

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
    }
    if wildcard && labels.len() < 2 {
        return Err(NameError::BadWildcard { name });
    }
    Ok(SubjectName::Dns(lower))
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
