//! Tables for people: columns that fit the terminal, long cells wrapped
//! inside their column instead of widening every row.
//!
//! Lists arrive page by page and are printed as they arrive, so a later
//! page cannot widen a column an earlier page already printed. The layout
//! is therefore decided once, from the header and the first page: each
//! column gets its widest cell (at most [`MAX_COLUMN`] characters), then
//! the widest columns give way until the row fits the width (the terminal,
//! else `$COLUMNS`, else no limit beyond [`MAX_COLUMN`]); the last column,
//! where every list keeps its free text, wraps first. Every page is a
//! comfy-table with those same fixed column widths, so rows line up across
//! pages, and a longer cell on a later page wraps within its column.

use comfy_table::{ColumnConstraint, ContentArrangement, Table, Width};

/// Widest a column gets when nothing else limits it.
const MAX_COLUMN: usize = 60;
/// Narrowest a column is squeezed to (a header may still be wider).
const MIN_COLUMN: usize = 6;
/// Narrowest the last (free text) column is squeezed to before the others
/// give way.
const LAST_COLUMN_MIN: usize = 24;
/// Spaces between columns.
const GAP: u16 = 2;

/// Column widths decided from the first rows, reused for every page.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    widths: Vec<usize>,
}

/// Characters available for a table: the terminal's width, else `$COLUMNS`.
fn available_width() -> Option<usize> {
    if let Some((terminal_size::Width(w), _)) = terminal_size::terminal_size() {
        return Some(w as usize);
    }
    std::env::var("COLUMNS").ok()?.trim().parse().ok()
}

impl Layout {
    /// Widths for `header` and the first `rows`, fitted into `total`
    /// characters when given.
    pub(super) fn fit(header: &[&str], rows: &[Vec<String>], total: Option<usize>) -> Layout {
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                let longest = cell.lines().map(|l| l.chars().count()).max().unwrap_or(0);
                *w = (*w).max(longest.min(MAX_COLUMN));
            }
        }
        if let Some(total) = total {
            let gaps = GAP as usize * header.len().saturating_sub(1);
            let floor: Vec<usize> = header
                .iter()
                .map(|h| h.chars().count().max(MIN_COLUMN))
                .collect();
            let over = |w: &[usize]| w.iter().sum::<usize>() + gaps > total;
            // The last column holds the free text of every list (domains,
            // errors, audit details): it wraps first, down to a readable
            // width, so ids and times stay on one line.
            if let Some(last) = widths.len().checked_sub(1) {
                let keep = floor[last].max(LAST_COLUMN_MIN).min(widths[last]);
                while over(&widths) && widths[last] > keep {
                    widths[last] -= 1;
                }
            }
            // Then shave the widest column one character at a time: the
            // columns that give way end up the same width, narrow ones stay.
            while over(&widths) {
                let Some((i, _)) = widths
                    .iter()
                    .enumerate()
                    .filter(|(i, w)| **w > floor[*i])
                    .max_by_key(|(_, w)| **w)
                else {
                    break; // Every column is at its floor: let the row run over.
                };
                widths[i] -= 1;
            }
        }
        Layout { widths }
    }

    /// The layout for printing to this process's terminal.
    pub(super) fn for_terminal(header: &[&str], rows: &[Vec<String>]) -> Layout {
        Layout::fit(header, rows, available_width())
    }

    /// `rows` (and the header, when given) as text, one line per table
    /// line, without trailing spaces.
    pub(super) fn render(&self, header: Option<&[&str]>, rows: Vec<Vec<String>>) -> String {
        let mut t = Table::new();
        t.load_style(comfy_table::presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled);
        if let Some(h) = header {
            t.set_header(h.to_vec());
        }
        if rows.is_empty() && header.is_none() {
            return String::new();
        }
        t.add_rows(rows);
        let last = self.widths.len().saturating_sub(1);
        for (i, w) in self.widths.iter().enumerate() {
            if let Some(c) = t.column_mut(i) {
                let right = if i == last { 0 } else { GAP };
                c.set_padding((0, right));
                let w = u16::try_from(*w).unwrap_or(u16::MAX).saturating_add(right);
                c.set_constraint(ColumnConstraint::Absolute(Width::Fixed(w)));
            }
        }
        let mut out = String::new();
        for line in t.lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A whole table at once (lists that are not paged, `show` details).
pub(super) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    Layout::for_terminal(header, &rows).render(Some(header), rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn columns_line_up_across_pages_and_long_cells_wrap() {
        let header = ["ID", "OUTCOME", "DETAIL"];
        let first = vec![
            row(&["1", "ok", "short"]),
            row(&["2", "refused", "also short"]),
        ];
        let layout = Layout::fit(&header, &first, Some(40));
        let page1 = layout.render(Some(&header), first);
        let long = "still in service on 1 deployment: dev-agent/files; revoke anyway with --force";
        let page2 = layout.render(None, vec![row(&["3", "refused", long])]);
        let detail_col = page1.lines().next().unwrap().find("DETAIL").unwrap();
        for line in page1.lines().chain(page2.lines()) {
            assert!(line.chars().count() <= 40, "{line:?} is wider than 40");
        }
        // The long cell wrapped onto more lines, each starting in the
        // DETAIL column the first page laid out.
        let lines: Vec<&str> = page2.lines().collect();
        assert!(lines.len() > 1, "{page2}");
        assert_eq!(lines[0].find("still"), Some(detail_col), "{page1}{page2}");
        assert_eq!(
            page1.lines().nth(1).unwrap().find("short"),
            Some(detail_col)
        );
    }

    #[test]
    fn a_narrow_terminal_squeezes_the_widest_column_first() {
        let header = ["ID", "DOMAINS"];
        let rows = vec![row(&["cert-1", &"d".repeat(50)])];
        let layout = Layout::fit(&header, &rows, Some(30));
        assert_eq!(layout.widths, vec![6, 22]);
        // The free-text last column wraps before ids and times do.
        let header = ["ID", "AT", "DETAIL"];
        let rows = vec![row(&[
            "cert-0123456789",
            "2026-12-01T01:00:52Z",
            &"x".repeat(60),
        ])];
        let layout = Layout::fit(&header, &rows, Some(80));
        assert_eq!(layout.widths, vec![15, 20, 41]);
    }
}
