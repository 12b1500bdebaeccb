//! The vector index (HNSW, usearch): cosine similarity over half-precision vectors, keyed by
//! chunk id, saved to a file that searches memory-map. Like the keyword index, a search takes
//! the caller's filter into the graph walk, so invisible chunks never take a place among the
//! nearest.

use std::path::Path;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::{Error, Result};

/// Candidates kept while searching. At a million clustered 384-d vectors on one core
/// (`scripts/bench-rag.sh`), 128 found 0.88 of the exact top 10, 256 0.95 and 512 0.97, at
/// p95 1.4, 1.5 and 2.1 ms: recall is worth the millisecond.
pub const DEFAULT_EXPANSION_SEARCH: usize = 512;
/// Candidates kept while inserting.
const EXPANSION_ADD: usize = 128;
/// Links per node.
const CONNECTIVITY: usize = 16;

fn options(dimension: usize) -> IndexOptions {
    IndexOptions {
        dimensions: dimension,
        metric: MetricKind::Cos,
        quantization: ScalarKind::F16,
        connectivity: CONNECTIVITY,
        expansion_add: EXPANSION_ADD,
        expansion_search: DEFAULT_EXPANSION_SEARCH,
        multi: false,
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Vector(format!("{what}: {e}"))
}

/// An HNSW index of chunk vectors (public only for benchmarks, through
/// [`internal`](crate::internal)).
pub struct VectorIndex {
    index: Index,
    dimension: usize,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("dimension", &self.dimension)
            .field("size", &self.index.size())
            .finish_non_exhaustive()
    }
}

impl VectorIndex {
    /// An empty index of `dimension`-long vectors.
    pub fn new(dimension: usize) -> Result<Self> {
        let index = Index::new(&options(dimension)).map_err(|e| failed("creating", e))?;
        Ok(Self { index, dimension })
    }

    /// Loads `path` into memory, to change it.
    pub fn load(path: &Path, dimension: usize) -> Result<Self> {
        let this = Self::new(dimension)?;
        this.index
            .load(&path_str(path)?)
            .map_err(|e| failed("loading", e))?;
        this.check(path)?;
        Ok(this)
    }

    /// Maps `path` read-only, to search it.
    pub fn view(path: &Path, dimension: usize) -> Result<Self> {
        let this = Self::new(dimension)?;
        this.index
            .view(&path_str(path)?)
            .map_err(|e| failed("mapping", e))?;
        this.check(path)?;
        Ok(this)
    }

    fn check(&self, path: &Path) -> Result<()> {
        if self.index.dimensions() != self.dimension {
            return Err(Error::Vector(format!(
                "{} holds {}-long vectors, not {}",
                path.display(),
                self.index.dimensions(),
                self.dimension
            )));
        }
        Ok(())
    }

    /// Sets how many candidates a search keeps (more: better recall, slower).
    pub fn set_expansion(&self, expansion: usize) {
        self.index.change_expansion_search(expansion.max(1));
    }

    /// Vectors held.
    pub fn len(&self) -> usize {
        self.index.size()
    }

    /// Whether it holds no vector.
    pub fn is_empty(&self) -> bool {
        self.index.size() == 0
    }

    /// Bytes the index takes in memory (or maps).
    pub fn memory(&self) -> usize {
        self.index.memory_usage()
    }

    /// Adds (or replaces) `id`'s vector.
    pub fn upsert(&mut self, id: u64, vector: &[f32]) -> Result<()> {
        self.upsert_all(&[(id, vector)])
    }

    /// Adds (or replaces) many vectors, inserting on every core: a graph insert is a search,
    /// and one thread builds a million-vector index in about an hour.
    pub fn upsert_all(&mut self, items: &[(u64, &[f32])]) -> Result<()> {
        for (id, vector) in items {
            if vector.len() != self.dimension {
                return Err(Error::Vector(format!(
                    "a {}-long vector for a {}-dimension index",
                    vector.len(),
                    self.dimension
                )));
            }
            if self.index.contains(*id) {
                self.index.remove(*id).map_err(|e| failed("replacing", e))?;
            }
        }
        let needed = self.index.size() + items.len();
        if needed > self.index.capacity() {
            // `reserve` also makes room for one insert per hardware thread.
            self.index
                .reserve(needed.max(self.index.capacity() * 2).max(1024))
                .map_err(|e| failed("growing", e))?;
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(items.len().div_ceil(256))
            .max(1);
        if threads == 1 {
            for (id, vector) in items {
                self.index
                    .add(*id, vector)
                    .map_err(|e| failed("adding", e))?;
            }
            return Ok(());
        }
        let index = &self.index;
        std::thread::scope(|scope| {
            let workers: Vec<_> = items
                .chunks(items.len().div_ceil(threads))
                .map(|part| {
                    scope.spawn(move || {
                        part.iter().try_for_each(|(id, vector)| {
                            index.add(*id, vector).map_err(|e| failed("adding", e))
                        })
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err(Error::Vector("an insert thread panicked".into())))
            })
        })
    }

    /// Removes `id`'s vector, if held.
    pub fn remove(&mut self, id: u64) -> Result<()> {
        if self.index.contains(id) {
            self.index.remove(id).map_err(|e| failed("removing", e))?;
        }
        Ok(())
    }

    /// Writes the index to `path` and syncs it.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.index
            .save(&path_str(path)?)
            .map_err(|e| failed("saving", e))?;
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::Io {
                path: path.to_owned(),
                source: e,
            })
    }

    /// The `k` nearest chunks to `query` among those `admit` lets through, nearest first,
    /// with their cosine similarity. May return fewer than `k` when few chunks pass.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        admit: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Vec<(u64, f32)>> {
        if self.index.size() == 0 || k == 0 {
            return Ok(Vec::new());
        }
        let found = self
            .index
            .filtered_search(query, k, admit)
            .map_err(|e| failed("searching", e))?;
        Ok(found
            .keys
            .into_iter()
            .zip(found.distances)
            .map(|(id, distance)| (id, 1.0 - distance))
            .collect())
    }
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Vector(format!("{} is not a UTF-8 path", path.display())))
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(dimension: usize, axis: usize) -> Vec<f32> {
        let mut v = vec![0.01; dimension];
        v[axis] = 1.0;
        v
    }

    #[test]
    fn nearest_first_within_the_filter_and_back_from_a_mapped_file() -> Result<()> {
        let mut index = VectorIndex::new(8)?;
        for id in 0..8u64 {
            index.upsert(id + 1, &unit(8, id as usize))?;
        }
        let hits = index.search(&unit(8, 3), 3, &|_| true)?;
        assert_eq!(hits[0].0, 4);
        assert!(hits[0].1 > 0.99);
        // The nearest is hidden: the next ones fill the places.
        let hits = index.search(&unit(8, 3), 2, &|id| id != 4)?;
        assert_eq!(hits.len(), 2);
        assert!(hits.iter().all(|(id, _)| *id != 4));
        index.remove(4)?;
        assert_eq!(index.len(), 7);
        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            path: "tmp".into(),
            source: e,
        })?;
        let path = dir.path().join("v.usearch");
        index.save(&path)?;
        let mapped = VectorIndex::view(&path, 8)?;
        assert_eq!(mapped.len(), 7);
        assert_eq!(mapped.search(&unit(8, 5), 1, &|_| true)?[0].0, 6);
        assert!(matches!(
            VectorIndex::view(&path, 16),
            Err(Error::Vector(_))
        ));
        Ok(())
    }

    #[test]
    fn cosine_of_parallel_orthogonal_and_empty_vectors() {
        assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
