//! Harnesses for the text the agent parses: its own config file and the
//! server configurations discovery reads (`nginx -T` output, Apache config
//! files and `-D DUMP_INCLUDES` output, HAProxy configs and crt-lists).
//! These come from files on the host, which a local user or a package may
//! have written; they must give an error or a result, never a panic, and
//! the same text must always give the same result.

use std::path::Path;

use certfleet_agent::config::{Config, ConfigError};
use certfleet_agent::discovery::parse;

/// Input bytes as text, the way the agent reads a file (lossy: a config
/// with invalid UTF-8 is refused by `read_to_string` before it is parsed).
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// `Config::parse`: an error names the config file; a parsed config finds
/// each of its targets by name.
pub fn agent_config(data: &[u8]) {
    let Some(text) = text(data) else {
        return;
    };
    let path = Path::new("/etc/certfleet/agent.toml");
    match Config::parse(path, text) {
        Ok(config) => {
            for t in &config.targets {
                assert!(config.target(&t.name).is_some(), "target {} lost", t.name);
                assert!(!t.name.is_empty(), "a target without a name");
            }
            assert!(config.state_dir.is_absolute());
        }
        Err(e) => {
            match &e {
                ConfigError::Parse { path: p, .. } | ConfigError::Invalid { path: p, .. } => {
                    assert_eq!(p, path)
                }
                ConfigError::Read { .. } => panic!("parse read a file: {e}"),
            }
            assert!(e.to_string().contains("/etc/certfleet/agent.toml"));
        }
    }
}

/// `nginx -T` output: the references come out sorted and without
/// duplicates, the same for the same text.
pub fn nginx(data: &[u8]) {
    let Some(text) = text(data) else {
        return;
    };
    let refs = parse::parse_nginx_dump(text);
    assert!(
        refs.windows(2).all(|w| w[0] < w[1]),
        "not sorted and unique"
    );
    assert_eq!(refs, parse::parse_nginx_dump(text));
    let _ = parse::nginx_dump_files(text);
}

/// An Apache config file and `apache2 -t -D DUMP_INCLUDES` output.
pub fn apache(data: &[u8]) {
    let Some(text) = text(data) else {
        return;
    };
    let root = parse::apache_server_root(text);
    let base = Path::new("/srv/apache");
    let refs = parse::parse_apache_config(text, base);
    assert_eq!(refs, parse::parse_apache_config(text, base));
    if let Some(root) = root {
        let _ = parse::parse_apache_config(text, Path::new(&root));
    }
    let includes = parse::parse_apache_includes(text);
    assert!(includes.iter().all(|p| !p.is_empty()));
}

/// An HAProxy config and a crt-list: paths relative to the base directory
/// come out under it.
pub fn haproxy(data: &[u8]) {
    let Some(text) = text(data) else {
        return;
    };
    let dir = Path::new("/etc/haproxy");
    let refs = parse::parse_haproxy_config(text, dir);
    assert_eq!(refs, parse::parse_haproxy_config(text, dir));
    for r in refs.crt.iter().chain(&refs.crt_lists) {
        assert!(!r.path.is_empty());
    }
    let base = Path::new("/base");
    for p in parse::parse_crt_list(text, base) {
        assert!(!p.is_empty());
    }
}
