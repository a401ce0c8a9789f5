//! The `certfleet-agent` command line, kept in the library so that the
//! packaging generator (`packaging/gen`) can render man pages and shell
//! completions from the same definitions the binary parses.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// certfleet-agent: installs the certificates the controller deploys to this
/// host, proves they are served, and rolls back when they are not.
#[derive(Debug, Parser)]
#[command(name = "certfleet-agent", version)]
pub struct Cli {
    /// Output format of `status` and `discover`, as `certfleet --output`.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

/// What `--output` selects; the same names as the `certfleet` CLI's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Text for people.
    #[value(alias = "text")]
    Table,
    /// JSON for scripts.
    Json,
}

/// The agent's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll this host with a join token from `certfleet agent token create`.
    Enroll {
        /// Controller address, host:port [default: `controller` in the config].
        #[arg(long)]
        controller: Option<String>,
        /// Join token (cfjt1.…).
        #[arg(long, env = "CERTFLEET_JOIN_TOKEN")]
        token: String,
        /// The identity CA pin printed with the token (sha256:…); enrollment
        /// aborts before sending the token if the controller does not match.
        #[arg(long)]
        ca_pin: String,
        #[arg(long, default_value = "/etc/certfleet/agent.toml")]
        config: PathBuf,
        /// Replace this host's identity files. With a token from `certfleet
        /// agent token create --reenroll AGENT` (identity expired or lost)
        /// the agent keeps its id, labels and deployments; with an ordinary
        /// token (the agent was removed) the host enrolls as a new agent.
        #[arg(long)]
        reenroll: bool,
    },
    /// Run the agent.
    Run {
        #[arg(long, default_value = "/etc/certfleet/agent.toml")]
        config: PathBuf,
    },
    /// Show each target's installed certificate and last result.
    Status {
        #[arg(long, default_value = "/etc/certfleet/agent.toml")]
        config: PathBuf,
        /// Same as `--output json` (kept for older scripts).
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Check a config file and exit: syntax, every key of every target
    /// (kinds apache, haproxy, nginx, files, pkcs12), paths inside
    /// `allowed_dirs`, hook argv and timeouts, and that each pkcs12
    /// `password_file` is readable now. Errors name the file and the key.
    CheckConfig {
        #[arg(long, default_value = "/etc/certfleet/agent.toml")]
        config: PathBuf,
    },
    /// Scan this host for certificates in use, as the running agent does
    /// for `certfleet inventory` (the `[discovery]` section), and print what
    /// it would report. Needs no controller.
    Discover {
        #[arg(long, default_value = "/etc/certfleet/agent.toml")]
        config: PathBuf,
        /// Same as `--output json` (kept for older scripts).
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Print a shell completion script
    /// (`source <(certfleet-agent completion bash)`).
    Completion {
        #[arg(value_enum)]
        shell: crate::manual::Shell,
    },
    /// Write the man pages (one per subcommand) into a directory.
    Man {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}
