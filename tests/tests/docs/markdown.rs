//! The little Markdown the docs tests need: fenced code blocks with the
//! marker comment in front of them, the section they sit in, and relative
//! links.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Languages whose blocks are commands to type: each must be run by a test
/// or marked as an example.
pub(crate) const SHELL: &[&str] = &["sh", "bash", "shell", "console", "zsh"];

/// The marker for a block shown but not run by any test.
pub(crate) const EXAMPLE: &str = "<!-- example -->";

/// A fenced code block.
#[derive(Debug)]
pub(crate) struct Block {
    /// 1-based line of the opening fence.
    pub(crate) line: usize,
    /// The info string (`sh`, `toml`, …), empty when none.
    pub(crate) lang: String,
    pub(crate) body: String,
    /// The HTML comment on the last non-blank line before the fence, if any.
    pub(crate) marker: Option<String>,
    /// The `## ` heading the block sits under.
    pub(crate) section: String,
}

impl Block {
    pub(crate) fn is_shell(&self) -> bool {
        SHELL.contains(&self.lang.as_str())
    }

    /// `NAME` of a `<!-- run: NAME -->` marker.
    pub(crate) fn run_marker(&self) -> Option<&str> {
        self.marker
            .as_deref()?
            .strip_prefix("<!-- run:")?
            .strip_suffix("-->")
            .map(str::trim)
    }
}

/// Every fenced block of a Markdown text; an unclosed fence is an error.
pub(crate) fn blocks(text: &str) -> Result<Vec<Block>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut section = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(h) = line.strip_prefix("## ") {
            section = h.trim().to_owned();
        }
        let Some(info) = line.strip_prefix("```") else {
            i += 1;
            continue;
        };
        let close = lines[i + 1..]
            .iter()
            .position(|l| l.trim_end() == "```")
            .map(|p| p + i + 1);
        let Some(close) = close else {
            bail!("the code block opened on line {} is never closed", i + 1);
        };
        let marker = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim())
            .filter(|l| l.starts_with("<!--") && l.ends_with("-->"))
            .map(str::to_owned);
        out.push(Block {
            line: i + 1,
            lang: info.trim().to_owned(),
            body: lines[i + 1..close].join("\n") + "\n",
            marker,
            section: section.clone(),
        });
        i = close + 1;
    }
    Ok(out)
}

/// The text outside code blocks (links inside code are not links).
pub(crate) fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Targets of inline links `[text](target)` that are not URLs or anchors,
/// without their `#fragment`.
pub(crate) fn relative_links(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut out = Vec::new();
    let mut rest = prose.as_str();
    while let Some(p) = rest.find("](") {
        rest = &rest[p + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].trim();
        let is_url = target.contains("://") || target.starts_with("mailto:");
        if !is_url && !target.starts_with('#') && !target.is_empty() {
            let path = target.split('#').next().unwrap_or(target);
            out.push(path.to_owned());
        }
        rest = &rest[end..];
    }
    out
}

/// The repository's root (the tests crate sits one level below it).
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// README.md and every docs/*.md, as (path relative to the root, text).
pub(crate) fn documents() -> Result<Vec<(PathBuf, String)>> {
    let root = repo_root();
    let mut paths = vec![PathBuf::from("README.md")];
    let docs = root.join("docs");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&docs)
        .with_context(|| format!("cannot list {}", docs.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .filter_map(|p| p.strip_prefix(&root).ok().map(Path::to_path_buf))
        .collect();
    found.sort();
    paths.extend(found);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(root.join(&p))
                .with_context(|| format!("cannot read {}", p.display()))?;
            Ok((p, text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_blocks_markers_sections_and_links() {
        let text = "## One\n\n<!-- example -->\n```sh\nls\n```\n\n## Two\n\
                    see [a](a.md#x), [b](https://x.test/b) and [c](#c)\n\
                    ```text\n[not](a link)\n```\n";
        let b = blocks(text).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].marker.as_deref(), Some(EXAMPLE));
        assert_eq!(b[0].section, "One");
        assert!(b[0].is_shell());
        assert_eq!(b[1].marker, None);
        assert_eq!(b[1].lang, "text");
        assert_eq!(relative_links(text), vec!["a.md".to_owned()]);
        assert!(blocks("```sh\nls\n").is_err());
    }
}
