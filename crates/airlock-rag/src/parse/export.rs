//! JSON exports: Jira issues (the REST `search` output, or one issue) and Confluence pages
//! (the REST content output with `body.storage`, or one page). Each record is a document of
//! its own, identified by its key or id, with fields that rules may match.

use serde_json::Value;

use super::{Item, ParseLimits, sha256_hex, squeeze};
use crate::document::{Block, Location, Parsed};

pub(super) fn parse(bytes: &[u8], limits: &ParseLimits) -> Result<Vec<Item>, String> {
    // serde_json refuses nesting past 128 levels rather than overflowing the stack.
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let (kind, records): (&str, Vec<&Value>) = if let Some(issues) = value.get("issues") {
        ("jira", array(issues, "issues")?)
    } else if let Some(results) = value.get("results") {
        ("confluence", array(results, "results")?)
    } else if value.get("fields").is_some() && value.get("key").is_some() {
        ("jira", vec![&value])
    } else if value.pointer("/body/storage").is_some() {
        ("confluence", vec![&value])
    } else {
        return Err(
            "a JSON file that is neither a Jira issue export (\"issues\") nor a Confluence content export (\"results\" with body.storage)".into(),
        );
    };
    if records.len() > limits.max_export_documents {
        return Err(format!(
            "{} records, over the limit of {}",
            records.len(),
            limits.max_export_documents
        ));
    }
    records
        .into_iter()
        .enumerate()
        .map(|(n, record)| {
            let (key, parsed) = match kind {
                "jira" => jira(record, limits),
                _ => confluence(record, limits),
            }
            .map_err(|e| format!("record {}: {e}", n + 1))?;
            let canonical = serde_json::to_vec(record).map_err(|e| e.to_string())?;
            Ok(Item {
                key: Some(key),
                kind: kind.to_owned(),
                content_sha256: Some(sha256_hex(&canonical)),
                parsed,
            })
        })
        .collect()
}

fn array<'a>(value: &'a Value, name: &str) -> Result<Vec<&'a Value>, String> {
    value
        .as_array()
        .map(|a| a.iter().collect())
        .ok_or_else(|| format!("\"{name}\" is not a list"))
}

/// The child nodes of an Atlassian Document Format node.
fn children(node: &Value) -> impl Iterator<Item = &Value> {
    node.get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// Appends blocks made of running text: paragraphs split at blank lines.
fn text_blocks(text: &str, blocks: &mut Vec<Block>) {
    for paragraph in text.split("\n\n") {
        let text = squeeze(paragraph);
        if !text.is_empty() {
            let at = Location::Block {
                index: blocks.len() as u32 + 1,
            };
            blocks.push(Block::Text { text, at });
        }
    }
}

fn jira(issue: &Value, limits: &ParseLimits) -> Result<(String, Parsed), String> {
    let key = str_at(issue, "/key")
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .ok_or("an issue without a key")?
        .to_owned();
    let summary = str_at(issue, "/fields/summary").unwrap_or_default();
    let mut blocks = vec![Block::Heading {
        level: 1,
        text: squeeze(&format!("{key}: {summary}")),
        at: Location::Block { index: 1 },
    }];
    if let Some(description) = issue.pointer("/fields/description") {
        rich_text(description, &mut blocks, limits)?;
    }
    let comments = issue
        .pointer("/fields/comment/comments")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if !comments.is_empty() {
        blocks.push(Block::Heading {
            level: 2,
            text: "Comments".into(),
            at: Location::Block {
                index: blocks.len() as u32 + 1,
            },
        });
        for comment in comments {
            let author = str_at(comment, "/author/displayName").unwrap_or("someone");
            let mut body = Vec::new();
            if let Some(b) = comment.get("body") {
                rich_text(b, &mut body, limits)?;
            }
            let text: Vec<String> = body
                .iter()
                .map(|b| match b {
                    Block::Heading { text, .. }
                    | Block::Text { text, .. }
                    | Block::Code { text, .. } => text.clone(),
                    Block::Table { header, rows, .. } => {
                        let mut all = vec![header.join(" ")];
                        all.extend(rows.iter().map(|r| r.join(" ")));
                        all.join("; ")
                    }
                })
                .collect();
            text_blocks(&format!("{author}: {}", text.join(" ")), &mut blocks);
        }
    }
    let mut fields = Vec::new();
    for (name, pointer) in [
        ("project", "/fields/project/key"),
        ("security", "/fields/security/name"),
        ("issuetype", "/fields/issuetype/name"),
        ("status", "/fields/status/name"),
    ] {
        if let Some(value) = str_at(issue, pointer) {
            fields.push((name.to_owned(), value.to_owned()));
        }
    }
    if let Some(labels) = issue.pointer("/fields/labels").and_then(Value::as_array) {
        for label in labels.iter().filter_map(Value::as_str) {
            fields.push(("label".to_owned(), label.to_owned()));
        }
    }
    Ok((
        key,
        Parsed {
            title: Some(squeeze(summary)).filter(|s| !s.is_empty()),
            fields,
            blocks,
        },
    ))
}

fn confluence(page: &Value, limits: &ParseLimits) -> Result<(String, Parsed), String> {
    let id = match page.get("id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err("a page without an id".into()),
    };
    let storage = str_at(page, "/body/storage/value").ok_or("a page without body.storage.value")?;
    let mut parsed = super::html::parse(storage, limits)?;
    let title = str_at(page, "/title")
        .map(squeeze)
        .filter(|t| !t.is_empty());
    if let Some(title) = &title {
        parsed.blocks.insert(
            0,
            Block::Heading {
                level: 1,
                text: title.clone(),
                at: Location::Block { index: 0 },
            },
        );
        for (n, block) in parsed.blocks.iter_mut().enumerate() {
            renumber(block, n as u32 + 1);
        }
    }
    parsed.title = title;
    if let Some(space) = str_at(page, "/space/key") {
        parsed.fields.push(("space".into(), space.to_owned()));
    }
    Ok((id, parsed))
}

fn renumber(block: &mut Block, index: u32) {
    let at = match block {
        Block::Heading { at, .. }
        | Block::Text { at, .. }
        | Block::Code { at, .. }
        | Block::Table { at, .. } => at,
    };
    *at = Location::Block { index };
}

/// A Jira rich text field: wiki markup (a string) or an Atlassian Document Format tree.
fn rich_text(value: &Value, blocks: &mut Vec<Block>, limits: &ParseLimits) -> Result<(), String> {
    match value {
        Value::String(text) => {
            text_blocks(text, blocks);
            Ok(())
        }
        Value::Object(_) => adf(value, blocks, 0, limits),
        Value::Null => Ok(()),
        _ => Err("a rich text field that is neither text nor a document".into()),
    }
}

/// The text of an ADF node and its children, inline.
fn adf_inline(
    node: &Value,
    out: &mut String,
    depth: usize,
    limits: &ParseLimits,
) -> Result<(), String> {
    if depth > limits.max_nesting {
        return Err(format!(
            "document nodes nested more than {} deep",
            limits.max_nesting
        ));
    }
    match node.get("type").and_then(Value::as_str) {
        Some("text") => out.push_str(node.get("text").and_then(Value::as_str).unwrap_or("")),
        Some("hardBreak") => out.push(' '),
        Some("mention" | "emoji" | "status") => {
            out.push_str(str_at(node, "/attrs/text").unwrap_or(""));
        }
        Some("inlineCard") => out.push_str(str_at(node, "/attrs/url").unwrap_or("")),
        _ => {
            for child in children(node) {
                adf_inline(child, out, depth + 1, limits)?;
                if child.get("type").and_then(Value::as_str) == Some("paragraph") {
                    out.push(' ');
                }
            }
        }
    }
    Ok(())
}

/// Blocks of an ADF node.
fn adf(
    node: &Value,
    blocks: &mut Vec<Block>,
    depth: usize,
    limits: &ParseLimits,
) -> Result<(), String> {
    if depth > limits.max_nesting {
        return Err(format!(
            "document nodes nested more than {} deep",
            limits.max_nesting
        ));
    }
    let at = Location::Block {
        index: blocks.len() as u32 + 1,
    };
    let inline = |node: &Value| -> Result<String, String> {
        let mut text = String::new();
        adf_inline(node, &mut text, depth + 1, limits)?;
        Ok(squeeze(&text))
    };
    match node.get("type").and_then(Value::as_str) {
        Some("heading") => {
            let level = node
                .pointer("/attrs/level")
                .and_then(Value::as_u64)
                .unwrap_or(2)
                .clamp(1, 6) as u8;
            let text = inline(node)?;
            if !text.is_empty() {
                blocks.push(Block::Heading { level, text, at });
            }
        }
        Some("paragraph" | "listItem" | "blockquote" | "panel") => {
            let text = inline(node)?;
            if !text.is_empty() {
                blocks.push(Block::Text { text, at });
            }
        }
        Some("codeBlock") => {
            let mut text = String::new();
            adf_inline(node, &mut text, depth + 1, limits)?;
            if !text.trim().is_empty() {
                blocks.push(Block::Code { text, at });
            }
        }
        Some("table") => {
            let mut rows: Vec<Vec<String>> = Vec::new();
            let mut header = Vec::new();
            for row in children(node) {
                let cells: Vec<&Value> = children(row).collect();
                let is_header = cells
                    .iter()
                    .all(|c| c.get("type").and_then(Value::as_str) == Some("tableHeader"));
                let texts = cells
                    .iter()
                    .copied()
                    .map(inline)
                    .collect::<Result<Vec<_>, _>>()?;
                if is_header && header.is_empty() && rows.is_empty() {
                    header = texts;
                } else {
                    rows.push(texts);
                }
            }
            blocks.push(Block::Table { header, rows, at });
        }
        _ => {
            for child in children(node) {
                adf(child, blocks, depth + 1, limits)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jira_issues_become_documents_with_their_key_fields_and_comments() {
        let export = serde_json::json!({"issues": [{
            "key": "OPS-7",
            "fields": {
                "summary": "VPN drops at night",
                "description": {"type": "doc", "content": [
                    {"type": "heading", "attrs": {"level": 2}, "content": [{"type": "text", "text": "Symptoms"}]},
                    {"type": "paragraph", "content": [{"type": "text", "text": "Tunnel resets at 02:00."}]},
                    {"type": "table", "content": [
                        {"type": "tableRow", "content": [
                            {"type": "tableHeader", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "Host"}]}]},
                            {"type": "tableHeader", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "Drops"}]}]}]},
                        {"type": "tableRow", "content": [
                            {"type": "tableCell", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "gw1"}]}]},
                            {"type": "tableCell", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "4"}]}]}]}]}
                ]},
                "comment": {"comments": [{"author": {"displayName": "Ana"}, "body": "Rekey interval was 24h."}]},
                "security": {"name": "Staff"},
                "project": {"key": "OPS"}
            }
        }]});
        let items = parse(export.to_string().as_bytes(), &ParseLimits::default()).unwrap();
        assert_eq!(items.len(), 1);
        let item = &items[0];
        assert_eq!(item.key.as_deref(), Some("OPS-7"));
        assert_eq!(item.kind, "jira");
        assert!(
            item.parsed
                .fields
                .contains(&("security".into(), "Staff".into()))
        );
        let texts = format!("{:?}", item.parsed.blocks);
        assert!(texts.contains("OPS-7: VPN drops at night"));
        assert!(texts.contains("Tunnel resets at 02:00."));
        assert!(texts.contains("Ana: Rekey interval was 24h."));
        assert!(
            item.parsed
                .blocks
                .iter()
                .any(|b| matches!(b, Block::Table { header, .. } if header == &["Host", "Drops"]))
        );
    }

    #[test]
    fn confluence_pages_become_documents_with_their_space() {
        let export = serde_json::json!({"results": [{
            "id": "98765", "title": "Backup policy", "space": {"key": "OPS"},
            "body": {"storage": {"value": "<h2>Schedule</h2><p>Nightly at 01:00.</p>"}}
        }]});
        let items = parse(export.to_string().as_bytes(), &ParseLimits::default()).unwrap();
        let item = &items[0];
        assert_eq!(item.key.as_deref(), Some("98765"));
        assert_eq!(item.parsed.title.as_deref(), Some("Backup policy"));
        assert_eq!(item.parsed.fields, [("space".into(), "OPS".into())]);
        assert!(
            matches!(&item.parsed.blocks[0], Block::Heading { level: 1, text, .. } if text == "Backup policy")
        );
        assert!(
            matches!(&item.parsed.blocks[2], Block::Text { text, at: Location::Block { index: 3 } } if text == "Nightly at 01:00.")
        );
    }

    #[test]
    fn other_json_and_deep_json_are_refused_in_one_line() {
        let limits = ParseLimits::default();
        assert!(
            parse(br#"{"hello": 1}"#, &limits)
                .unwrap_err()
                .contains("neither")
        );
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(
            parse(deep.as_bytes(), &limits)
                .unwrap_err()
                .contains("not valid JSON")
        );
    }
}
