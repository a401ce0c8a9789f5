//! Renders the generated parts of docs/cli.md: every subcommand, argument,
//! environment variable and default of `certfleet` and `certfleet-agent`
//! from their clap definitions, and the JSON shapes from the serde
//! definitions of the types the commands print (traced with
//! serde-reflection, so a field added to a type shows up without anyone
//! writing it down).
//!
//! docs/cli.md keeps hand-written prose between marked regions
//! (`<!-- generated:NAME -->` … `<!-- end generated:NAME -->`); only the
//! regions are replaced, so the prose survives regeneration.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Arg, ArgAction, Command, CommandFactory};
use serde::de::DeserializeOwned;
use serde_reflection::{ContainerFormat, Format, Named, Registry, Tracer, TracerConfig};

use certfleet_protocol::message as m;

/// What a `certfleet` command prints with `--output json`: the type it
/// serializes, and whether it prints an array of them. Every leaf command
/// must be listed (`None`: it prints no JSON, e.g. `serve`), so a new
/// command cannot appear in the docs without its output.
pub(crate) const OUTPUTS: &[(&str, Option<(&str, bool)>)] = &[
    ("serve", None),
    ("issuer add", Some(("IssuerInfo", false))),
    ("issuer list", Some(("IssuerInfo", true))),
    ("issuer show", Some(("IssuerInfo", false))),
    ("instance create", Some(("InstanceInfo", false))),
    ("instance list", Some(("InstanceInfo", true))),
    ("instance show", Some(("InstanceInfo", false))),
    ("cert apply", Some(("ApplicationInfo", false))),
    ("cert list", Some(("CertSummary", true))),
    ("cert show", Some(("CertInfo", false))),
    ("cert download", Some(("FilesWritten", false))),
    ("cert revoke", Some(("CertInfo", false))),
    ("cert renew", Some(("ApplicationInfo", false))),
    ("application show", Some(("ApplicationInfo", false))),
    ("ca crl", Some(("FilesWritten", false))),
    ("audit list", Some(("AuditEntry", true))),
    ("agent token create", Some(("JoinToken", false))),
    ("agent list", Some(("AgentInfo", true))),
    ("agent show", Some(("AgentInfo", false))),
    ("agent remove", Some(("AgentInfo", false))),
    ("admin create", Some(("AdminCredentialInfo", false))),
    ("admin list", Some(("AdminCredentialInfo", true))),
    ("admin renew", Some(("AdminCredentialInfo", false))),
    ("admin revoke", Some(("AdminCredentialInfo", true))),
    ("deploy", Some(("RolloutInfo", false))),
    ("deployment list", Some(("DeploymentInfo", true))),
    ("rollout list", Some(("RolloutSummary", true))),
    ("rollout show", Some(("RolloutInfo", false))),
    ("rollout watch", Some(("RolloutInfo", false))),
    ("rollout pause", Some(("RolloutInfo", false))),
    ("rollout resume", Some(("RolloutInfo", false))),
    ("rollout abort", Some(("RolloutInfo", false))),
    ("rollout rollback", Some(("RolloutInfo", false))),
    ("status", Some(("FleetStatus", false))),
    ("inventory list", Some(("InventoryList", false))),
    ("inventory scan", Some(("InventoryList", false))),
    ("inventory adopt", Some(("AdoptionInfo", false))),
    ("ca root", Some(("CaRoot", false))),
    ("completion", None),
    ("man", None),
];

/// The same for `certfleet-agent` (its `--json` flag).
const AGENT_OUTPUTS: &[(&str, Option<(&str, bool)>)] = &[
    ("enroll", None),
    ("run", None),
    ("status", Some(("AgentState", false))),
    ("check-config", None),
    ("discover", Some(("InventoryReport", false))),
    ("completion", None),
    ("man", None),
];

/// `cert download` and `ca crl` print the files they wrote; the CLI
/// serializes this shape (controller/src/cli/output.rs `files`).
#[allow(dead_code)] // only traced, never built
#[derive(serde::Deserialize)]
struct FilesWritten {
    dir: String,
    files: Vec<String>,
}

/// Every generated region of docs/cli.md, by name.
pub(crate) fn regions() -> Result<BTreeMap<&'static str, String>> {
    let mut certfleet = certfleet_controller::cli::Cli::command();
    certfleet.build();
    let mut agent = certfleet_agent::cli::Cli::command();
    agent.build();
    let mut r = BTreeMap::new();
    r.insert("certfleet", commands(&certfleet, OUTPUTS)?);
    r.insert("certfleet-agent", commands(&agent, AGENT_OUTPUTS)?);
    r.insert("json", json_shapes()?);
    Ok(r)
}

/// Replace every `<!-- generated:NAME -->` region of `doc` with its text.
pub(crate) fn fill(doc: &str, regions: &BTreeMap<&str, String>) -> Result<String> {
    let mut out = doc.to_owned();
    for (name, text) in regions {
        let begin = format!("<!-- generated:{name} -->\n");
        let end = format!("<!-- end generated:{name} -->");
        let start = out
            .find(&begin)
            .ok_or_else(|| anyhow!("docs/cli.md has no `{}` line", begin.trim_end()))?
            + begin.len();
        let stop = out[start..]
            .find(&end)
            .ok_or_else(|| anyhow!("docs/cli.md has no `{end}` line after its start"))?
            + start;
        out.replace_range(start..stop, text);
    }
    Ok(out)
}

/// Command paths below `cmd` ("cert apply"), in definition order, with
/// their commands; hidden ones and clap's `help` left out.
fn walk<'a>(cmd: &'a Command, prefix: &str, out: &mut Vec<(String, &'a Command)>) {
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let path = if prefix.is_empty() {
            sub.get_name().to_owned()
        } else {
            format!("{prefix} {}", sub.get_name())
        };
        out.push((path.clone(), sub));
        walk(sub, &path, out);
    }
}

/// One line of help text, safe inside a Markdown table cell.
fn cell(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn about(cmd: &Command) -> String {
    cmd.get_long_about()
        .or(cmd.get_about())
        .map(|s| cell(&s.to_string()))
        .unwrap_or_default()
}

/// Whether the argument takes a value (`--wait` does not).
fn takes_value(a: &Arg) -> bool {
    !matches!(
        a.get_action(),
        ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count | ArgAction::Help
    ) && !matches!(a.get_action(), ArgAction::Version | ArgAction::HelpShort)
}

fn arg_name(a: &Arg) -> String {
    let value = a
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
    let repeat = if matches!(a.get_action(), ArgAction::Append) {
        "…"
    } else {
        ""
    };
    match a.get_long() {
        Some(long) if takes_value(a) => format!("`--{long} <{value}>`{repeat}"),
        Some(long) => format!("`--{long}`"),
        None => format!("`<{value}>`{repeat}"),
    }
}

/// The argument table of one command (`global` selects the global flags,
/// shown once, at the top).
fn arg_table(cmd: &Command, global: bool) -> String {
    let args: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.is_global_set() == global)
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    if args.is_empty() {
        return String::new();
    }
    let mut t = String::from("| argument | env | default | meaning |\n|---|---|---|---|\n");
    for a in args {
        let env = a
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_else(|| "—".into());
        let defaults: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .filter(|v| !v.is_empty())
            .collect();
        let default = if defaults.is_empty() || !takes_value(a) {
            "—".to_owned()
        } else {
            format!("`{}`", defaults.join(","))
        };
        let mut meaning = a
            .get_long_help()
            .or(a.get_help())
            .map(|h| cell(&h.to_string()))
            .unwrap_or_default();
        let values: Vec<String> = a
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !meaning.is_empty() && !meaning.ends_with('.') {
            // clap drops the full stop of a one-sentence doc comment.
            meaning.push('.');
        }
        if takes_value(a) && !values.is_empty() {
            if !meaning.is_empty() {
                meaning.push(' ');
            }
            let _ = write!(meaning, "One of {}.", values.join(", "));
        }
        if a.is_required_set() {
            meaning = format!("(required) {meaning}");
        }
        let _ = writeln!(
            t,
            "| {} | {env} | {default} | {} |",
            arg_name(a),
            meaning.trim()
        );
    }
    t
}

/// The whole reference of one binary: global flags, a summary table, then
/// one section per command.
fn commands(root: &Command, outputs: &[(&str, Option<(&str, bool)>)]) -> Result<String> {
    let bin = root.get_name();
    let mut list = Vec::new();
    walk(root, "", &mut list);
    let outputs: BTreeMap<&str, Option<(&str, bool)>> = outputs.iter().copied().collect();
    let mut s = String::new();
    let globals = arg_table(root, true);
    if !globals.is_empty() {
        let _ = writeln!(
            s,
            "Global flags (accepted after any subcommand):\n\n{globals}"
        );
    }
    s.push_str("| command | does |\n|---|---|\n");
    for (path, cmd) in &list {
        let _ = writeln!(s, "| `{bin} {path}` | {} |", about(cmd));
    }
    let mut leaves = BTreeSet::new();
    for (path, cmd) in &list {
        // A group (`certfleet cert`) has its line in the table above.
        if cmd.has_subcommands() {
            continue;
        }
        let _ = write!(s, "\n### `{bin} {path}`\n\n{}\n\n", about(cmd));
        leaves.insert(path.as_str());
        let usage = Command::clone(cmd).render_usage().to_string();
        let usage = usage.trim().trim_start_matches("Usage:").trim();
        let _ = writeln!(s, "```text\n{usage}\n```\n");
        let table = arg_table(cmd, false);
        if !table.is_empty() {
            let _ = writeln!(s, "{table}");
        }
        match outputs.get(path.as_str()) {
            None => bail!(
                "`{bin} {path}` is not in the JSON output list of tests/tests/docs/clidoc.rs: \
                 add what it prints (or None) and regenerate docs/cli.md"
            ),
            Some(None) => {}
            Some(Some((ty, many))) => {
                let what = if *many {
                    format!("an array of [{ty}](#{})", ty.to_lowercase())
                } else {
                    format!("[{ty}](#{})", ty.to_lowercase())
                };
                let _ = writeln!(s, "JSON output: {what}.\n");
            }
        }
    }
    for path in outputs.keys() {
        if !leaves.contains(path) {
            bail!(
                "tests/tests/docs/clidoc.rs lists the output of `{bin} {path}`, which is not a \
                 command any more: remove it"
            );
        }
    }
    Ok(s.trim_end().to_owned() + "\n")
}

/// Trace `T` into `tracer`.
fn trace<T: DeserializeOwned>(tracer: &mut Tracer) -> Result<()> {
    tracer
        .trace_simple_type::<T>()
        .map_err(|e| anyhow!("tracing {}: {e}", std::any::type_name::<T>()))?;
    Ok(())
}

/// The registry of every printed type, traced the way JSON sees it
/// (human-readable) or the way the wire sees it.
fn registry(human_readable: bool) -> Result<Registry> {
    // A Timestamp parses RFC 3339 text when human-readable: give the tracer
    // a string it accepts.
    let config = TracerConfig::default()
        .is_human_readable(human_readable)
        .default_string_value("1970-01-01T00:00:00Z".into());
    let mut t = Tracer::new(config);
    trace::<m::IssuerInfo>(&mut t)?;
    trace::<m::InstanceInfo>(&mut t)?;
    trace::<m::ApplicationInfo>(&mut t)?;
    trace::<m::CertInfo>(&mut t)?;
    // The list commands print summaries (no PEMs, counts for targets).
    trace::<m::CertSummary>(&mut t)?;
    trace::<FilesWritten>(&mut t)?;
    trace::<m::AuditEntry>(&mut t)?;
    trace::<m::JoinToken>(&mut t)?;
    trace::<m::AgentInfo>(&mut t)?;
    trace::<m::AdminCredentialInfo>(&mut t)?;
    trace::<m::DeploymentInfo>(&mut t)?;
    trace::<m::RolloutInfo>(&mut t)?;
    trace::<m::RolloutSummary>(&mut t)?;
    trace::<m::FleetStatus>(&mut t)?;
    // `cert list --at-risk` rows (`deployment list --at-risk` prints the
    // AtRiskItem rows `status` carries).
    trace::<m::AtRiskCertificate>(&mut t)?;
    trace::<m::InventoryList>(&mut t)?;
    trace::<m::AdoptionInfo>(&mut t)?;
    trace::<m::InventoryReport>(&mut t)?;
    trace::<certfleet_agent::state::AgentState>(&mut t)?;
    trace::<m::CaRoot>(&mut t)?;
    trace::<m::Plan>(&mut t)?;
    trace::<m::PlanOutcome>(&mut t)?;
    trace::<m::ErrorKind>(&mut t)?;
    // Tracing a struct sees only the first variant of its enums; tracing
    // an enum itself walks them all.
    trace::<m::KeyType>(&mut t)?;
    trace::<m::ValidationType>(&mut t)?;
    trace::<m::IssuerKind>(&mut t)?;
    trace::<m::InstanceState>(&mut t)?;
    trace::<m::ApplicationState>(&mut t)?;
    trace::<m::CertState>(&mut t)?;
    trace::<m::RevocationReason>(&mut t)?;
    trace::<m::DeploymentStatus>(&mut t)?;
    trace::<m::AtRiskReason>(&mut t)?;
    t.registry().map_err(|e| {
        anyhow!(
            "incomplete trace of the JSON output types ({e}): add `trace::<EnumName>` for each \
             enum named there to `registry` in tests/tests/docs/clidoc.rs"
        )
    })
}

/// Whether a field is a Timestamp: text in JSON, an integer on the wire.
fn is_time(json: &Format, wire: &Format) -> bool {
    matches!((json, wire), (Format::Str, Format::I64))
}

/// The JSON type of a field, in the notation docs/cli.md explains.
fn json_type(f: &Format, wire: &Format, reg: &Registry) -> String {
    if is_time(f, wire) {
        return "time".into();
    }
    match (f, wire) {
        (Format::Option(inner), Format::Option(w)) => {
            format!("{} or null", json_type(inner, w, reg))
        }
        (Format::Option(inner), _) => format!("{} or null", json_type(inner, inner, reg)),
        // Secret text (the join token) is printed as a string.
        (Format::Seq(inner), _) if **inner == Format::U8 => "string".into(),
        (Format::Seq(inner), Format::Seq(w)) => format!("[{}]", json_type(inner, w, reg)),
        (Format::Seq(inner), _) => format!("[{}]", json_type(inner, inner, reg)),
        (Format::TupleArray { content, size }, _) => format!(
            "[{}]",
            vec![json_type(content, content, reg); *size].join(", ")
        ),
        (Format::Tuple(items), _) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| json_type(i, i, reg))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (Format::Map { value, .. }, _) => format!("{{string: {}}}", json_type(value, value, reg)),
        (Format::Bool, _) => "bool".into(),
        (Format::Str | Format::Char, _) => "string".into(),
        (
            Format::I8
            | Format::I16
            | Format::I32
            | Format::I64
            | Format::I128
            | Format::U8
            | Format::U16
            | Format::U32
            | Format::U64
            | Format::U128,
            _,
        ) => "integer".into(),
        (Format::F32 | Format::F64, _) => "number".into(),
        (Format::TypeName(name), _) => match reg.get(name) {
            Some(ContainerFormat::Enum(variants)) => variants
                .values()
                .map(|v| format!("\"{}\"", v.name))
                .collect::<Vec<_>>()
                .join(" \\| "),
            _ => format!("[{name}](#{})", name.to_lowercase()),
        },
        (other, _) => format!("{other:?}"),
    }
}

/// One table per struct printed by a command, and per struct inside one.
fn json_shapes() -> Result<String> {
    let json = registry(true)?;
    let wire = registry(false)?;
    let mut s = String::new();
    for (name, container) in &json {
        let ContainerFormat::Struct(fields) = container else {
            continue;
        };
        let wire_fields: BTreeMap<&str, &Format> = match wire.get(name) {
            Some(ContainerFormat::Struct(w)) => w
                .iter()
                .map(|Named { name, value }| (name.as_str(), value))
                .collect(),
            _ => BTreeMap::new(),
        };
        let _ = write!(s, "\n#### {name}\n\n| field | type |\n|---|---|\n");
        for Named { name: field, value } in fields {
            let w = wire_fields.get(field.as_str()).copied().unwrap_or(value);
            let _ = writeln!(s, "| `{field}` | {} |", json_type(value, w, &json));
        }
    }
    if s.is_empty() {
        bail!("no JSON output type was traced");
    }
    Ok(s.trim_start().to_owned())
}

/// Read docs/cli.md, fill its generated regions, and either write it back
/// (`bless`) or return the differences.
pub(crate) fn check_or_bless(path: &std::path::Path, bless: bool) -> Result<Option<String>> {
    let doc =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let fresh = fill(&doc, &regions()?)?;
    if fresh == doc {
        return Ok(None);
    }
    if bless {
        std::fs::write(path, &fresh).with_context(|| format!("cannot write {}", path.display()))?;
        return Ok(None);
    }
    let first = doc
        .lines()
        .zip(fresh.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| doc.lines().count().min(fresh.lines().count()));
    let show = |t: &str| t.lines().skip(first).take(5).collect::<Vec<_>>().join("\n");
    Ok(Some(format!(
        "first difference at line {}:\n--- committed\n{}\n+++ generated\n{}",
        first + 1,
        show(&doc),
        show(&fresh)
    )))
}
