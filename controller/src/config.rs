//! The controller's configuration file (`/etc/certfleet/controller.toml`).
//!
//! Every setting of `certfleet serve` can live here; a command-line flag
//! given as well wins over the file. Unknown keys are errors, and every error
//! names the file and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// `controller.toml`. Every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    pub state_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub crl_listen: Option<SocketAddr>,
    pub crl_url_base: Option<String>,
    pub master_key_file: Option<PathBuf>,
}

impl ControllerConfig {
    pub fn load(path: &Path) -> Result<ControllerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<ControllerConfig, ConfigError> {
        let config: ControllerConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        if let Some(d) = &config.state_dir {
            if !d.is_absolute() {
                return Err(invalid(
                    "state_dir",
                    format!("{} must be an absolute path", d.display()),
                ));
            }
        }
        if let Some(u) = &config.crl_url_base {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(invalid(
                    "crl_url_base",
                    format!("{u:?} must be an http:// URL"),
                ));
            }
        }
        if let Some(m) = &config.master_key_file {
            if !m.is_absolute() {
                return Err(invalid(
                    "master_key_file",
                    format!("{} must be an absolute path", m.display()),
                ));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_controller_config_parses() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/controller.toml"
        ));
        let c = ControllerConfig::load(path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.state_dir.as_deref(),
            Some(Path::new("/var/lib/certfleet"))
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        let p = Path::new("controller.toml");
        let e = ControllerConfig::parse(p, "listen = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("controller.toml") && e.contains("listen"), "{e}");
        let e = ControllerConfig::parse(p, "bogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = ControllerConfig::parse(p, "state_dir = \"relative\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("state_dir"), "{e}");
        assert_eq!(
            ControllerConfig::parse(p, "").unwrap(),
            ControllerConfig::default()
        );
    }
}
