//! RFC 6962 / RFC 9162 hashing: the leaf and interior-node hashes of the audit log's Merkle tree.

use sha2::{Digest, Sha256};

/// A SHA-256 hash: a leaf, an interior node or a tree root.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ data)`: the hash of one leaf (RFC 6962 §2.1), `data` being an entry's line bytes.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`: the hash of an interior node (RFC 6962 §2.1).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root hash of the empty tree: `SHA-256()` of no bytes.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// A hash as 64 lowercase hex characters.
pub fn to_hex(hash: &Hash) -> String {
    hex::encode(hash)
}

/// A hash from 64 hex characters (either case); `None` for anything else.
pub fn from_hex(text: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}
