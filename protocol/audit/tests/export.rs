//! The offline verifier against an export built the way the aggregator writes one, and against every way of
//! tampering with it: it names the first bad entry by line and seq.

use gait_audit::merkle::consistency_proof;
use gait_audit::{
    Checkpoint, ConsistencyProof, Entry, EntryDraft, Frontier, MemoryTree, NoteSigner, Target,
    VerifyError, content_digest, verify_export, verify_extension,
};

const ORIGIN: &str = "gait-aggregator/example.org";

struct Export {
    signer: NoteSigner,
    lines: Vec<Vec<u8>>,
    tree: MemoryTree,
}

impl Export {
    fn new(n: u64) -> Self {
        let signer = NoteSigner::new(ORIGIN, &[7u8; 32]).unwrap();
        let mut out = Export {
            signer,
            lines: Vec::new(),
            tree: MemoryTree::new(),
        };
        for _ in 0..n {
            out.append();
        }
        out
    }

    fn append(&mut self) {
        let seq = self.lines.len() as u64;
        let prev = self.lines.last().map(|l| gait_audit::leaf_hash(l));
        let draft = EntryDraft {
            actor: "admin-token".into(),
            action: "bundle.publish".into(),
            target: Target::in_env("acme", "web", "prod", "bundle", seq.to_string()),
            before: None,
            after: Some(content_digest(&seq.to_be_bytes())),
            details: None,
        };
        let entry = Entry::new(draft, seq, 1_700_000_000_000 + seq as i64, prev.as_ref()).unwrap();
        let line = entry.to_line();
        self.tree.push(gait_audit::leaf_hash(&line));
        self.lines.push(line);
    }

    fn checkpoint(&self) -> String {
        Checkpoint {
            origin: ORIGIN.into(),
            size: self.tree.size(),
            root: self.tree.root(),
        }
        .sign(&self.signer)
        .unwrap()
    }

    fn entries(lines: &[Vec<u8>]) -> Vec<u8> {
        lines
            .iter()
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect()
    }

    fn verify(&self, lines: &[Vec<u8>]) -> Result<gait_audit::Verified, VerifyError> {
        verify_export(
            &self.signer.verifier(),
            self.checkpoint().as_bytes(),
            &Self::entries(lines),
        )
    }
}

fn edit(line: &[u8], from: &str, to: &str) -> Vec<u8> {
    String::from_utf8(line.to_vec())
        .unwrap()
        .replacen(from, to, 1)
        .into_bytes()
}

#[test]
fn an_untouched_export_verifies_and_frontier_matches_the_tree() {
    let ex = Export::new(10);
    let ok = ex.verify(&ex.lines).unwrap();
    assert_eq!((ok.size, ok.origin.as_str()), (10, ORIGIN));
    let mut f = Frontier::new();
    for l in &ex.lines {
        f.append(gait_audit::leaf_hash(l));
    }
    assert_eq!(f.root(), ex.tree.root());
    let empty = Export::new(0);
    assert_eq!(empty.verify(&[]).unwrap().size, 0);
}

#[test]
fn an_edited_entry_is_named_wherever_it_is() {
    let ex = Export::new(10);
    for k in 0..10usize {
        let mut lines = ex.lines.clone();
        lines[k] = edit(&lines[k], "admin-token", "admin-tokem");
        let err = ex.verify(&lines).unwrap_err();
        assert_eq!(
            err.first_bad_entry(),
            Some((k as u64 + 1, k as u64)),
            "{err}"
        );
    }
}

#[test]
fn a_deleted_or_moved_entry_is_named() {
    let ex = Export::new(10);
    let mut deleted = ex.lines.clone();
    deleted.remove(4);
    assert_eq!(
        ex.verify(&deleted).unwrap_err().first_bad_entry(),
        Some((5, 4))
    );
    let mut swapped = ex.lines.clone();
    swapped.swap(2, 6);
    assert_eq!(
        ex.verify(&swapped).unwrap_err().first_bad_entry(),
        Some((3, 2))
    );
    let truncated = &ex.lines[..9];
    let err = ex.verify(truncated).unwrap_err();
    assert!(
        matches!(err, VerifyError::Missing { found: 9, size: 10 }),
        "{err}"
    );
    assert_eq!(err.first_bad_entry(), Some((10, 9)));
}

#[test]
fn a_reformatted_line_or_a_foreign_checkpoint_is_refused() {
    let ex = Export::new(3);
    let mut lines = ex.lines.clone();
    lines[1] = edit(&lines[1], "\"actor\"", " \"actor\"");
    assert_eq!(
        ex.verify(&lines).unwrap_err().first_bad_entry(),
        Some((2, 1))
    );
    let other = NoteSigner::new(ORIGIN, &[8u8; 32]).unwrap();
    let err = verify_export(
        &other.verifier(),
        ex.checkpoint().as_bytes(),
        &Export::entries(&ex.lines),
    )
    .unwrap_err();
    assert!(matches!(err, VerifyError::Checkpoint(_)), "{err}");
}

#[test]
fn a_consistency_proof_links_two_checkpoints_and_fails_after_a_rewrite() {
    let mut ex = Export::new(5);
    let old = ex.checkpoint();
    for _ in 0..7 {
        ex.append();
    }
    let new = ex.checkpoint();
    let proof = ConsistencyProof {
        old: 5,
        new: 12,
        hashes: consistency_proof(&ex.tree, 5, 12).unwrap(),
    };
    let parsed = ConsistencyProof::parse(&proof.to_text()).unwrap();
    assert_eq!(parsed, proof);
    let v = ex.signer.verifier();
    verify_extension(&v, old.as_bytes(), new.as_bytes(), &proof).unwrap();

    // Rewrite entry 2 and re-sign: the new checkpoint is valid on its own but does not extend the old one.
    let mut rewritten = MemoryTree::new();
    for (i, l) in ex.lines.iter().enumerate() {
        let l = if i == 2 {
            edit(l, "admin-token", "someone-else")
        } else {
            l.clone()
        };
        rewritten.push(gait_audit::leaf_hash(&l));
    }
    let forged = Checkpoint {
        origin: ORIGIN.into(),
        size: 12,
        root: rewritten.root(),
    }
    .sign(&ex.signer)
    .unwrap();
    let forged_proof = ConsistencyProof {
        old: 5,
        new: 12,
        hashes: consistency_proof(&rewritten, 5, 12).unwrap(),
    };
    let err = verify_extension(&v, old.as_bytes(), forged.as_bytes(), &forged_proof).unwrap_err();
    assert_eq!(err, VerifyError::NotAnExtension { old: 5, new: 12 });
}
