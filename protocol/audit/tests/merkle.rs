//! The Merkle code against the RFC 6962 test vectors (as the Certificate Transparency implementations publish
//! them) and property tests: every proof of random sizes verifies, a flipped byte does not.

use gait_audit::hash::{from_hex, leaf_hash};
use gait_audit::merkle::{
    MemoryTree, consistency_proof, inclusion_proof, root, verify_consistency, verify_inclusion,
};
use gait_audit::{Hash, empty_root};
use proptest::prelude::*;

const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// Roots of the trees of the first 1..=8 leaves.
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn h(text: &str) -> Hash {
    from_hex(text).expect("test vector hash")
}

fn vector_tree() -> MemoryTree {
    let mut tree = MemoryTree::new();
    for leaf in LEAVES {
        tree.push(leaf_hash(&hex::decode(leaf).unwrap()));
    }
    tree
}

#[test]
fn roots_match_the_rfc6962_vectors() {
    let tree = vector_tree();
    assert_eq!(
        hex::encode(root(&tree, 0).unwrap()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(root(&tree, 0).unwrap(), empty_root());
    for (i, want) in ROOTS.iter().enumerate() {
        assert_eq!(
            hex::encode(root(&tree, i as u64 + 1).unwrap()),
            *want,
            "size {}",
            i + 1
        );
    }
}

#[test]
fn inclusion_proofs_match_the_vectors_and_verify() {
    let tree = vector_tree();
    let cases: [(u64, u64, &[&str]); 4] = [
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (index, size, want) in cases {
        let proof = inclusion_proof(&tree, index, size).unwrap();
        let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
        assert_eq!(proof, want, "inclusion of {index} in {size}");
        let leaf = leaf_hash(&hex::decode(LEAVES[index as usize]).unwrap());
        let root = h(ROOTS[size as usize - 1]);
        assert!(verify_inclusion(index, size, &leaf, &proof, &root));
    }
}

#[test]
fn consistency_proofs_match_the_vectors_and_verify() {
    let tree = vector_tree();
    let cases: [(u64, u64, &[&str]); 3] = [
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            2,
            8,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    for (old, new, want) in cases {
        let proof = consistency_proof(&tree, old, new).unwrap();
        let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
        assert_eq!(proof, want, "consistency {old} -> {new}");
        let (r1, r2) = (h(ROOTS[old as usize - 1]), h(ROOTS[new as usize - 1]));
        assert!(verify_consistency(old, new, &r1, &r2, &proof));
        assert!(!verify_consistency(old, new, &r2, &r1, &proof));
    }
    // The degenerate cases: equal sizes, and the empty tree.
    let r4 = h(ROOTS[3]);
    assert!(verify_consistency(4, 4, &r4, &r4, &[]));
    assert!(!verify_consistency(4, 4, &r4, &h(ROOTS[4]), &[]));
    assert!(!verify_consistency(4, 4, &r4, &r4, &[r4]));
    assert!(verify_consistency(0, 8, &empty_root(), &h(ROOTS[7]), &[]));
    assert!(!verify_consistency(0, 8, &h(ROOTS[0]), &h(ROOTS[7]), &[]));
    assert!(!verify_consistency(8, 6, &h(ROOTS[7]), &h(ROOTS[5]), &[]));
}

fn random_tree(size: u64, salt: u64) -> MemoryTree {
    let mut tree = MemoryTree::new();
    for i in 0..size {
        tree.push(leaf_hash(&[salt.to_be_bytes(), i.to_be_bytes()].concat()));
    }
    tree
}

fn flip(proof: &mut [Hash], which: usize, bit: u8) {
    let n = proof.len();
    proof[which % n][usize::from(bit) % 32] ^= 1 << (bit % 8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_inclusion_proof_verifies_and_a_flipped_byte_does_not(
        size in 1u64..600, pick in any::<u64>(), salt in any::<u64>(), which in any::<usize>(), bit in any::<u8>(),
    ) {
        let tree = random_tree(size, salt);
        let index = pick % size;
        let leaf = leaf_hash(&[salt.to_be_bytes(), index.to_be_bytes()].concat());
        let root = tree.root();
        let mut proof = inclusion_proof(&tree, index, size).unwrap();
        prop_assert!(verify_inclusion(index, size, &leaf, &proof, &root));
        let mut bad_leaf = leaf;
        bad_leaf[usize::from(bit) % 32] ^= 1 << (bit % 8);
        prop_assert!(!verify_inclusion(index, size, &bad_leaf, &proof, &root));
        if !proof.is_empty() {
            prop_assert!(!verify_inclusion(index, size, &leaf, &proof[1..], &root));
            flip(&mut proof, which, bit);
            prop_assert!(!verify_inclusion(index, size, &leaf, &proof, &root));
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_a_flipped_byte_does_not(
        new in 1u64..600, pick in any::<u64>(), salt in any::<u64>(), which in any::<usize>(), bit in any::<u8>(),
    ) {
        let tree = random_tree(new, salt);
        let old = pick % (new + 1);
        let old_root = root(&tree, old).unwrap();
        let new_root = tree.root();
        let mut proof = consistency_proof(&tree, old, new).unwrap();
        prop_assert!(verify_consistency(old, new, &old_root, &new_root, &proof));
        let mut other = old_root;
        other[usize::from(bit) % 32] ^= 1 << (bit % 8);
        prop_assert!(!verify_consistency(old, new, &other, &new_root, &proof));
        if !proof.is_empty() {
            flip(&mut proof, which, bit);
            prop_assert!(!verify_consistency(old, new, &old_root, &new_root, &proof));
        }
        // A tree that differs in one of the old leaves is not an extension.
        if old > 0 {
            let mut rewritten = MemoryTree::new();
            for i in 0..new {
                let data = [salt.to_be_bytes(), i.to_be_bytes()].concat();
                let mut leaf = leaf_hash(&data);
                if i == pick % old { leaf[0] ^= 1; }
                rewritten.push(leaf);
            }
            let rewritten_proof = consistency_proof(&rewritten, old, new).unwrap();
            prop_assert!(!verify_consistency(old, new, &old_root, &rewritten.root(), &rewritten_proof));
        }
    }
}
