//! The Merkle tree of RFC 9162 §2.1 over the audit log's leaves: tree hashes, inclusion and consistency proofs
//! (generation and verification), and [`Frontier`], the compact state an appender keeps.
//!
//! # Stored subtrees instead of recomputation
//! Every subtree that appears in the RFC's recursion over a tree of `n` leaves either is a *complete aligned
//! subtree* — `2^level` leaves starting at a multiple of `2^level`, named by a [`NodeId`] — or lies on the
//! tree's right edge, where its hash is the right fold of at most `log2(n)` complete aligned subtrees (the binary
//! decomposition of its size, largest first). A complete subtree never changes once its last leaf is appended,
//! so a log can store each one's hash when it completes ([`Frontier::append`] returns them) and answer every
//! proof from `O(log n)` stored hashes ([`NodeSource`]) without recomputing anything over the leaves.

use crate::hash::{Hash, empty_root, node_hash};

/// A complete aligned subtree: the `2^level` leaves starting at `index * 2^level`. Level 0 is a single leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height of the subtree: it covers `2^level` leaves.
    pub level: u8,
    /// Position among the subtrees of that height, counted from the left.
    pub index: u64,
}

impl NodeId {
    /// The first leaf the subtree covers.
    pub fn first_leaf(self) -> u64 {
        self.index << self.level
    }
}

/// Hashes of complete aligned subtrees, as a log stores them.
pub trait NodeSource {
    /// Why a node could not be read.
    type Error;
    /// The hash of the complete subtree `id`.
    fn node(&self, id: NodeId) -> Result<Hash, Self::Error>;
}

/// Why a proof or a tree hash could not be produced.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError<E> {
    /// The requested sizes or index do not fit the tree.
    #[error("{0}")]
    Range(String),
    /// The node source failed.
    #[error("reading a stored subtree hash: {0}")]
    Source(E),
}

/// The largest power of two strictly below `n` (`n >= 2`): where RFC 9162 splits a tree of `n` leaves.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The complete aligned subtrees whose right fold is the RFC 9162 hash of the leaves `[start, end)`, largest
/// first. `start` must be aligned as every subtree of the RFC recursion is (a multiple of the smallest power of
/// two not below `end - start`); each call site here guarantees it.
pub fn range_nodes(start: u64, end: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let remaining = end - at;
        let fits = 63 - remaining.leading_zeros();
        let aligned = at.trailing_zeros().min(63);
        let level = fits.min(aligned) as u8;
        out.push(NodeId {
            level,
            index: at >> level,
        });
        at += 1u64 << level;
    }
    out
}

/// The right fold `h0 ‖ (h1 ‖ (… ‖ hk))` of subtree hashes listed largest first, as RFC 9162 combines the
/// complete subtrees of a right edge. The empty list folds to the empty tree's root.
pub fn fold(hashes: &[Hash]) -> Hash {
    let Some((last, rest)) = hashes.split_last() else {
        return empty_root();
    };
    rest.iter()
        .rev()
        .fold(*last, |acc, left| node_hash(left, &acc))
}

/// The leaf ranges whose tree hashes make up the inclusion proof of leaf `index` in a tree of `size` leaves, in
/// proof order (from the leaf's sibling up to the root's child).
pub fn inclusion_ranges(index: u64, size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let k = split(hi - lo);
        if index < lo + k {
            out.push((lo + k, hi));
            hi = lo + k;
        } else {
            out.push((lo, lo + k));
            lo += k;
        }
    }
    out.reverse();
    out
}

/// The leaf ranges whose tree hashes make up the consistency proof from a tree of `old` leaves to one of `new`
/// leaves (RFC 9162 §2.1.4.1), in proof order. Empty when `old` is 0 or equals `new`.
pub fn consistency_ranges(old: u64, new: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    if old == 0 || old >= new {
        return out;
    }
    let (mut lo, mut hi) = (0u64, new);
    let mut m = old;
    let mut complete = true;
    loop {
        let n = hi - lo;
        if m == n {
            if !complete {
                out.push((lo, hi));
            }
            break;
        }
        let k = split(n);
        if m <= k {
            out.push((lo + k, hi));
            hi = lo + k;
        } else {
            out.push((lo, lo + k));
            lo += k;
            m -= k;
            complete = false;
        }
    }
    out.reverse();
    out
}

/// Every stored subtree a proof over `ranges` reads, so a caller can fetch them in one go.
pub fn nodes_for(ranges: &[(u64, u64)]) -> Vec<NodeId> {
    ranges
        .iter()
        .flat_map(|&(start, end)| range_nodes(start, end))
        .collect()
}

fn range_hash<S: NodeSource>(
    source: &S,
    start: u64,
    end: u64,
) -> Result<Hash, ProofError<S::Error>> {
    let hashes = range_nodes(start, end)
        .into_iter()
        .map(|id| source.node(id).map_err(ProofError::Source))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(fold(&hashes))
}

/// The root hash of the first `size` leaves.
pub fn root<S: NodeSource>(source: &S, size: u64) -> Result<Hash, ProofError<S::Error>> {
    range_hash(source, 0, size)
}

/// The inclusion proof (RFC 9162 §2.1.3.1) of leaf `index` in the tree of the first `size` leaves.
pub fn inclusion_proof<S: NodeSource>(
    source: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if index >= size {
        return Err(ProofError::Range(format!(
            "leaf {index} is not in a tree of {size} leaves"
        )));
    }
    inclusion_ranges(index, size)
        .into_iter()
        .map(|(start, end)| range_hash(source, start, end))
        .collect()
}

/// The consistency proof (RFC 9162 §2.1.4.1) that the tree of the first `new` leaves extends the tree of the
/// first `old` leaves.
pub fn consistency_proof<S: NodeSource>(
    source: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if old > new {
        return Err(ProofError::Range(format!(
            "a tree of {old} leaves cannot be extended by one of {new}"
        )));
    }
    consistency_ranges(old, new)
        .into_iter()
        .map(|(start, end)| range_hash(source, start, end))
        .collect()
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2): is `leaf` the leaf at `index` of the tree of `size` leaves
/// whose root is `root`?
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2): does the tree of `new` leaves with root `new_root` extend
/// the tree of `old` leaves with root `old_root`? The degenerate cases follow RFC 9162: equal sizes need equal
/// roots and an empty proof, and the empty tree (whose root is SHA-256 of nothing) is extended by every tree
/// with an empty proof.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty() && *old_root == empty_root();
    }
    let Some(first) = proof.first() else {
        return false;
    };
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    let mut start = first;
    let mut rest = &proof[1..];
    if old.is_power_of_two() {
        start = old_root;
        rest = proof;
    }
    path.extend(rest);
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*start, *start);
    for c in path {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && fr == *old_root && sr == *new_root
}

/// The right edge of a growing tree: the hashes of the complete aligned subtrees that make up the first `size`
/// leaves, largest first (one per set bit of `size`). It is all an appender needs to add a leaf, report the
/// subtrees that leaf completes, and compute the root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

/// Why stored frontier bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "frontier of a {size}-leaf tree must hold {expected} hashes ({expected}×32 bytes), found {found} bytes"
)]
pub struct FrontierError {
    size: u64,
    expected: u32,
    found: usize,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a frontier from its size and [`Frontier::to_bytes`].
    pub fn from_bytes(size: u64, bytes: &[u8]) -> Result<Self, FrontierError> {
        let expected = size.count_ones();
        if bytes.len() != expected as usize * 32 {
            return Err(FrontierError {
                size,
                expected,
                found: bytes.len(),
            });
        }
        let hashes = bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(Self { size, hashes })
    }

    /// The subtree hashes concatenated, largest first.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.hashes.concat()
    }

    /// How many leaves the tree holds.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree's root hash.
    pub fn root(&self) -> Hash {
        fold(&self.hashes)
    }

    /// Appends the leaf whose hash is `leaf` and returns every complete subtree it completes, the leaf itself
    /// (level 0) first, then each parent up to the largest.
    pub fn append(&mut self, leaf: Hash) -> Vec<(NodeId, Hash)> {
        let mut created = vec![(
            NodeId {
                level: 0,
                index: self.size,
            },
            leaf,
        )];
        let mut index = self.size;
        let mut level = 0u8;
        let mut hash = leaf;
        while index & 1 == 1 {
            let Some(left) = self.hashes.pop() else {
                break;
            };
            hash = node_hash(&left, &hash);
            index >>= 1;
            level += 1;
            created.push((NodeId { level, index }, hash));
        }
        self.hashes.push(hash);
        self.size += 1;
        created
    }
}

/// A whole tree in memory: every complete subtree's hash, level by level. For verifiers, tests and benchmarks;
/// a log on disk stores the same nodes in its database.
#[derive(Clone, Debug, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
    frontier: Frontier,
}

/// A node a [`MemoryTree`] does not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no complete subtree at level {} index {}", .0.level, .0.index)]
pub struct MissingNode(pub NodeId);

impl MemoryTree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf by its hash.
    pub fn push(&mut self, leaf: Hash) {
        for (id, hash) in self.frontier.append(leaf) {
            let level = usize::from(id.level);
            if self.levels.len() <= level {
                self.levels.resize_with(level + 1, Vec::new);
            }
            self.levels[level].push(hash);
        }
    }

    /// How many leaves the tree holds.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The root hash of the whole tree.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }
}

impl NodeSource for MemoryTree {
    type Error = MissingNode;

    fn node(&self, id: NodeId) -> Result<Hash, MissingNode> {
        usize::try_from(id.index)
            .ok()
            .and_then(|i| self.levels.get(usize::from(id.level))?.get(i))
            .copied()
            .ok_or(MissingNode(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;

    /// RFC 9162's recursive definition, written the slow way, to check the stored-subtree shortcut against.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    #[test]
    fn stored_subtrees_give_the_recursive_definitions_root_for_every_size() {
        let mut tree = MemoryTree::new();
        let mut leaves = Vec::new();
        for i in 0..300u32 {
            assert_eq!(tree.root(), reference_root(&leaves), "size {i}");
            assert_eq!(root(&tree, u64::from(i)), Ok(reference_root(&leaves)));
            let leaf = leaf_hash(&i.to_be_bytes());
            leaves.push(leaf);
            tree.push(leaf);
        }
        for size in 0..=300usize {
            assert_eq!(
                root(&tree, size as u64),
                Ok(reference_root(&leaves[..size]))
            );
        }
    }

    #[test]
    fn frontier_survives_its_byte_form_and_refuses_a_wrong_length() {
        let mut f = Frontier::new();
        for i in 0..13u8 {
            f.append(leaf_hash(&[i]));
        }
        let back = Frontier::from_bytes(13, &f.to_bytes()).unwrap();
        assert_eq!(back, f);
        assert!(Frontier::from_bytes(16, &f.to_bytes()).is_err());
    }

    #[test]
    fn proofs_outside_the_tree_are_refused() {
        let mut tree = MemoryTree::new();
        tree.push(leaf_hash(b"a"));
        assert!(matches!(
            inclusion_proof(&tree, 1, 1),
            Err(ProofError::Range(_))
        ));
        assert!(matches!(
            consistency_proof(&tree, 2, 1),
            Err(ProofError::Range(_))
        ));
        assert!(matches!(root(&tree, 2), Err(ProofError::Source(_))));
    }
}
