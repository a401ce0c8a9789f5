//! List commands: page after page from the controller, each printed as it
//! arrives, so memory stays flat however long the list.
//!
//! Like kubectl's chunked lists, `--page-size` sets the rows fetched per
//! request (kubectl's `--chunk-size`) and `--limit` the rows printed in
//! all. JSON output is one array streamed element by element; a table
//! keeps the column widths of its first page (see [`super::table`]).

use std::io::Write;

use anyhow::{bail, Context};
use certfleet_protocol::list::{ListQuery, PageRequest, MAX_PAGE_ROWS};
use certfleet_protocol::message::{PageRows, Request, Response};
use clap::Args;
use serde::Serialize;

use super::rows::rows_of;
use super::table::Layout;
use super::Format;
use crate::client::Client;

/// Paging flags shared by every list command.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Print at most this many rows in all [default: every row].
    #[arg(long)]
    pub limit: Option<u64>,
    /// Rows fetched from the controller per request; each page is printed
    /// as it arrives. At most 1000.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=MAX_PAGE_ROWS as i64))]
    pub page_size: u32,
}

/// Where a list goes: a streamed JSON array or a table laid out by its
/// first page.
struct Sink<W: Write> {
    out: W,
    format: Format,
    printed: u64,
    layout: Option<Layout>,
    now: i64,
    /// Printed before the first row of a table.
    title: Option<&'static str>,
}

impl<W: Write> Sink<W> {
    fn json_rows<T: Serialize>(&mut self, rows: &[T]) -> anyhow::Result<()> {
        for row in rows {
            let text = serde_json::to_string_pretty(row)?;
            let sep = if self.printed == 0 { "[\n" } else { ",\n" };
            self.out.write_all(sep.as_bytes())?;
            // Indent the element so the array reads like a pretty-printed one.
            for (i, line) in text.lines().enumerate() {
                if i > 0 {
                    self.out.write_all(b"\n")?;
                }
                write!(self.out, "  {line}")?;
            }
            self.printed += 1;
        }
        Ok(())
    }

    fn page(&mut self, rows: &PageRows) -> anyhow::Result<()> {
        match self.format {
            Format::Json => match rows {
                PageRows::Certificates(r) => self.json_rows(r)?,
                PageRows::Agents(r) => self.json_rows(r)?,
                PageRows::Deployments(r) => self.json_rows(r)?,
                PageRows::Audit(r) => self.json_rows(r)?,
                PageRows::Instances(r) => self.json_rows(r)?,
                PageRows::Issuers(r) => self.json_rows(r)?,
                PageRows::Rollouts(r) => self.json_rows(r)?,
                PageRows::Inventory(r) => self.json_rows(r)?,
                PageRows::InventoryProblems(r) => self.json_rows(r)?,
                PageRows::AtRiskCertificates(r) => self.json_rows(r)?,
                PageRows::AtRiskDeployments(r) => self.json_rows(r)?,
            },
            Format::Table => {
                let (header, cells) = rows_of(rows, self.now);
                let first = self.layout.is_none();
                if let (true, Some(t)) = (first, self.title) {
                    writeln!(self.out, "{t}")?;
                }
                let layout = self
                    .layout
                    .get_or_insert_with(|| Layout::for_terminal(header, &cells));
                self.printed += cells.len() as u64;
                let text = layout.render(first.then_some(header), cells);
                self.out.write_all(text.as_bytes())?;
            }
        }
        self.out.flush()?;
        Ok(())
    }

    fn finish(&mut self, header: &[&str]) -> anyhow::Result<()> {
        match self.format {
            Format::Json if self.printed == 0 => self.out.write_all(b"[]\n")?,
            Format::Json => self.out.write_all(b"\n]\n")?,
            // An empty list still shows its columns.
            Format::Table if self.layout.is_none() => {
                let text = Layout::for_terminal(header, &[]).render(Some(header), Vec::new());
                self.out.write_all(text.as_bytes())?
            }
            Format::Table => {}
        }
        self.out.flush()?;
        Ok(())
    }
}

/// Keep the first `n` rows of a page.
fn truncate(rows: &mut PageRows, n: usize) {
    match rows {
        PageRows::Certificates(r) => r.truncate(n),
        PageRows::Agents(r) => r.truncate(n),
        PageRows::Deployments(r) => r.truncate(n),
        PageRows::Audit(r) => r.truncate(n),
        PageRows::Instances(r) => r.truncate(n),
        PageRows::Issuers(r) => r.truncate(n),
        PageRows::Rollouts(r) => r.truncate(n),
        PageRows::Inventory(r) => r.truncate(n),
        PageRows::InventoryProblems(r) => r.truncate(n),
        PageRows::AtRiskCertificates(r) => r.truncate(n),
        PageRows::AtRiskDeployments(r) => r.truncate(n),
    }
}

/// Fetch `query` page by page and print it to stdout.
pub(super) async fn stream(
    client: &Client,
    format: Format,
    query: ListQuery,
    args: &ListArgs,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    stream_to(client, &mut out, format, query, args, Empty::Header).await?;
    Ok(())
}

/// What a table with no rows prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Empty {
    /// Its header, so an empty list still shows its columns.
    Header,
    /// Nothing: a section of a larger output that only matters when it
    /// has rows; its title line is printed before its first row.
    Section(&'static str),
}

/// Fetch `query` page by page into `out`; returns the rows printed.
pub(super) async fn stream_to<W: Write>(
    client: &Client,
    out: &mut W,
    format: Format,
    query: ListQuery,
    args: &ListArgs,
    empty: Empty,
) -> anyhow::Result<u64> {
    let header = super::rows::header_of(&query);
    let mut sink = Sink {
        out,
        format,
        printed: 0,
        layout: None,
        now: time::OffsetDateTime::now_utc().unix_timestamp(),
        title: match empty {
            Empty::Section(t) => Some(t),
            Empty::Header => None,
        },
    };
    let mut token = None;
    loop {
        let left = args.limit.map(|l| l.saturating_sub(sink.printed));
        if left == Some(0) {
            break;
        }
        let limit = match left {
            Some(l) => args.page_size.min(u32::try_from(l).unwrap_or(u32::MAX)),
            None => args.page_size,
        };
        let r = client
            .call(&Request::List {
                query: query.clone(),
                page: PageRequest {
                    limit,
                    continue_token: token.take(),
                },
            })
            .await
            .context("could not fetch the next page of the list")?;
        let page = match r {
            Response::Page(p) => p,
            other => bail!("unexpected response from controller: {other:?}"),
        };
        let mut rows = page.rows;
        if let Some(l) = left {
            truncate(&mut rows, usize::try_from(l).unwrap_or(usize::MAX));
        }
        if !rows.is_empty() {
            sink.page(&rows)?;
        }
        match page.continue_token {
            Some(t) if !rows.is_empty() => token = Some(t),
            _ => break,
        }
    }
    let silent = matches!(empty, Empty::Section(_)) && sink.printed == 0;
    if !(silent && sink.format == Format::Table) {
        sink.finish(header)?;
    }
    Ok(sink.printed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_protocol::message::{AuditEntry, Timestamp};

    fn entry(id: i64) -> AuditEntry {
        AuditEntry {
            id,
            at: Timestamp(id),
            actor: "admin".into(),
            action: "cert.revoke".into(),
            target: "cert-1".into(),
            outcome: "refused".into(),
            detail: "still deployed".into(),
        }
    }

    fn sink(format: Format) -> Sink<Vec<u8>> {
        Sink {
            out: Vec::new(),
            format,
            printed: 0,
            layout: None,
            now: 0,
            title: None,
        }
    }

    #[test]
    fn json_pages_make_one_array() {
        let mut s = sink(Format::Json);
        s.page(&PageRows::Audit(vec![entry(1), entry(2)])).unwrap();
        s.page(&PageRows::Audit(vec![entry(3)])).unwrap();
        s.finish(&["ID"]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&s.out).unwrap();
        let ids: Vec<i64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);

        let mut empty = sink(Format::Json);
        empty.page(&PageRows::Audit(vec![])).unwrap();
        empty.finish(&["ID"]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&empty.out).unwrap();
        assert_eq!(v, serde_json::json!([]));
    }

    #[test]
    fn a_section_title_comes_once_before_its_first_row() {
        let mut s = sink(Format::Table);
        s.title = Some("Problems:");
        s.page(&PageRows::InventoryProblems(vec![(
            "web-1".into(),
            "a".into(),
        )]))
        .unwrap();
        s.page(&PageRows::InventoryProblems(vec![(
            "web-2".into(),
            "b".into(),
        )]))
        .unwrap();
        let text = String::from_utf8(s.out).unwrap();
        assert!(text.starts_with("Problems:\nAGENT"), "{text}");
        assert_eq!(text.matches("Problems:").count(), 1, "{text}");
    }

    #[test]
    fn table_pages_print_one_header() {
        let mut s = sink(Format::Table);
        s.page(&PageRows::Audit(vec![entry(1)])).unwrap();
        s.page(&PageRows::Audit(vec![entry(2)])).unwrap();
        s.finish(&["ID"]).unwrap();
        let text = String::from_utf8(s.out).unwrap();
        assert_eq!(text.matches("OUTCOME").count(), 1, "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
