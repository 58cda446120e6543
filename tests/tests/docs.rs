//! The documentation stays true to the tree: every relative Markdown link in the README, `docs/`, `deploy/` and
//! the schema READMEs points at a file or directory that exists inside this repository.

use std::path::{Component, Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    let mut stack = vec![root.join("docs"), root.join("deploy"), root.join("schemas")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    out
}

/// The targets of `[text](target)` links in `text`, without titles and anchors.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split_whitespace().next().unwrap_or("");
        let target = target.split('#').next().unwrap_or("");
        if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
            out.push(target.to_owned());
        }
        rest = &rest[end..];
    }
    out
}

/// `path` with `.` and `..` folded away lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn every_relative_markdown_link_resolves_inside_the_repository() {
    let root = repo_root();
    let files = markdown_files(&root);
    assert!(files.len() > 5, "found only {files:?}");
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable Markdown");
        let dir = file.parent().expect("file has a directory");
        for target in link_targets(&text) {
            let resolved = normalize(&dir.join(&target));
            if !resolved.starts_with(&root) {
                broken.push(format!(
                    "{}: {target} leaves the repository",
                    file.display()
                ));
            } else if !resolved.exists() {
                broken.push(format!("{}: {target} does not exist", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_scanner_sees_links_titles_and_anchors() {
    let found = link_targets(
        "a [x](docs/a.md#part) b [y](https://e.x) [z](../up.md \"t\") [m](mailto:a@b)",
    );
    assert_eq!(found, ["docs/a.md", "../up.md"]);
}
