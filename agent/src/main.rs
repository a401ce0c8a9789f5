use std::process::ExitCode;

use certfleet_agent::cli::{Cli, Command, Format};
use certfleet_agent::config::Config;
use certfleet_agent::state::AgentState;
use certfleet_agent::transport::AgentRemoved;
use certfleet_agent::{identity::Identity, session};
use clap::{CommandFactory, Parser};

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn main_async(cli: Cli) -> anyhow::Result<()> {
    let as_json = cli.output == Format::Json;
    // `--output json`, or the hidden `--json` older scripts pass.
    let json = |legacy: bool| legacy || as_json;
    match cli.command {
        Command::Enroll {
            controller,
            token,
            ca_pin,
            config,
            reenroll,
        } => {
            let config = Config::load(&config)?;
            let controller = controller.unwrap_or_else(|| config.controller.clone());
            let agent =
                session::enroll(&config, &controller, token.into(), &ca_pin, reenroll).await?;
            println!(
                "enrolled as {agent}; identity stored in {}.\nStart the agent (a running one picks \
                 the new identity up on its next connection attempt): systemctl start certfleet-agent \
                 (or certfleet-agent run --config {})",
                config.state_dir.display(),
                config.path.display()
            );
            Ok(())
        }
        Command::Run { config } => {
            let config = Config::load(&config)?;
            session::run(config, shutdown_signal()).await
        }
        Command::Status {
            config,
            json: json_flag,
        } => {
            let config = Config::load(&config)?;
            let state = AgentState::load(&config.state_dir)?;
            if json(json_flag) {
                println!("{}", serde_json::to_string_pretty(&state)?);
                return Ok(());
            }
            match Identity::load(&config.state_dir) {
                Ok(id) => match id.expired(certfleet_agent::clock::now(), &config.path) {
                    Some(why) => println!("agent {}: {why}", id.agent),
                    None => println!(
                        "agent {} (identity valid until {})",
                        id.agent,
                        certfleet_protocol::message::Timestamp(id.not_after)
                    ),
                },
                Err(_) => println!("not enrolled"),
            }
            for t in &config.targets {
                match state.targets.get(&t.name) {
                    Some(s) => println!(
                        "{} ({}): {} expires {}; last result {} at {}{}",
                        t.name,
                        t.kind.as_str(),
                        s.certificate.as_deref().unwrap_or("no certificate"),
                        s.not_after.map(|x| x.to_string()).unwrap_or("-".into()),
                        s.last_result,
                        s.at,
                        s.last_error
                            .as_deref()
                            .map(|e| format!("\n    {}", e.replace('\n', "\n    ")))
                            .unwrap_or_default()
                    ),
                    None => println!("{} ({}): nothing installed yet", t.name, t.kind.as_str()),
                }
            }
            Ok(())
        }
        Command::Discover {
            config,
            json: json_flag,
        } => {
            let config = Config::load(&config)?;
            let report = certfleet_agent::discovery::scan(
                &config.discovery,
                &config.targets,
                certfleet_agent::clock::now(),
            )
            .await;
            if json(json_flag) {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            for e in &report.entries {
                let what = match &e.error {
                    Some(err) => format!("error: {err}"),
                    None => format!(
                        "expires {} [{}] issuer {}",
                        e.not_after.map(|t| t.to_string()).unwrap_or("-".into()),
                        e.sans.join(", "),
                        e.issuer
                    ),
                };
                println!(
                    "{} ({}{}{}): {what}",
                    e.path,
                    e.source,
                    e.site
                        .as_deref()
                        .map(|s| format!(", {s}"))
                        .unwrap_or_default(),
                    e.target
                        .as_deref()
                        .map(|t| format!(", target {t}"))
                        .unwrap_or_default(),
                );
            }
            for p in &report.problems {
                println!("problem: {p}");
            }
            if report.entries.is_empty() && report.problems.is_empty() {
                println!("no certificates found");
            }
            Ok(())
        }
        Command::Completion { shell } => {
            let mut out = std::io::stdout().lock();
            certfleet_agent::manual::completion(shell, &Cli::command(), &mut out);
            Ok(())
        }
        Command::Man { out } => {
            let written = certfleet_agent::manual::write_man_pages(
                &Cli::command(),
                &out,
                &mut Default::default(),
            )?;
            println!("wrote {} man pages into {}", written.len(), out.display());
            Ok(())
        }
        Command::CheckConfig { config } => {
            let c = Config::load(&config)?;
            let mut problems = certfleet_agent::install::pkcs12::check_password_files(&c);
            let sandbox = certfleet_agent::sandbox::UnitSandbox::load();
            let findings =
                certfleet_agent::check::check_paths(&c, sandbox.as_ref().map_err(Clone::clone));
            problems.extend(findings.errors);
            if !problems.is_empty() {
                anyhow::bail!("{}", problems.join("\n"));
            }
            for w in &findings.warnings {
                eprintln!("{w}");
            }
            println!(
                "{}: ok ({} target(s): {})",
                config.display(),
                c.targets.len(),
                c.targets
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!("{}", c.discovery.summary());
            match &findings.sandbox_not_checked {
                None => println!(
                    "target directories checked against {}'s ReadWritePaths=",
                    certfleet_agent::sandbox::UNIT
                ),
                Some(why) => println!(
                    "target directories not checked against {}'s sandbox: {why}",
                    certfleet_agent::sandbox::UNIT
                ),
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CERTFLEET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = certfleet_agent::failpoints::setup() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_async(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // Already logged by the session with the way back.
        Err(e) if e.downcast_ref::<AgentRemoved>().is_some() => {
            ExitCode::from(session::EXIT_AGENT_REMOVED)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
