//! RFC 6962 Merkle tree hashing, proofs (RFC 6962 §2.1.1–2.1.2) and their verification
//! (RFC 9162 §2.1.3.2 and §2.1.4.2).
//!
//! Leaves are hashed as `SHA-256(0x00 || entry)` and interior nodes as
//! `SHA-256(0x01 || left || right)`, so a leaf can never be passed off as a node.

use sha2::{Digest, Sha256};

/// A SHA-256 tree hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`: the hash of one leaf.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256()` of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly smaller than `n` (`n >= 2`): RFC 6962's split point.
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// MTH(D[n]) over already-hashed leaves.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]): the audit path proving leaf `index` is in the tree over `leaves`.
///
/// Returns `None` when `index` is not a leaf of the tree.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    path(index, leaves, &mut proof);
    Some(proof)
}

fn path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &leaves[..k], out);
        out.push(root(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], out);
        out.push(root(&leaves[..k]));
    }
}

/// PROOF(m, D[n]): proves the tree of the first `old_size` leaves is a prefix of the tree
/// over all `leaves`. Returns `None` unless `0 < old_size <= leaves.len()`.
pub fn consistency_proof(leaves: &[Hash], old_size: usize) -> Option<Vec<Hash>> {
    if old_size == 0 || old_size > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    subproof(old_size, leaves, true, &mut proof);
    Some(proof)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            out.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, out);
        out.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(root(&leaves[..k]));
    }
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
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

/// Checks a consistency proof between two tree heads (RFC 9162 §2.1.4.2).
///
/// Equal sizes are consistent only with an empty proof and equal roots; the empty tree is a
/// prefix of every tree.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
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
    fr == *old_root && sr == *new_root && sn == 0
}

/// The right edge of a growing tree: one root per perfect subtree, largest first, so a leaf
/// is appended and the root recomputed in O(log n) without keeping every leaf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees, whose sizes are the set bits of `size`, largest first.
    subtrees: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut carry = leaf;
        // Merge equal-sized subtrees exactly as binary addition carries.
        let mut merges = self.size.trailing_ones();
        while merges > 0 {
            let Some(left) = self.subtrees.pop() else {
                break;
            };
            carry = node_hash(&left, &carry);
            merges -= 1;
        }
        self.subtrees.push(carry);
        self.size += 1;
    }

    /// Rebuilds a frontier from its size and subtree roots (largest first), as stored by
    /// [`Frontier::subtrees`]. `None` if their number does not match the size.
    pub fn from_parts(size: u64, subtrees: Vec<Hash>) -> Option<Self> {
        (subtrees.len() == size.count_ones() as usize).then_some(Self { size, subtrees })
    }

    /// Roots of the perfect subtrees, largest first.
    pub fn subtrees(&self) -> &[Hash] {
        &self.subtrees
    }

    /// MTH of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.subtrees.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("entry {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn known_answer_from_rfc6962_test_vectors() {
        // The certificate-transparency reference vectors: leaves are these byte strings.
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let hashed: Vec<Hash> = inputs.iter().map(|d| leaf_hash(d)).collect();
        assert_eq!(
            hex::encode(root(&hashed)),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(root(&hashed[..1])),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn frontier_root_equals_recursive_root_for_every_size_up_to_130() {
        let all = leaves(130);
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), empty_root());
        for (i, leaf) in all.iter().enumerate() {
            frontier.push(*leaf);
            assert_eq!(frontier.root(), root(&all[..=i]), "size {}", i + 1);
        }
    }

    #[test]
    fn every_inclusion_and_consistency_proof_up_to_40_leaves_verifies() {
        let all = leaves(40);
        for n in 1..=all.len() {
            let tree = &all[..n];
            let r = root(tree);
            for i in 0..n {
                let proof = inclusion_proof(tree, i).unwrap();
                assert!(verify_inclusion(&tree[i], i as u64, n as u64, &proof, &r));
                assert!(
                    !verify_inclusion(&tree[(i + 1) % n], i as u64, n as u64, &proof, &r) || n == 1
                );
            }
            for m in 1..=n {
                let proof = consistency_proof(tree, m).unwrap();
                let old = root(&tree[..m]);
                assert!(
                    verify_consistency(m as u64, n as u64, &old, &r, &proof),
                    "{m}->{n}"
                );
                if m < n {
                    let wrong = leaf_hash(b"forged");
                    assert!(!verify_consistency(m as u64, n as u64, &wrong, &r, &proof));
                    assert!(!verify_consistency(
                        m as u64, n as u64, &old, &wrong, &proof
                    ));
                }
            }
        }
    }

    proptest! {
        #[test]
        fn a_tampered_proof_never_verifies(n in 2usize..200, i in 0usize..200, flip in 0usize..8) {
            let all = leaves(n);
            let i = i % n;
            let r = root(&all);
            let mut proof = inclusion_proof(&all, i).unwrap();
            let j = flip % proof.len();
            proof[j][0] ^= 1;
            prop_assert!(!verify_inclusion(&all[i], i as u64, n as u64, &proof, &r));
        }
    }
}
