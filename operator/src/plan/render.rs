//! A plan as text for terminals, as Markdown for a pull-request comment, and as JSON.
//!
//! The Markdown comment stays within GitHub's limit on a comment's body: risks first, then
//! head errors, the diagram, and the objects, each section cut by whole rows or objects
//! and saying how many were left out.

use std::fmt::Write as _;

use super::diff::{Action, FieldChange, ObjectChange};
use super::risks::Severity;
use super::topology::{Edge, Mark, NodeKind, Topology};
use super::{EXIT_NO_CHANGE, Plan};

/// GitHub refuses a comment body over this many characters; the comment is bounded in
/// bytes, which are never fewer.
pub const MAX_COMMENT: usize = 65_536;

/// The Markdown comment's first line, hidden when rendered: a workflow finds the comment it
/// posted before by it and updates that one instead of adding another.
pub const COMMENT_MARKER: &str = "<!-- shadowkeep plan -->";

/// What the risk table may take of the comment, so that objects still show.
const RISK_BUDGET: usize = 24_000;
/// What head errors may take.
const ERROR_BUDGET: usize = 8_000;
/// What the diagram may take; a larger one is left out and said so.
const DIAGRAM_BUDGET: usize = 12_000;
/// Room kept for the closing notes.
const RESERVE: usize = 600;

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// One line: what changes, the risks, whether the head is valid.
pub fn summary(plan: &Plan) -> String {
    let by = |a: Action| plan.changes.iter().filter(|c| c.action == a).count();
    let changes = if plan.changes.is_empty() {
        "no shadowkeep object changes".to_owned()
    } else {
        let invalid = match by(Action::Invalid) {
            0 => String::new(),
            n => format!(", {n} invalid in the head"),
        };
        format!(
            "{} change ({} added, {} removed, {} changed{invalid})",
            count(plan.changes.len(), "object", "objects"),
            by(Action::Added),
            by(Action::Removed),
            by(Action::Changed)
        )
    };
    let high = plan
        .risks
        .iter()
        .filter(|r| r.severity == Severity::High)
        .count();
    let risks = match plan.risks.len() {
        0 => "no risks".to_owned(),
        n => format!("{} ({high} high)", count(n, "risk", "risks")),
    };
    let head = if plan.head_errors.is_empty() {
        "head valid".to_owned()
    } else {
        format!(
            "head INVALID ({})",
            count(plan.head_errors.len(), "error", "errors")
        )
    };
    let ignored = match plan.head.ignored {
        0 => String::new(),
        n => format!(
            "; {} of other kinds ignored",
            count(n, "document", "documents")
        ),
    };
    format!("{changes}, {risks}, {head}{ignored}")
}

/// A word on a base that did not validate: what failed to decode there is unknown to the
/// diff, and shows as added.
fn base_note(plan: &Plan) -> Option<String> {
    (plan.base.errors > 0).then(|| {
        format!(
            "the base has {}; objects that did not decode there show as added",
            count(plan.base.errors, "validation error", "validation errors")
        )
    })
}

fn value(v: Option<&String>) -> &str {
    v.map_or("(unset)", String::as_str)
}

/// The lines of one object's diff, each starting with `+`, `-` or `~`.
fn object_lines(change: &ObjectChange) -> Vec<String> {
    let mut lines = Vec::new();
    let field_lines = |lines: &mut Vec<String>, indent: &str, fields: &[FieldChange]| {
        for f in fields {
            match (&f.before, &f.after) {
                (None, Some(a)) => lines.push(format!("+{indent}{}: {a}", f.path)),
                (Some(b), None) => lines.push(format!("-{indent}{}: {b}", f.path)),
                _ => {
                    lines.push(format!("-{indent}{}: {}", f.path, value(f.before.as_ref())));
                    lines.push(format!("+{indent}{}: {}", f.path, value(f.after.as_ref())));
                }
            }
        }
    };
    field_lines(&mut lines, " ", &change.fields);
    for drive in &change.drives {
        let sign = drive.action.sign();
        let row = drive
            .fields
            .iter()
            .map(|f| match drive.action {
                Action::Changed => format!(
                    "{}: {} → {}",
                    f.path,
                    value(f.before.as_ref()),
                    value(f.after.as_ref())
                ),
                _ => format!(
                    "{}: {}",
                    f.path,
                    value(f.after.as_ref().or(f.before.as_ref()))
                ),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let row = if row.is_empty() {
            String::new()
        } else {
            format!("  {row}")
        };
        lines.push(format!("{sign} drive {}{row}", drive.serial));
    }
    lines
}

fn heading(change: &ObjectChange) -> String {
    if change.action == Action::Invalid {
        return format!(
            "! {}: fails validation in the head (see the head errors)",
            change.object
        );
    }
    let fields = change.fields.len();
    let drives = change.drives.len();
    let mut parts = Vec::new();
    if fields > 0 {
        parts.push(count(fields, "field", "fields"));
    }
    if drives > 0 {
        parts.push(count(drives, "drive", "drives"));
    }
    format!(
        "{} {} ({}){}",
        change.action.sign(),
        change.object,
        change.file,
        if parts.is_empty() {
            String::new()
        } else {
            format!(": {}", parts.join(", "))
        }
    )
}

/// Text for a terminal: everything, uncut.
pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "shadowkeep plan: {} ({}) → {} ({})",
        plan.base.rev,
        short(&plan.base.commit),
        plan.head.rev,
        short(&plan.head.commit)
    );
    let _ = writeln!(out, "{}", summary(plan));
    if let Some(note) = base_note(plan) {
        let _ = writeln!(out, "note: {note}");
    }
    if !plan.risks.is_empty() {
        let _ = writeln!(out, "\nRisks:");
        for r in &plan.risks {
            let _ = writeln!(
                out,
                "  {:<6}  {}: {} [{}]",
                r.severity.to_string().to_uppercase(),
                r.object,
                r.message,
                r.code
            );
        }
    }
    if !plan.head_errors.is_empty() {
        let _ = writeln!(out, "\nHead errors:");
        for e in &plan.head_errors {
            let _ = writeln!(out, "  {}", error_line(e));
        }
    }
    if !plan.changes.is_empty() {
        let _ = writeln!(out, "\nChanges, in apply order:");
        for change in &plan.changes {
            let _ = writeln!(out, "{}", heading(change));
            for line in object_lines(change) {
                let (sign, rest) = line.split_at(1);
                let _ = writeln!(out, "  {sign} {}", rest.trim_start());
            }
        }
    }
    out
}

fn error_line(e: &super::HeadError) -> String {
    let mut line = format!("{}: error: ", e.file);
    if let Some(object) = &e.object {
        let _ = write!(line, "{object}: ");
    }
    if !e.field.is_empty() {
        let _ = write!(line, "{}: ", e.field);
    }
    line.push_str(&e.message);
    line
}

/// Text safe in a Markdown table cell.
fn cell(s: &str) -> String {
    html(s).replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Text safe in HTML (a `<summary>`) and in Markdown prose.
fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A code fence longer than any run of backticks in `body`, so nothing in a manifest can
/// close it early.
fn fence(body: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in body.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat((longest + 1).max(3))
}

/// Markdown for a pull-request comment, at most [`MAX_COMMENT`] bytes.
pub fn markdown(plan: &Plan) -> String {
    markdown_within(plan, MAX_COMMENT)
}

/// Markdown within `limit` bytes (which must leave room for the summary and the notes).
pub fn markdown_within(plan: &Plan, limit: usize) -> String {
    let mut out = format!("{COMMENT_MARKER}\n");
    let _ = writeln!(
        out,
        "**shadowkeep plan** `{}` ({}) → `{}` ({}): {}\n",
        cell(&plan.base.rev),
        short(&plan.base.commit),
        cell(&plan.head.rev),
        short(&plan.head.commit),
        html(&summary(plan))
    );
    if let Some(note) = base_note(plan) {
        let _ = writeln!(out, "_Note: {}._\n", html(&note));
    }
    if plan.exit_code == EXIT_NO_CHANGE {
        out.push_str("Nothing to review: the estate is the same at both revisions.\n");
        return out;
    }
    let mut notes = Vec::new();

    risk_table(plan, RISK_BUDGET.min(limit / 2), &mut out, &mut notes);
    error_table(plan, &mut out, &mut notes);
    if let Some(topology) = &plan.topology {
        let diagram = mermaid(topology);
        let block = format!("```mermaid\n{diagram}```\n\n");
        if block.len() <= DIAGRAM_BUDGET.min(limit.saturating_sub(out.len() + RESERVE)) {
            out.push_str(&block);
        } else {
            notes.push(format!(
                "the topology diagram ({} nodes) left out for size; `--format json` has it",
                topology.nodes.len()
            ));
        }
    }

    let mut left_out = 0;
    for change in &plan.changes {
        let body = object_lines(change).join("\n");
        let fence = fence(&body);
        let section = format!(
            "<details><summary><code>{}</code></summary>\n\n{fence}diff\n{body}\n{fence}\n\n</details>\n",
            html(&heading(change))
        );
        if out.len() + section.len() + RESERVE > limit {
            left_out += 1;
            continue;
        }
        out.push_str(&section);
    }
    if left_out > 0 {
        notes.push(format!(
            "{} of {} left out to stay within GitHub's {MAX_COMMENT}-character limit",
            count(left_out, "changed object", "changed objects"),
            plan.changes.len()
        ));
    }
    if !notes.is_empty() {
        let _ = write!(
            out,
            "\n_Cut: {}. Run `shadowkeep plan` (or `--format json`) for everything._\n",
            notes.join("; ")
        );
    }
    out
}

/// The risk table, its rows cut to `budget` bytes.
fn risk_table(plan: &Plan, budget: usize, out: &mut String, notes: &mut Vec<String>) {
    if plan.risks.is_empty() {
        return;
    }
    let mut table =
        String::from("| severity | object | what could be lost | risk |\n|---|---|---|---|\n");
    let mut shown = 0;
    for r in &plan.risks {
        let badge = match r.severity {
            Severity::High => "🔴 high",
            Severity::Medium => "🟠 medium",
            Severity::Low => "🟡 low",
        };
        let row = format!(
            "| {badge} | {} | {} | `{}` |\n",
            cell(&r.object.to_string()),
            cell(&r.message),
            r.code
        );
        if table.len() + row.len() > budget {
            break;
        }
        table.push_str(&row);
        shown += 1;
    }
    out.push_str(&table);
    out.push('\n');
    if shown < plan.risks.len() {
        notes.push(format!(
            "{} left out of the risk table",
            count(plan.risks.len() - shown, "risk", "risks")
        ));
    }
}

/// The head errors, cut to [`ERROR_BUDGET`] bytes.
fn error_table(plan: &Plan, out: &mut String, notes: &mut Vec<String>) {
    if plan.head_errors.is_empty() {
        return;
    }
    let mut table = String::from(
        "**The head is invalid**; `shadowkeep validate` on it says:\n\n| file | object | field | error |\n|---|---|---|---|\n",
    );
    let mut shown = 0;
    for e in &plan.head_errors {
        let row = format!(
            "| {} | {} | {} | {} |\n",
            cell(&e.file),
            cell(e.object.as_deref().unwrap_or("")),
            cell(&e.field),
            cell(&e.message)
        );
        if table.len() + row.len() > ERROR_BUDGET {
            break;
        }
        table.push_str(&row);
        shown += 1;
    }
    out.push_str(&table);
    out.push('\n');
    if shown < plan.head_errors.len() {
        notes.push(format!(
            "{} left out of the error table",
            count(plan.head_errors.len() - shown, "head error", "head errors")
        ));
    }
}

/// Mermaid label text: quotes and angle brackets as entities.
fn label(s: &str) -> String {
    s.replace('&', "#amp;")
        .replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

/// The topology as a Mermaid flowchart: Shadows grouped by zone, changed nodes and edges
/// styled, removed edges dashed.
pub fn mermaid(topology: &Topology) -> String {
    let mut out = String::from("flowchart LR\n");
    out.push_str("  classDef added stroke:#1a7f37,stroke-width:3px\n");
    out.push_str("  classDef removed stroke:#cf222e,stroke-width:3px,stroke-dasharray:5 5\n");
    out.push_str("  classDef changed stroke:#9a6700,stroke-width:3px\n");
    let node_line = |n: &super::topology::Node| {
        let text = label(&match n.mark {
            Mark::Added => format!("{} (added)", n.label),
            Mark::Removed => format!("{} (removed)", n.label),
            Mark::Changed => format!("{} (changed)", n.label),
            Mark::Unchanged => n.label.clone(),
        });
        match n.kind {
            NodeKind::KeyManager => format!("{}[\"{text}\"]", n.id),
            NodeKind::Shadow => format!("{}([\"{text}\"])", n.id),
            NodeKind::DriveTable | NodeKind::OtherTables => format!("{}[/\"{text}\"/]", n.id),
        }
    };
    for n in topology.nodes.iter().filter(|n| n.kind != NodeKind::Shadow) {
        let _ = writeln!(out, "  {}", node_line(n));
    }
    let mut zones: Vec<&str> = topology
        .nodes
        .iter()
        .filter_map(|n| n.zone.as_deref())
        .collect();
    zones.sort_unstable();
    zones.dedup();
    for (i, zone) in zones.iter().enumerate() {
        let _ = writeln!(out, "  subgraph zone{i}[\"zone {}\"]", label(zone));
        for n in topology
            .nodes
            .iter()
            .filter(|n| n.zone.as_deref() == Some(*zone))
        {
            let _ = writeln!(out, "    {}", node_line(n));
        }
        out.push_str("  end\n");
    }
    let mut styles = Vec::new();
    for (i, e) in topology.edges.iter().enumerate() {
        let _ = writeln!(out, "  {}", edge_line(e));
        let style = match e.mark {
            Mark::Added => "stroke:#1a7f37,stroke-width:3px",
            Mark::Removed => "stroke:#cf222e,stroke-width:3px,stroke-dasharray:5 5",
            Mark::Changed => "stroke:#9a6700,stroke-width:3px",
            Mark::Unchanged => continue,
        };
        styles.push(format!("  linkStyle {i} {style}"));
    }
    for s in styles {
        out.push_str(&s);
        out.push('\n');
    }
    for n in &topology.nodes {
        let class = match n.mark {
            Mark::Added => "added",
            Mark::Removed => "removed",
            Mark::Changed => "changed",
            Mark::Unchanged => continue,
        };
        let _ = writeln!(out, "  class {} {class}", n.id);
    }
    out
}

fn edge_line(e: &Edge) -> String {
    let text = label(&match e.mark {
        Mark::Added => format!("{} (added)", e.label),
        Mark::Removed => format!("{} (removed)", e.label),
        _ => e.label.clone(),
    });
    match e.mark {
        Mark::Removed => format!("{} -.->|\"{text}\"| {}", e.from, e.to),
        Mark::Changed => format!("{} ==>|\"{text}\"| {}", e.from, e.to),
        _ => format!("{} -->|\"{text}\"| {}", e.from, e.to),
    }
}

/// The plan as JSON, for tools: the same content as the other formats.
pub fn json(plan: &Plan) -> String {
    let mut text = serde_json::to_string_pretty(plan).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("failed to serialise the plan: {e}") }).to_string()
    });
    text.push('\n');
    text
}
