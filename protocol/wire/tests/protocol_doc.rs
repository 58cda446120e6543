//! `docs/protocol.md` is rendered from the `gait-wire` crate documentation (the `//!` header of
//! `src/lib.rs`), the one description of the exchange. This test fails when the file is stale; regenerate it
//! with `GAIT_UPDATE_PROTOCOL_DOC=1 cargo test -p gait-wire --test protocol_doc` and commit both.

use std::path::PathBuf;

const HEADER: &str = "<!-- Generated from the module docs of protocol/wire/src/lib.rs by \
protocol/wire/tests/protocol_doc.rs. Do not edit: change the module docs and run \
GAIT_UPDATE_PROTOCOL_DOC=1 cargo test -p gait-wire --test protocol_doc -->\n\n\
# The agent <-> aggregator protocol\n\n";

/// Markdown for the crate docs: `//!` prefixes removed, headings one level down, intra-doc links
/// (``[`Name`]``) turned into code spans.
fn render(lib_rs: &str) -> String {
    let mut out = String::from(HEADER);
    for line in lib_rs.lines().take_while(|l| l.starts_with("//!")) {
        let text = line
            .strip_prefix("//! ")
            .unwrap_or_else(|| line.trim_start_matches("//!"));
        let text = if text.starts_with('#') {
            format!("#{text}")
        } else {
            text.to_owned()
        };
        out.push_str(&text.replace("[`", "`").replace("`]", "`"));
        out.push('\n');
    }
    out
}

#[test]
fn docs_protocol_md_matches_the_crate_docs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let lib_rs = std::fs::read_to_string(root.join("src/lib.rs")).expect("read src/lib.rs");
    let rendered = render(&lib_rs);
    let doc_path = root.join("../../docs/protocol.md");
    if std::env::var_os("GAIT_UPDATE_PROTOCOL_DOC").is_some() {
        std::fs::write(&doc_path, &rendered).expect("write docs/protocol.md");
    }
    let on_disk = std::fs::read_to_string(&doc_path).unwrap_or_default();
    assert!(
        on_disk == rendered,
        "docs/protocol.md is stale: run GAIT_UPDATE_PROTOCOL_DOC=1 cargo test -p gait-wire --test \
         protocol_doc and commit the result"
    );
}

#[test]
fn rendering_strips_doc_prefixes_and_links() {
    let md = render("//! A [`Record`] line.\n//!\n//! # Part\nfn x() {}\n//! not docs\n");
    assert!(md.ends_with("A `Record` line.\n\n## Part\n"), "{md}");
}
