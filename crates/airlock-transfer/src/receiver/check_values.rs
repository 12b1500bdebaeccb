//! Block check values that arrived ahead of their blocks, at most a fixed number of them.
//!
//! The sender repeats each group's table three times a pass, just before, amid and after the
//! group's symbols, so the receiver needs a value only for the few blocks it is gathering.
//! Anyone upstream of the diode can forge tables for an accepted session (the CRC is not a
//! MAC), so the table must not grow with what arrives: past its capacity the oldest value is
//! forgotten, and its block waits for the next copy or pass.

use std::collections::{HashMap, VecDeque};

use crate::packet::BlockHash;

/// Most check values held, whatever the bundle: about 1 MiB with the queue beside them. A
/// genuine session needs one per block it is gathering: a few hundred with the default budget.
pub(super) const MAX_CHECK_VALUES: usize = 1 << 14;

/// Check values by block, forgetting the oldest past `capacity`.
pub(super) struct CheckValues {
    /// The value of each block, with the stamp of its entry in `order`.
    values: HashMap<u32, (BlockHash, u64)>,
    /// Blocks in the order their values came; an entry whose stamp no longer matches
    /// `values` is stale (its value was taken or replaced) and is skipped.
    order: VecDeque<(u32, u64)>,
    next_stamp: u64,
    capacity: usize,
}

impl CheckValues {
    /// Room for `min(blocks, MAX_CHECK_VALUES)` values: never more than the bundle has blocks.
    pub(super) fn new(blocks: u64) -> CheckValues {
        let capacity = usize::try_from(blocks)
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_CHECK_VALUES);
        CheckValues {
            values: HashMap::new(),
            order: VecDeque::new(),
            next_stamp: 0,
            capacity,
        }
    }

    pub(super) fn get(&self, block: u32) -> Option<&BlockHash> {
        self.values.get(&block).map(|(hash, _)| hash)
    }

    pub(super) fn contains(&self, block: u32) -> bool {
        self.values.contains_key(&block)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.values.len()
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records `hash` for `block`; true when it is new or differs from the value held.
    pub(super) fn insert(&mut self, block: u32, hash: BlockHash) -> bool {
        if let Some((held, _)) = self.values.get_mut(&block) {
            if *held == hash {
                return false;
            }
            // Keeps its place in line: a forger rewriting one block cannot make it young.
            *held = hash;
            return true;
        }
        if self.values.len() >= self.capacity {
            self.forget_oldest();
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.values.insert(block, (hash, stamp));
        self.order.push_back((block, stamp));
        // Stale entries pile up as values are taken; sweep them once they outnumber the
        // live ones, which keeps the queue within twice the capacity at amortised O(1).
        if self.order.len() > 2 * self.capacity {
            let values = &self.values;
            self.order
                .retain(|(block, stamp)| values.get(block).is_some_and(|(_, s)| s == stamp));
        }
        true
    }

    pub(super) fn remove(&mut self, block: u32) {
        self.values.remove(&block);
    }

    fn forget_oldest(&mut self) {
        while let Some((block, stamp)) = self.order.pop_front() {
            if self.values.get(&block).is_some_and(|(_, s)| *s == stamp) {
                self.values.remove(&block);
                return;
            }
        }
    }

    /// Entries in the order queue, live or stale (for tests of the bound).
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_values_than_the_bundle_has_blocks() {
        let mut values = CheckValues::new(3);
        for block in 0..3 {
            assert!(values.insert(block, [block as u8; 16]));
        }
        assert!(values.insert(7, [7; 16]), "a fourth value is taken");
        assert_eq!(values.len(), 3);
        assert!(!values.contains(0), "the oldest was forgotten for it");
        assert_eq!(values.get(7), Some(&[7; 16]));
    }

    #[test]
    fn a_repeated_value_is_not_news_and_a_changed_one_is() {
        let mut values = CheckValues::new(10);
        assert!(values.insert(1, [1; 16]));
        assert!(!values.insert(1, [1; 16]));
        assert!(values.insert(1, [2; 16]));
        assert_eq!(values.get(1), Some(&[2; 16]));
    }

    #[test]
    fn a_flood_of_values_stays_within_the_ceiling_and_its_queue_within_twice_that() {
        let mut values = CheckValues::new(u64::from(u32::MAX));
        assert_eq!(values.capacity(), MAX_CHECK_VALUES);
        for i in 0..10 * MAX_CHECK_VALUES as u32 {
            values.insert(i.wrapping_mul(2_654_435_761), [i as u8; 16]);
            if i % 3 == 0 {
                values.remove(i.wrapping_mul(2_654_435_761));
            }
            assert!(values.len() <= MAX_CHECK_VALUES);
            assert!(values.queued() <= 2 * MAX_CHECK_VALUES + 1);
        }
    }

    #[test]
    fn a_value_taken_and_given_again_is_not_forgotten_early_by_its_stale_place() {
        let mut values = CheckValues::new(2);
        values.insert(1, [1; 16]);
        values.insert(2, [2; 16]);
        values.remove(1);
        values.insert(1, [1; 16]);
        values.insert(3, [3; 16]);
        assert!(values.contains(1), "block 1's old place in line was stale");
        assert!(!values.contains(2));
    }
}
