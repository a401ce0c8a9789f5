//! Checks what the real CLI prints with `--output json` against the field
//! tables of docs/cli.md: the tables are generated from the protocol types,
//! but a command may print a shape of its own (the join token, the files
//! written), so the printed keys are compared with the documented ones,
//! nested objects included.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, ensure, Result};
use serde_json::Value;

/// Documented fields per type: type name → (field → type text).
pub(crate) type Tables = BTreeMap<String, BTreeMap<String, String>>;

/// The `#### Name` field tables of docs/cli.md.
pub(crate) fn tables(doc: &str) -> Tables {
    let mut out = Tables::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        if let Some(name) = line.strip_prefix("#### ") {
            current = Some(name.trim().to_owned());
            continue;
        }
        let Some(name) = &current else { continue };
        let cells: Vec<&str> = line.split(" | ").collect();
        if let [first, rest @ ..] = cells.as_slice() {
            if let Some(field) = first.strip_prefix("| `").and_then(|f| f.strip_suffix('`')) {
                out.entry(name.clone())
                    .or_default()
                    .insert(field.to_owned(), rest.join(" | "));
            }
        }
    }
    out
}

/// The type linked from a field's type text (`[RenewalInfo](#renewalinfo)
/// or null` → `RenewalInfo`), if any.
fn linked(type_text: &str) -> Option<&str> {
    let start = type_text.find('[')?;
    let rest = &type_text[start..];
    let rest = rest.trim_start_matches('[');
    let end = rest.find("](#")?;
    Some(&rest[..end])
}

/// Whether `value` has exactly the documented fields of `ty`, recursively;
/// `at` names the place for the error.
pub(crate) fn check(tables: &Tables, ty: &str, value: &Value, at: &str) -> Result<()> {
    let fields = tables
        .get(ty)
        .ok_or_else(|| anyhow!("docs/cli.md has no table for {ty} ({at})"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| anyhow!("{at}: expected a {ty} object, got {value}"))?;
    let printed: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let documented: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
    ensure!(
        printed == documented,
        "{at}: the CLI prints {ty} with fields {printed:?} but docs/cli.md documents \
         {documented:?}; regenerate docs/cli.md, or make the output type the one the CLI prints"
    );
    for (field, text) in fields {
        let Some(inner) = linked(text) else { continue };
        let v = &obj[field.as_str()];
        let items: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            Value::Null => Vec::new(),
            one => vec![one],
        };
        for (i, item) in items.into_iter().enumerate() {
            check(tables, inner, item, &format!("{at}.{field}[{i}]"))?;
        }
    }
    Ok(())
}

/// Check one printed answer of `command` against the type the generated
/// reference says it prints.
pub(crate) fn check_output(
    tables: &Tables,
    outputs: &BTreeMap<&str, Option<(&str, bool)>>,
    command: &str,
    value: &Value,
) -> Result<()> {
    let (ty, many) = outputs
        .get(command)
        .copied()
        .flatten()
        .ok_or_else(|| anyhow!("`certfleet {command}` is documented as printing no JSON"))?;
    if many {
        let list = value
            .as_array()
            .ok_or_else(|| anyhow!("`certfleet {command}` should print an array: {value}"))?;
        ensure!(
            !list.is_empty(),
            "`certfleet {command}` printed an empty array; the check needs one element"
        );
        for (i, v) in list.iter().enumerate() {
            check(tables, ty, v, &format!("`certfleet {command}`[{i}]"))?;
        }
        Ok(())
    } else {
        check(tables, ty, value, &format!("`certfleet {command}`"))
    }
}
