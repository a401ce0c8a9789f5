//! The `certfleet` command line: `serve` runs the controller; every other
//! subcommand is a client of a running controller.

/// Take the expected variant out of a response, or fail with what came.
macro_rules! expect_response {
    ($resp:expr, $variant:ident) => {
        match $resp {
            Response::$variant(v) => v,
            other => bail!("unexpected response from controller: {other:?}"),
        }
    };
}

mod admin;
mod download;
mod inventory;
mod list;
mod output;
mod plan;
mod rollout;
mod rows;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use certfleet_protocol::message::{
    ApplicationInfo, ApplicationState, InstanceSpec, IssuerKind, KeyType, Planned, Request,
    Response, RevocationReason, ValidationType,
};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::client::{Client, Credential};
use certfleet_protocol::list::ListQuery;

/// Rows `audit list` prints without `--limit`: the log only grows.
const DEFAULT_AUDIT_ROWS: u64 = 100;

use crate::server::{self, ServeOptions};
use output::Output;

const AFTER_HELP: &str = "\
Quick start:
  certfleet serve --dev                 # throwaway controller; prints the two exports below
  export CERTFLEET_CONTROLLER=127.0.0.1:7443
  export CERTFLEET_CREDENTIAL=/tmp/certfleet-dev-…/admin.credential
  certfleet instance create --issuer dev --domains 2
  certfleet cert apply --instance inst-… --domain www.example.test --wait
  certfleet cert download cert-… --out ./tls";

/// certfleet: TLS certificates from purchase to revocation, across a fleet.
#[derive(Debug, Parser)]
#[command(
    name = "certfleet",
    version,
    after_help = AFTER_HELP,
    propagate_version = true,
    args_override_self = true
)]
pub struct Cli {
    /// Controller address (host:port of `certfleet serve`).
    #[arg(
        long,
        global = true,
        env = "CERTFLEET_CONTROLLER",
        default_value = "127.0.0.1:7443"
    )]
    pub controller: String,
    /// Admin credential file (`certfleet serve` writes the first one as
    /// <state-dir>/admin.credential; `certfleet admin create` makes one per
    /// operator).
    #[arg(long, global = true, env = "CERTFLEET_CREDENTIAL")]
    pub credential: Option<PathBuf>,
    /// Output format. JSON is documented in docs/cli.md and stable.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller.
    ///
    /// Each setting is taken from the first of: its flag, its environment
    /// variable (shown as [env: …] below; systemd sets them from
    /// /etc/default/certfleet or /etc/sysconfig/certfleet), the --config
    /// file (controller.toml), the built-in default.
    Serve(ServeArgs),
    /// Certificate authorities to apply to.
    #[command(subcommand)]
    Issuer(IssuerCmd),
    /// Purchased certificate slots.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// Apply for, inspect, download and revoke certificates.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Applications to a CA.
    #[command(subcommand)]
    Application(ApplicationCmd),
    /// Issuers' roots and revocation lists.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Who did what, when.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Enrolled agents and join tokens.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Operators' admin credentials: create, list, renew, revoke.
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// Install a certificate on agents' targets (follows its renewals).
    Deploy(DeployArgs),
    /// Where certificates are deployed and how the installs went.
    #[command(subcommand)]
    Deployment(DeploymentCmd),
    /// Rollouts of certificates across the fleet, in waves.
    #[command(subcommand)]
    Rollout(rollout::RolloutCmd),
    /// The fleet on one screen: agents, certificates, expiries, renewals,
    /// rollouts.
    Status,
    /// Certificates the agents found in use on their hosts, managed or not;
    /// adopt them into certfleet.
    #[command(subcommand)]
    Inventory(inventory::InventoryCmd),
    /// Print a shell completion script (`source <(certfleet completion bash)`).
    Completion {
        #[arg(value_enum)]
        shell: certfleet_agent::manual::Shell,
    },
    /// Write the man pages (one per subcommand) into a directory.
    Man {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Join tokens for `certfleet-agent enroll`.
    #[command(subcommand)]
    Token(TokenCmd),
    /// List enrolled agents, by id.
    List(list::ListArgs),
    /// Show one agent.
    Show {
        /// Agent id or unique name.
        id: String,
    },
    /// Remove an agent: its identity is refused at once, even on a live
    /// connection, and its deployments are dropped.
    Remove {
        /// Agent id or unique name.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a join token. Prints the token and the identity CA pin that
    /// `certfleet-agent enroll --token T --ca-pin P` needs.
    Create {
        /// Labels given to every agent enrolled with this token (k=v,k2=v2).
        #[arg(long, default_value = "")]
        labels: String,
        /// How long the token stays valid (e.g. 15m, 1h, 7d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Bring back agent AGENT (id or unique name), e.g. after its
        /// identity expired while it was offline: a single-use token that
        /// gives it a new identity with the same id, labels and deployments,
        /// used with `certfleet-agent enroll --reenroll`.
        #[arg(long, value_name = "AGENT", conflicts_with_all = ["labels", "uses"])]
        reenroll: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Certificate id.
    pub certificate: String,
    /// Which agents: labels (role=web,env=prod), or one agent by id or
    /// unique name (agent=web-1).
    #[arg(long = "to")]
    pub selector: String,
    /// Target name, as declared in the agents' configs.
    #[arg(long)]
    pub target: String,
    #[command(flatten)]
    pub strategy: rollout::StrategyArgs,
    /// Wait until the rollout completes, halts or is aborted.
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// Print the rollout that would start (targets, waves) or why it would
    /// be refused, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum DeploymentCmd {
    /// List deployments: desired vs installed certificate, status, last error.
    List {
        /// Only deployments of this certificate (or its lineage).
        #[arg(long)]
        cert: Option<String>,
        /// Only deployments on this agent (id or unique name).
        #[arg(long)]
        agent: Option<String>,
        /// Only deployments at risk of serving an expired certificate, soonest
        /// expiry first, with the reason and since when (JSON rows:
        /// AtRiskItem).
        #[arg(long, conflicts_with_all = ["cert", "agent"])]
        at_risk: bool,
        #[command(flatten)]
        page: list::ListArgs,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Settings file (/etc/certfleet/controller.toml).
    #[arg(long, env = "CERTFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the database, master key and admin credential
    /// (created with mode 0700).
    #[arg(long, env = "CERTFLEET_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// QUIC address for admins and agents [default: 127.0.0.1:7443].
    #[arg(long, env = "CERTFLEET_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Plain-HTTP address that serves CRLs [default: 127.0.0.1:7480].
    #[arg(long, env = "CERTFLEET_CRL_LISTEN")]
    pub crl_listen: Option<SocketAddr>,
    /// URL base written into certificates' CRL distribution point
    /// [default: http://<crl-listen>].
    #[arg(long, env = "CERTFLEET_CRL_URL_BASE")]
    pub crl_url_base: Option<String>,
    /// Master key file [default: <state-dir>/master.key, created at first
    /// start]. Also read from $CREDENTIALS_DIRECTORY/master.key under systemd.
    #[arg(long, env = "CERTFLEET_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Throwaway controller: temporary state (mode 0700), a built-in issuer
    /// named `dev`; prints how to point the CLI at it. Everything is deleted
    /// on exit.
    #[arg(long, conflicts_with_all = ["state_dir", "config"])]
    pub dev: bool,
}

#[derive(Debug, Subcommand)]
pub enum IssuerCmd {
    /// Add an issuer. `builtin` creates a private root and issuing CA;
    /// `acme` registers (or finds) an account at an RFC 8555 CA.
    Add {
        /// Name used by `instance create --issuer`.
        name: String,
        /// Kind of CA: `builtin` (a private root and issuing CA kept by the
        /// controller) or `acme`.
        #[arg(long, value_parser = parse_named::<IssuerKind>)]
        kind: IssuerKind,
        /// Key type of the CA certificates (builtin).
        #[arg(long, default_value = "ecdsa-p256", value_parser = parse_named::<KeyType>)]
        key: KeyType,
        #[command(flatten)]
        acme: Box<AcmeArgs>,
    },
    /// List issuers, by name.
    List(list::ListArgs),
    /// Show one issuer (for ACME: directory, account URL, default challenge).
    Show { name: String },
}

/// Settings of an ACME issuer.
#[derive(Debug, Args)]
pub struct AcmeArgs {
    /// ACME directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory.
    #[arg(long, required_if_eq("kind", "acme"))]
    pub directory: Option<String>,
    /// Account contact (mailto:…); repeat for more.
    #[arg(long)]
    pub contact: Vec<String>,
    /// External Account Binding key id (CAs such as ZeroSSL or Google).
    #[arg(long, requires = "eab_hmac_key")]
    pub eab_kid: Option<String>,
    /// External Account Binding HMAC key (base64url, as the CA gives it).
    #[arg(long, requires = "eab_kid")]
    pub eab_hmac_key: Option<String>,
    /// PEM file of the CA that signs the ACME server's HTTPS certificate,
    /// for private ACME servers.
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
    /// Challenge used when `cert apply` names none.
    #[arg(long, default_value = "http-01", value_parser = ["http-01", "dns-01"])]
    pub challenge: String,
    /// DNS-01: the zone's authoritative server for RFC 2136 updates (host:port).
    #[arg(long, requires_all = ["dns_zone", "tsig_name", "tsig_secret_file"])]
    pub dns_server: Option<String>,
    /// DNS-01: the zone the challenge records go in.
    #[arg(long)]
    pub dns_zone: Option<String>,
    /// DNS-01: TSIG key name.
    #[arg(long)]
    pub tsig_name: Option<String>,
    /// DNS-01: TSIG algorithm.
    #[arg(long, default_value = "hmac-sha256")]
    pub tsig_algorithm: String,
    /// DNS-01: file holding the TSIG secret (base64, first line).
    #[arg(long)]
    pub tsig_secret_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum InstanceCmd {
    /// Purchase an instance: a slot for one certificate with a fixed spec.
    Create {
        /// Issuer to apply to (see `certfleet issuer list`).
        #[arg(long)]
        issuer: String,
        /// Validation level.
        #[arg(long = "type", default_value = "dv", value_parser = parse_named::<ValidationType>)]
        validation: ValidationType,
        /// Most names the certificate may carry.
        #[arg(long, default_value_t = 1)]
        domains: u32,
        /// Allow wildcard names (*.example.com).
        #[arg(long)]
        wildcard: bool,
        /// Certificate lifetime in days.
        #[arg(long, default_value_t = 365)]
        validity_days: u32,
        /// Key type of the certificate.
        #[arg(long, default_value = "ecdsa-p256", value_parser = parse_named::<KeyType>)]
        key: KeyType,
        /// Renew this many days before expiry [default: 30, at most a third
        /// of the lifetime].
        #[arg(long)]
        renew_before_days: Option<u32>,
        /// Issuer renewals fall back to when the primary keeps failing or
        /// rate-limits; repeat for more, tried in order.
        #[arg(long = "fallback-issuer", value_name = "ISSUER")]
        fallback_issuers: Vec<String>,
        /// How long applications to an issuer may fail before renewals
        /// switch to the next one, e.g. 30m, 2h, 1d [default: 1h].
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        fallback_after: Option<Duration>,
    },
    /// List instances, by id.
    List(list::ListArgs),
    /// Show one instance.
    Show { id: String },
}

#[derive(Debug, Subcommand)]
pub enum CertCmd {
    /// Apply to the instance's CA for a certificate.
    Apply {
        /// Instance id (from `certfleet instance create`).
        #[arg(long)]
        instance: String,
        /// A DNS name (IDN in punycode), a wildcard (*.example.com) or an IP
        /// address; repeat for more.
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// How an ACME CA should validate the names [default: the issuer's].
        #[arg(long, value_parser = ["http-01", "dns-01"])]
        challenge: Option<String>,
        /// Wait until the application is issued or failed.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (e.g. 90s, 5m).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// List certificates, soonest expiry first (PEMs are in `cert show` and
    /// `cert download`).
    List {
        /// Only certificates in service that expire within this period
        /// (e.g. 30d, 12h).
        #[arg(long, value_parser = humantime::parse_duration)]
        expiring_within: Option<Duration>,
        /// Only certificates served by a deployment at risk, with the
        /// reason and since when (JSON rows: AtRiskCertificate).
        #[arg(long, conflicts_with = "expiring_within")]
        at_risk: bool,
        #[command(flatten)]
        page: list::ListArgs,
    },
    /// Show one certificate.
    Show { id: String },
    /// Write a certificate and its private key to a directory.
    Download {
        id: String,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// pem: cert.pem, chain.pem, fullchain.pem, root.pem, privkey.pem
        /// (0600). pkcs12: cert.p12 (0600).
        #[arg(long, value_enum, default_value_t = download::BundleFormat::Pem)]
        format: download::BundleFormat,
        /// File holding the PKCS#12 password (first line).
        #[arg(long, required_if_eq("format", "pkcs12"))]
        password_file: Option<PathBuf>,
    },
    /// Revoke a certificate at its CA. Refused while the certificate is
    /// still installed or being rolled out anywhere, unless --force.
    Revoke {
        id: String,
        /// RFC 5280 reason: `unspecified`, `keyCompromise`, `superseded`,
        /// `cessationOfOperation` or `affiliationChanged`.
        #[arg(long, value_parser = parse_named::<RevocationReason>)]
        reason: RevocationReason,
        /// Revoke even though servers still use it.
        #[arg(long)]
        force: bool,
        /// Print what would be revoked, or why it would be refused, and
        /// change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Renew a certificate now (renewal is otherwise automatic) and roll
    /// the new one out wherever the lineage is deployed.
    Renew {
        id: String,
        /// Print the application that would start, or why it would be
        /// refused, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApplicationCmd {
    /// Show one application.
    Show { id: String },
}

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Print the root and issuing chain (PEM) of an issuer, to trust its
    /// certificates. Releases no key.
    Root {
        /// Issuer name; may be omitted when there is only one.
        #[arg(long)]
        issuer: Option<String>,
        /// Write the PEM bundle (root, then chain) to this file instead.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write an issuer's current CRL to a file.
    Crl {
        /// File to write the CRL to.
        #[arg(long)]
        out: PathBuf,
        /// Issuer name; may be omitted when there is only one.
        #[arg(long)]
        issuer: Option<String>,
        #[arg(long, value_enum, default_value_t = download::CrlFormat::Der)]
        format: download::CrlFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Audit entries, newest first: the newest 100 unless --limit says
    /// how many.
    List(list::ListArgs),
}

fn parse_named<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T, String> {
    s.parse()
}

/// Build the request for `issuer add --kind acme`, reading the files it names.
fn acme_request(name: String, a: AcmeArgs) -> anyhow::Result<Request> {
    let directory = a
        .directory
        .ok_or_else(|| anyhow!("--kind acme needs --directory URL"))?;
    let ca_bundle_pem = a
        .ca_bundle
        .map(|p| {
            std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read --ca-bundle {}", p.display()))
        })
        .transpose()?;
    let dns = match a.dns_server {
        Some(server) => {
            let path = a
                .tsig_secret_file
                .ok_or_else(|| anyhow!("--dns-server needs --tsig-secret-file"))?;
            let secret = download::read_password(&path)?;
            Some(certfleet_protocol::message::DnsUpdateSpec {
                server,
                zone: a.dns_zone.unwrap_or_default(),
                tsig_name: a.tsig_name.unwrap_or_default(),
                tsig_algorithm: a.tsig_algorithm,
                tsig_secret: certfleet_protocol::Secret::from(secret.to_string()),
            })
        }
        None => None,
    };
    Ok(Request::IssuerAddAcme {
        name,
        directory,
        contact: a.contact,
        eab_kid: a.eab_kid,
        eab_hmac_key: a.eab_hmac_key.map(certfleet_protocol::Secret::from),
        ca_bundle_pem,
        default_challenge: a.challenge,
        dns,
    })
}

/// Run the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = Output::new(cli.output);
    match cli.command {
        Command::Serve(args) => serve(args).await,
        // Neither needs a controller: they describe this binary.
        Command::Completion { shell } => {
            let mut stdout = std::io::stdout().lock();
            certfleet_agent::manual::completion(shell, &Cli::command(), &mut stdout);
            Ok(())
        }
        Command::Man { out: dir } => {
            // The agent binary's own page is `certfleet-agent.1`; the
            // `certfleet agent` group page would take its name.
            let mut taken =
                std::collections::BTreeSet::from([certfleet_agent::manual::AGENT_PAGE.to_owned()]);
            let written =
                certfleet_agent::manual::write_man_pages(&Cli::command(), &dir, &mut taken)?;
            out.files(&dir, &written)
        }
        Command::Admin(cmd) => {
            let credential = cli.credential.as_deref();
            let controller = cli.controller.as_str();
            admin::run(cmd, credential, || connect(controller, credential), &out).await
        }
        command => {
            let client = connect(&cli.controller, cli.credential.as_deref()).await?;
            let r = client_command(&client, command, &out).await;
            client.close();
            r
        }
    }
}

/// Poll an application until it is no longer in flight, or fail at
/// `deadline` (`timeout` is what the message says was waited).
async fn wait_application(
    client: &Client,
    mut app: ApplicationInfo,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> anyhow::Result<ApplicationInfo> {
    while app.state.in_flight() {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "application {} is still {} after {}; follow it with \
                 `certfleet application show {}`",
                app.id,
                app.state,
                humantime::format_duration(timeout),
                app.id
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = client
            .call(&Request::ApplicationShow { id: app.id.clone() })
            .await?;
        app = expect_response!(r, Application);
    }
    Ok(app)
}

async fn connect(controller: &str, credential: Option<&std::path::Path>) -> anyhow::Result<Client> {
    let Some(path) = credential else {
        bail!(
            "no credential: pass --credential FILE or set CERTFLEET_CREDENTIAL \
             (the controller writes <state-dir>/admin.credential at first start)"
        );
    };
    let cred = Credential::load(path)?;
    admin::check_credential(path, &cred, crate::clock::from_env().now())?;
    let addr = resolve(controller).await?;
    Client::open(addr, &cred).await
}

async fn resolve(controller: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = controller.parse() {
        return Ok(a);
    }
    tokio::net::lookup_host(controller)
        .await
        .with_context(|| {
            format!("cannot resolve controller address {controller:?} (expected HOST:PORT)")
        })?
        .next()
        .ok_or_else(|| anyhow!("controller address {controller:?} resolves to nothing"))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => crate::config::ControllerConfig::load(path)?,
        None => crate::config::ControllerConfig::default(),
    };
    let master_key_file = args.master_key_file.or(file.master_key_file).or_else(|| {
        let p = PathBuf::from(std::env::var_os("CREDENTIALS_DIRECTORY")?).join("master.key");
        p.exists().then_some(p)
    });
    let state_dir = args.state_dir.or(file.state_dir);
    if state_dir.is_none() && !args.dev {
        bail!(
            "no state directory: pass --state-dir DIR (or state_dir in --config FILE), or \
             --dev for a throwaway controller"
        );
    }
    let mut opts = ServeOptions {
        state_dir: state_dir.unwrap_or_default(),
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7443))),
        crl_listen: args
            .crl_listen
            .or(file.crl_listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7480))),
        crl_url_base: args.crl_url_base.or(file.crl_url_base),
        master_key_file,
    };
    let clock = crate::clock::from_env();
    if !args.dev {
        return server::run(opts, clock, shutdown_signal()).await;
    }
    // 0700 from the start: the directory holds the master key and the admin
    // credential, and the state-directory check warns about anything wider.
    let dir = tempfile::Builder::new()
        .prefix("certfleet-dev-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .context("cannot create a temporary state directory")?;
    opts.state_dir = dir.path().to_path_buf();
    let running = server::start(opts, clock).await?;
    running
        .service
        .issuer_add(
            "controller".into(),
            "dev".into(),
            IssuerKind::Builtin,
            KeyType::EcdsaP256,
        )
        .await
        .map_err(|e| anyhow!("cannot create the dev issuer: {}", e.to_rpc().message))?;
    let credential = dir.path().join(server::ADMIN_CREDENTIAL_FILE);
    let files_dir = dir.path().join("files");
    let agent = dev_agent(&running, dir.path()).await?;
    println!(
        "certfleet dev controller listening on {listen} (QUIC), CRLs on {crl}.\n\
         State lives in {state} and is deleted when this process exits.\n\
         A built-in issuer named \"dev\" is ready, and an in-process agent ({agent}, labels\n\
         role=dev) with a `files` target that writes into {files}.\n\n\
         Point the CLI at it (in another shell):\n\n    \
         export CERTFLEET_CONTROLLER={listen}\n    \
         export CERTFLEET_CREDENTIAL={cred}\n\n\
         Then walk the lifecycle:\n\n    \
         certfleet instance create --issuer dev --domains 2\n    \
         certfleet cert apply --instance <instance id> --domain www.example.test --domain 127.0.0.1 --wait\n    \
         certfleet deploy <certificate id> --to role=dev --target files --wait\n    \
         certfleet deployment list\n\n\
         Press Ctrl-C to stop.",
        listen = running.runtime.listen,
        crl = running.runtime.crl_listen,
        state = dir.path().display(),
        cred = credential.display(),
        files = files_dir.display(),
    );
    shutdown_signal().await;
    running.stop().await;
    drop(dir);
    Ok(())
}

/// Enroll and start the dev controller's in-process agent, with one
/// `files` target under `<dev dir>/files`.
async fn dev_agent(running: &server::Running, dir: &std::path::Path) -> anyhow::Result<String> {
    let files = dir.join("files");
    std::fs::create_dir_all(&files)?;
    let toml = format!(
        "controller = \"{listen}\"\nstate_dir = \"{state}\"\nname = \"dev-agent\"\n\
         allowed_dirs = [\"{files}\"]\n[labels]\nrole = \"dev\"\n\
         [[target]]\nname = \"files\"\nkind = \"files\"\n\
         fullchain = \"{files}/fullchain.pem\"\ncert = \"{files}/cert.pem\"\n\
         chain = \"{files}/chain.pem\"\nkey = \"{files}/privkey.pem\"\n",
        listen = running.runtime.listen,
        state = dir.join("agent").display(),
        files = files.display(),
    );
    let config_path = dir.join("agent.toml");
    std::fs::write(&config_path, &toml)?;
    let config = certfleet_agent::config::Config::parse(&config_path, &toml)?;
    let token = running
        .service
        .token_create(
            "controller".into(),
            vec![("role".into(), "dev".into())],
            600,
            1,
        )
        .await
        .map_err(|e| {
            anyhow!(
                "cannot create the dev agent's token: {}",
                e.to_rpc().message
            )
        })?;
    let agent = certfleet_agent::session::enroll(
        &config,
        &running.runtime.listen.to_string(),
        token.token,
        &token.ca_pin,
        false,
    )
    .await
    .context("cannot enroll the dev agent")?;
    tokio::spawn(async move {
        if let Err(e) = certfleet_agent::session::run(config, std::future::pending()).await {
            tracing::warn!(error = %format!("{e:#}"), "dev agent stopped");
        }
    });
    Ok(agent)
}

async fn client_command(client: &Client, command: Command, out: &Output) -> anyhow::Result<()> {
    match command {
        Command::Serve(_)
        | Command::Completion { .. }
        | Command::Man { .. }
        | Command::Admin(_) => {
            unreachable!("serve, completion, man and admin are handled before connecting")
        }
        Command::Issuer(IssuerCmd::Add {
            name,
            kind,
            key,
            acme,
        }) => {
            let request = match kind {
                IssuerKind::Builtin => Request::IssuerAdd { name, kind, key },
                IssuerKind::Acme => acme_request(name, *acme)?,
            };
            let r = client.call(&request).await?;
            out.issuer(&expect_response!(r, Issuer))
        }
        Command::Issuer(IssuerCmd::Show { name }) => {
            let r = client.call(&Request::IssuerShow { name }).await?;
            out.issuer(&expect_response!(r, Issuer))
        }
        Command::Issuer(IssuerCmd::List(page)) => {
            list::stream(client, out.format(), ListQuery::Issuers, &page).await
        }
        Command::Instance(InstanceCmd::Create {
            issuer,
            validation,
            domains,
            wildcard,
            validity_days,
            key,
            renew_before_days,
            fallback_issuers,
            fallback_after,
        }) => {
            let r = client
                .call(&Request::InstanceCreate(InstanceSpec {
                    issuer,
                    validation,
                    max_domains: domains,
                    wildcard,
                    validity_days,
                    key,
                    renew_before_days,
                    fallback_issuers,
                    fallback_after_secs: fallback_after.map(|d| d.as_secs()),
                }))
                .await?;
            out.instance(&expect_response!(r, Instance))
        }
        Command::Instance(InstanceCmd::List(page)) => {
            list::stream(client, out.format(), ListQuery::Instances, &page).await
        }
        Command::Instance(InstanceCmd::Show { id }) => {
            let r = client.call(&Request::InstanceShow { id }).await?;
            out.instance(&expect_response!(r, Instance))
        }
        Command::Cert(CertCmd::Apply {
            instance,
            domains,
            challenge,
            wait,
            timeout,
        }) => {
            let request = match challenge {
                None => Request::CertApply { instance, domains },
                Some(c) => Request::CertApplyChallenge {
                    instance,
                    domains,
                    challenge: Some(c),
                },
            };
            let r = client.call(&request).await?;
            let mut app = expect_response!(r, Application);
            if wait {
                let deadline = tokio::time::Instant::now() + timeout;
                app = wait_application(client, app, deadline, timeout).await?;
            }
            out.application(&app)?;
            if app.state == ApplicationState::Failed {
                bail!(
                    "application {} failed: {}",
                    app.id,
                    app.last_error.as_deref().unwrap_or("no reason given")
                );
            }
            Ok(())
        }
        Command::Application(ApplicationCmd::Show { id }) => {
            let r = client.call(&Request::ApplicationShow { id }).await?;
            out.application(&expect_response!(r, Application))
        }
        Command::Cert(CertCmd::List {
            at_risk: true,
            page,
            ..
        }) => list::stream(client, out.format(), ListQuery::AtRiskCertificates, &page).await,
        Command::Cert(CertCmd::List {
            expiring_within,
            page,
            at_risk: false,
        }) => {
            let secs = expiring_within.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let query = ListQuery::Certificates {
                expiring_within_secs: secs,
            };
            list::stream(client, out.format(), query, &page).await
        }
        Command::Cert(CertCmd::Show { id }) => {
            let r = client.call(&Request::CertShow { id }).await?;
            out.cert(&expect_response!(r, Certificate))
        }
        Command::Cert(CertCmd::Download {
            id,
            out: dir,
            format,
            password_file,
        }) => {
            // Read the password before the key is released, so a missing
            // password file fails without an audit entry for nothing.
            let password = match (&format, &password_file) {
                (download::BundleFormat::Pkcs12, Some(p)) => Some(download::read_password(p)?),
                _ => None,
            };
            let r = client.call(&Request::CertDownload { id }).await?;
            let bundle = expect_response!(r, Bundle);
            let files = download::write_bundle(
                &bundle,
                &dir,
                format,
                password.as_ref().map(|p| p.as_str()),
            )?;
            out.files(&dir, &files)
        }
        Command::Cert(CertCmd::Revoke {
            id,
            reason,
            force,
            dry_run: true,
        }) => plan::run(client, Planned::CertRevoke { id, reason, force }, out).await,
        Command::Cert(CertCmd::Renew { id, dry_run: true }) => {
            plan::run(client, Planned::CertRenew { id }, out).await
        }
        Command::Cert(CertCmd::Revoke {
            id,
            reason,
            force,
            dry_run: false,
        }) => {
            let request = if force {
                Request::CertRevokeForced { id, reason }
            } else {
                Request::CertRevoke { id, reason }
            };
            let r = client.call(&request).await?;
            out.cert(&expect_response!(r, Certificate))
        }
        Command::Cert(CertCmd::Renew { id, dry_run: false }) => {
            let r = client.call(&Request::CertRenew { id }).await?;
            out.application(&expect_response!(r, Application))
        }
        Command::Rollout(cmd) => rollout::run(client, cmd, out).await,
        Command::Inventory(cmd) => inventory::run(client, cmd, out).await,
        Command::Status => {
            let r = client.call(&Request::Status).await?;
            out.status(&expect_response!(r, Status))
        }
        Command::Ca(CaCmd::Root { issuer, out: file }) => {
            let r = client.call(&Request::CaRoot { issuer }).await?;
            let root = expect_response!(r, CaRoot);
            download::write_ca_root(&root, file.as_deref(), out)
        }
        Command::Ca(CaCmd::Crl {
            out: path,
            issuer,
            format,
        }) => {
            let r = client.call(&Request::CaCrl { issuer }).await?;
            let crl = expect_response!(r, Crl);
            download::write_crl(&crl.der, &path, format)?;
            out.files(
                path.parent().unwrap_or(std::path::Path::new(".")),
                std::slice::from_ref(&path),
            )
        }
        Command::Audit(AuditCmd::List(mut page)) => {
            page.limit = page.limit.or(Some(DEFAULT_AUDIT_ROWS));
            list::stream(client, out.format(), ListQuery::Audit, &page).await
        }
        Command::Agent(AgentCmd::Token(TokenCmd::Create {
            reenroll: Some(agent),
            ttl,
            ..
        })) => {
            let r = client
                .call(&Request::TokenCreateReenroll {
                    agent: agent.clone(),
                    ttl_secs: ttl.as_secs(),
                })
                .await?;
            out.reenroll_token(&agent, &expect_response!(r, Token))
        }
        Command::Agent(AgentCmd::Token(TokenCmd::Create {
            labels,
            ttl,
            uses,
            reenroll: None,
        })) => {
            let labels =
                crate::fleet::parse_labels(&labels).map_err(|e| anyhow!("--labels: {e}"))?;
            let r = client
                .call(&Request::TokenCreate {
                    labels,
                    ttl_secs: ttl.as_secs(),
                    uses,
                })
                .await?;
            out.token(&expect_response!(r, Token))
        }
        Command::Agent(AgentCmd::List(page)) => {
            list::stream(client, out.format(), ListQuery::Agents, &page).await
        }
        Command::Agent(AgentCmd::Show { id }) => {
            let r = client.call(&Request::AgentShow { id }).await?;
            out.agent(&expect_response!(r, Agent))
        }
        Command::Agent(AgentCmd::Remove { id }) => {
            let r = client.call(&Request::AgentRemove { id }).await?;
            out.agent(&expect_response!(r, Agent))
        }
        Command::Deploy(args) if args.dry_run => {
            let planned = Planned::Deploy {
                certificate: args.certificate,
                selector: args.selector,
                target: args.target,
                strategy: args.strategy.spec(),
            };
            plan::run(client, planned, out).await
        }
        Command::Deploy(args) => {
            let r = client
                .call(&Request::DeployRollout {
                    certificate: args.certificate.clone(),
                    selector: args.selector,
                    target: args.target.clone(),
                    strategy: args.strategy.spec(),
                })
                .await?;
            let rollout = expect_response!(r, Rollout);
            if args.wait {
                rollout::wait(client, &rollout.id, args.timeout, out).await
            } else {
                out.rollout(&rollout)
            }
        }
        Command::Deployment(DeploymentCmd::List {
            at_risk: true,
            page,
            ..
        }) => list::stream(client, out.format(), ListQuery::AtRiskDeployments, &page).await,
        Command::Deployment(DeploymentCmd::List {
            cert,
            agent,
            page,
            at_risk: false,
        }) => {
            let query = ListQuery::Deployments {
                certificate: cert,
                agent,
            };
            list::stream(client, out.format(), query, &page).await
        }
    }
}
