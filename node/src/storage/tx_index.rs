//! The transaction index: transaction hash -> height of the block that
//! holds it, for `GET /v1/transactions/{hash}`.
//!
//! **Why not a sled tree keyed by hash.** That was the first design. Its
//! keys are random, so each insert lands on its own leaf; once the tree
//! outgrew sled's bounded page cache most inserts fetched their leaf, and
//! writing a 10,000-transaction block went from 220 ms at 40 blocks to
//! 462 ms at 400 (issue 8: after 4 minutes at 5,200 tx/s the consensus
//! thread spent 59 % of its time there, and commits fell behind).
//!
//! **What it is instead: a small log-structured merge tree over sled.**
//! - A *run* is a set of `(hash, height)` entries sorted by hash, stored in
//!   pages of [`PAGE_ENTRIES`] under the key (run id, first hash of the
//!   page) in the `tx_runs` tree. Run ids only grow, so writing a run
//!   appends to the tree: no random leaf is touched.
//! - Committing a block adds one run of level 0 (its own transactions).
//!   When a level holds [`FANOUT`] runs, a background thread merges them
//!   into one run of the next level, reading and writing sequentially. An
//!   entry is rewritten once per level, `log_FANOUT(blocks)` times in all,
//!   and a level holds about `FANOUT` runs at most.
//! - A lookup asks every run for the one page that could hold the hash
//!   (one sled range read each; the upper levels of the tree are few and
//!   cached) and binary-searches it. A hash is in at most one block, so the
//!   order in which runs are asked does not matter; the newest go first.
//! - The list of runs, the *manifest*, is one value in `meta`, rewritten
//!   under a lock whenever a run is added or a merge lands. A merge writes
//!   its output, flushes, swaps the manifest, flushes again and only then
//!   removes its inputs, so a crash at any point leaves every entry in a
//!   run the manifest names. Pages of runs the manifest does not name (a
//!   merge or a block interrupted by a crash) are removed at start.
//!
//! As with the rest of the block, entries above the tip may exist (written
//! before the state batch that moves the tip); [`super::Storage::tx_height`]
//! hides them, and the same block rewrites them when its height commits.

use std::sync::mpsc;
use std::sync::{Arc, RwLock, Weak};

use cairn_core::{codec, Hash, Height};
use serde::{Deserialize, Serialize};

use super::{corrupt, StorageError};

/// Entries per page: 40 bytes each, about 4 KiB a page (the size sled's
/// cache evicts well; see the `blocks` tree).
pub const PAGE_ENTRIES: usize = 102;
/// Runs of one level merged into one run of the next.
pub const FANOUT: usize = 8;
const ENTRY_BYTES: usize = 32 + 8;
const KEY_BYTES: usize = 8 + 32;
/// Key of the manifest in the `meta` tree.
pub const META_MANIFEST: &[u8] = b"tx_runs";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub id: u64,
    pub level: u8,
    pub entries: u64,
}

/// The shared part: the trees and the manifest.
struct Inner {
    db: sled::Db,
    pages: sled::Tree,
    meta: sled::Tree,
    /// The runs, oldest first. Lookups hold the read lock for their whole
    /// search, so a merge's inputs are removed only after every lookup that
    /// could still read them has finished.
    runs: RwLock<Manifest>,
    /// Held for a whole merge: two merges of the same inputs would list
    /// their entries twice.
    merging: std::sync::Mutex<()>,
}

struct Manifest {
    runs: Vec<Run>,
    next_id: u64,
}

/// Handle to the index; cheap to clone.
#[derive(Clone)]
pub struct TxIndex {
    inner: Arc<Inner>,
    /// Wakes the merging thread (capacity 1: one pending wake-up is enough).
    wake: mpsc::SyncSender<()>,
}

fn page_key(run: u64, first: &[u8; 32]) -> [u8; KEY_BYTES] {
    let mut key = [0u8; KEY_BYTES];
    key[..8].copy_from_slice(&run.to_be_bytes());
    key[8..].copy_from_slice(first);
    key
}

fn poisoned<T>(_: T) -> StorageError {
    corrupt("transaction index lock poisoned by a panic")
}

impl TxIndex {
    /// Opens the index in `db`: reads the manifest, removes pages of runs it
    /// does not name, and starts the merging thread (which ends when the
    /// last handle is dropped).
    pub fn open(db: &sled::Db, meta: &sled::Tree) -> Result<TxIndex, StorageError> {
        let pages = db.open_tree("tx_runs")?;
        let runs: Vec<Run> = match meta.get(META_MANIFEST)? {
            None => Vec::new(),
            Some(bytes) => codec::decode(&bytes)
                .map_err(|e| corrupt(format!("transaction index manifest: {e}")))?,
        };
        // Orphans lie between the named ids (sorted) and after the last.
        let mut named: Vec<u64> = runs.iter().map(|run| run.id).collect();
        named.sort_unstable();
        let mut from = 0u64;
        for &id in named.iter().chain(std::iter::once(&u64::MAX)) {
            remove_range(&pages, from, id, true)?;
            from = id.saturating_add(1);
        }
        let next_id = named.last().map_or(0, |id| id + 1);
        let inner = Arc::new(Inner {
            db: db.clone(),
            pages,
            meta: meta.clone(),
            runs: RwLock::new(Manifest { runs, next_id }),
            merging: std::sync::Mutex::new(()),
        });
        let (wake, woken) = mpsc::sync_channel(1);
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("tx-index-merge".into())
            .spawn(move || merge_loop(weak, woken))
            .map_err(|e| corrupt(format!("cannot start the index merging thread: {e}")))?;
        let index = TxIndex { inner, wake };
        index.nudge();
        Ok(index)
    }

    /// Adds the transactions of the block at `height` as one run.
    pub fn add_block(&self, height: Height, tx_hashes: &[Hash]) -> Result<(), StorageError> {
        if tx_hashes.is_empty() {
            return Ok(());
        }
        let mut entries: Vec<([u8; 32], u64)> =
            tx_hashes.iter().map(|hash| (hash.0, height.0)).collect();
        entries.sort_unstable();
        entries.dedup_by(|a, b| a.0 == b.0);
        let id = self.allocate_id()?;
        let mut writer = RunWriter::new(&self.inner.pages, id);
        for (hash, height) in &entries {
            writer.push(hash, *height)?;
        }
        let entries = writer.finish()?;
        self.inner.install(
            &[],
            Run {
                id,
                level: 0,
                entries,
            },
        )?;
        self.nudge();
        Ok(())
    }

    fn allocate_id(&self) -> Result<u64, StorageError> {
        let mut manifest = self.inner.runs.write().map_err(poisoned)?;
        let id = manifest.next_id;
        manifest.next_id += 1;
        Ok(id)
    }

    fn nudge(&self) {
        // Full means a wake-up is already pending.
        let _ = self.wake.try_send(());
    }

    /// Height recorded for `hash`, if any run holds it.
    pub fn get(&self, hash: &Hash) -> Result<Option<Height>, StorageError> {
        let manifest = self.inner.runs.read().map_err(poisoned)?;
        for run in manifest.runs.iter().rev() {
            if let Some(height) = self.inner.find(run.id, &hash.0)? {
                return Ok(Some(Height(height)));
            }
        }
        Ok(None)
    }

    /// The current runs, oldest first (for tests and the benchmark).
    pub fn runs(&self) -> Vec<Run> {
        self.inner
            .runs
            .read()
            .map(|manifest| manifest.runs.clone())
            .unwrap_or_default()
    }

    /// Runs every merge that is due now, on this thread (tests).
    #[cfg(test)]
    pub fn merge_now(&self) -> Result<(), StorageError> {
        while self.inner.merge_once()? {}
        Ok(())
    }
}

/// Removes the pages of runs with ids in `from..to`: at open, those of
/// unfinished runs (`unfinished`, said in the log), and after a merge, those
/// of its inputs (routine, not logged).
fn remove_range(
    pages: &sled::Tree,
    from: u64,
    to: u64,
    unfinished: bool,
) -> Result<(), StorageError> {
    if from >= to {
        return Ok(());
    }
    let keys: Vec<sled::IVec> = pages
        .range(from.to_be_bytes()..to.to_be_bytes())
        .keys()
        .collect::<Result<_, _>>()?;
    if unfinished && !keys.is_empty() {
        tracing::info!(
            "removing {} pages of unfinished transaction index runs",
            keys.len()
        );
    }
    for key in keys {
        pages.remove(key)?;
    }
    Ok(())
}

fn merge_loop(inner: Weak<Inner>, woken: mpsc::Receiver<()>) {
    while woken.recv().is_ok() {
        let Some(inner) = inner.upgrade() else { return };
        loop {
            match inner.merge_once() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    // The index is behind, not wrong: lookups still search
                    // every run. The next commit retries.
                    tracing::error!("cannot merge transaction index runs: {e}");
                    break;
                }
            }
        }
    }
}

impl Inner {
    /// Records `added` in the manifest in place of `removed`, durably.
    fn install(&self, removed: &[Run], added: Run) -> Result<(), StorageError> {
        let mut manifest = self.runs.write().map_err(poisoned)?;
        manifest.runs.retain(|run| !removed.contains(run));
        manifest.runs.push(added);
        self.meta
            .insert(META_MANIFEST, codec::encode(&manifest.runs))?;
        Ok(())
    }

    /// Merges the [`FANOUT`] oldest runs of the lowest level holding that
    /// many (exactly that many, so that a level-`l` run covers `FANOUT^l`
    /// blocks however late the merge); false when no level is full.
    fn merge_once(&self) -> Result<bool, StorageError> {
        let _merging = self.merging.lock().map_err(poisoned)?;
        let (inputs, id) = {
            let mut manifest = self.runs.write().map_err(poisoned)?;
            let mut counts = std::collections::BTreeMap::<u8, usize>::new();
            for run in &manifest.runs {
                *counts.entry(run.level).or_default() += 1;
            }
            let Some(level) = counts
                .iter()
                .find(|(_, &count)| count >= FANOUT)
                .map(|(&level, _)| level)
            else {
                return Ok(false);
            };
            let inputs: Vec<Run> = manifest
                .runs
                .iter()
                .filter(|run| run.level == level)
                .take(FANOUT)
                .copied()
                .collect();
            let id = manifest.next_id;
            manifest.next_id += 1;
            (inputs, id)
        };
        let level = inputs[0].level.saturating_add(1);
        let mut readers = inputs
            .iter()
            .map(|run| RunReader::new(&self.pages, run.id))
            .collect::<Result<Vec<_>, _>>()?;
        let mut writer = RunWriter::new(&self.pages, id);
        // A k-way merge by smallest head; FANOUT is small, so a scan is
        // as good as a heap. Equal hashes (a block written twice around a
        // crash) are kept once, by the writer.
        while let Some((_, i)) = readers
            .iter()
            .enumerate()
            .filter_map(|(i, reader)| reader.head().map(|head| (head, i)))
            .min()
        {
            let (hash, height) = readers[i].head().expect("a head");
            writer.push(&hash, height)?;
            readers[i].advance()?;
        }
        let entries = writer.finish()?;
        self.db.flush()?;
        self.install(&inputs, Run { id, level, entries })?;
        self.db.flush()?;
        // The write lock above waited for every lookup that started before
        // the swap; later ones do not read the inputs.
        for run in &inputs {
            remove_range(&self.pages, run.id, run.id + 1, false)?;
        }
        Ok(true)
    }

    /// Height of `hash` in run `id`, if the run holds it.
    fn find(&self, id: u64, hash: &[u8; 32]) -> Result<Option<u64>, StorageError> {
        let Some(entry) = self
            .pages
            .range(page_key(id, &[0; 32])..=page_key(id, hash))
            .next_back()
        else {
            return Ok(None);
        };
        let (_, page) = entry?;
        let page = Page::new(&page)?;
        let (mut low, mut high) = (0, page.len());
        while low < high {
            let middle = (low + high) / 2;
            let (candidate, height) = page.entry(middle);
            match candidate.cmp(hash) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Ok(Some(height)),
            }
        }
        Ok(None)
    }
}

/// A page's bytes: entries of a 32-byte hash and a big-endian height.
struct Page<'a>(&'a [u8]);

impl<'a> Page<'a> {
    fn new(bytes: &'a [u8]) -> Result<Page<'a>, StorageError> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(ENTRY_BYTES) {
            return Err(corrupt("transaction index page has the wrong length"));
        }
        Ok(Page(bytes))
    }

    fn len(&self) -> usize {
        self.0.len() / ENTRY_BYTES
    }

    fn entry(&self, i: usize) -> ([u8; 32], u64) {
        let bytes = &self.0[i * ENTRY_BYTES..(i + 1) * ENTRY_BYTES];
        let hash: [u8; 32] = bytes[..32].try_into().expect("32 bytes");
        let height = u64::from_be_bytes(bytes[32..].try_into().expect("8 bytes"));
        (hash, height)
    }
}

/// Writes one run's pages in hash order.
struct RunWriter<'a> {
    pages: &'a sled::Tree,
    id: u64,
    page: Vec<u8>,
    first: [u8; 32],
    last: Option<[u8; 32]>,
    entries: u64,
}

impl<'a> RunWriter<'a> {
    fn new(pages: &'a sled::Tree, id: u64) -> RunWriter<'a> {
        RunWriter {
            pages,
            id,
            page: Vec::with_capacity(PAGE_ENTRIES * ENTRY_BYTES),
            first: [0; 32],
            last: None,
            entries: 0,
        }
    }

    /// Appends an entry; hashes must come in ascending order, and a repeat
    /// of the last one is skipped.
    fn push(&mut self, hash: &[u8; 32], height: u64) -> Result<(), StorageError> {
        if let Some(last) = &self.last {
            match last.cmp(hash) {
                std::cmp::Ordering::Equal => return Ok(()),
                std::cmp::Ordering::Greater => {
                    return Err(corrupt("transaction index run is out of order"))
                }
                std::cmp::Ordering::Less => {}
            }
        }
        if self.page.is_empty() {
            self.first = *hash;
        }
        self.page.extend_from_slice(hash);
        self.page.extend_from_slice(&height.to_be_bytes());
        self.last = Some(*hash);
        self.entries += 1;
        if self.page.len() == PAGE_ENTRIES * ENTRY_BYTES {
            self.flush_page()?;
        }
        Ok(())
    }

    fn flush_page(&mut self) -> Result<(), StorageError> {
        if !self.page.is_empty() {
            self.pages
                .insert(page_key(self.id, &self.first), &self.page[..])?;
            self.page.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> Result<u64, StorageError> {
        self.flush_page()?;
        Ok(self.entries)
    }
}

/// Reads one run's entries in hash order, a page at a time.
struct RunReader {
    pages: sled::Iter,
    page: sled::IVec,
    position: usize,
}

impl RunReader {
    fn new(pages: &sled::Tree, id: u64) -> Result<RunReader, StorageError> {
        let mut reader = RunReader {
            pages: pages.scan_prefix(id.to_be_bytes()),
            page: sled::IVec::default(),
            position: 0,
        };
        reader.next_page()?;
        Ok(reader)
    }

    fn next_page(&mut self) -> Result<(), StorageError> {
        self.position = 0;
        self.page = match self.pages.next() {
            None => sled::IVec::default(),
            Some(entry) => {
                let (_, page) = entry?;
                Page::new(&page)?;
                page
            }
        };
        Ok(())
    }

    fn head(&self) -> Option<([u8; 32], u64)> {
        let page = Page(&self.page);
        (self.position < page.len()).then(|| page.entry(self.position))
    }

    fn advance(&mut self) -> Result<(), StorageError> {
        self.position += 1;
        if self.position == Page(&self.page).len() {
            self.next_page()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(block: u64, i: u64) -> Hash {
        Hash::digest(&[&block.to_be_bytes(), &i.to_be_bytes()])
    }

    fn block_hashes(block: u64, count: u64) -> Vec<Hash> {
        (0..count).map(|i| hash(block, i)).collect()
    }

    fn open(db: &sled::Db) -> TxIndex {
        TxIndex::open(db, &db.open_tree("meta").unwrap()).unwrap()
    }

    fn levels(index: &TxIndex) -> std::collections::BTreeMap<u8, usize> {
        let mut levels = std::collections::BTreeMap::new();
        for run in index.runs() {
            *levels.entry(run.level).or_default() += 1;
        }
        levels
    }

    /// Every entry stays findable through merges of three levels, in any
    /// number of pages, and nothing else is found.
    #[test]
    fn finds_every_entry_through_merges() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let index = open(&db);
        // 600 blocks: level 0 fills 75 times, level 1 nine times, level 2
        // once. Block sizes vary so that runs span from part of a page to
        // several pages.
        let blocks = 600u64;
        let size = |block: u64| 1 + (block * 37) % 250;
        for block in 1..=blocks {
            index
                .add_block(Height(block), &block_hashes(block, size(block)))
                .unwrap();
            if block % 50 == 0 {
                index.merge_now().unwrap();
            }
        }
        index.merge_now().unwrap();
        let levels = levels(&index);
        assert!(levels.values().all(|&count| count < FANOUT), "{levels:?}");
        assert!(
            levels.contains_key(&3),
            "a level-3 run was made: {levels:?}"
        );
        let total: u64 = index.runs().iter().map(|run| run.entries).sum();
        assert_eq!(total, (1..=blocks).map(size).sum::<u64>());
        for block in 1..=blocks {
            for hash in block_hashes(block, size(block)) {
                assert_eq!(
                    index.get(&hash).unwrap(),
                    Some(Height(block)),
                    "block {block}"
                );
            }
            assert_eq!(index.get(&hash(block, 1_000)).unwrap(), None);
        }
        // Merged inputs are gone: every page belongs to a listed run.
        let listed: Vec<u64> = index.runs().iter().map(|run| run.id).collect();
        for key in index.inner.pages.iter().keys() {
            let id = u64::from_be_bytes(key.unwrap()[..8].try_into().unwrap());
            assert!(listed.contains(&id), "page of unlisted run {id}");
        }
    }

    /// The background thread merges without being asked.
    #[test]
    fn merges_in_the_background() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let index = open(&db);
        for block in 1..=FANOUT as u64 {
            index
                .add_block(Height(block), &block_hashes(block, 10))
                .unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while levels(&index).contains_key(&0) {
            assert!(
                std::time::Instant::now() < deadline,
                "no merge: {:?}",
                index.runs()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(levels(&index), [(1, 1)].into());
        assert_eq!(index.get(&hash(3, 7)).unwrap(), Some(Height(3)));
    }

    /// A crash between writing a merge's output and installing it (or a
    /// block's run and its manifest entry) leaves pages no run names: they
    /// are removed at open, and every entry is still found in the runs the
    /// manifest names.
    #[test]
    fn pages_of_an_unfinished_run_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let orphan;
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let index = open(&db);
            for block in 1..FANOUT as u64 {
                index
                    .add_block(Height(block), &block_hashes(block, 300))
                    .unwrap();
            }
            // What a merge writes before it installs its output.
            orphan = index.allocate_id().unwrap();
            let mut writer = RunWriter::new(&index.inner.pages, orphan);
            let mut all: Vec<[u8; 32]> = (1..FANOUT as u64)
                .flat_map(|block| block_hashes(block, 300))
                .map(|hash| hash.0)
                .collect();
            all.sort_unstable();
            for hash in &all {
                writer.push(hash, 99).unwrap();
            }
            writer.finish().unwrap();
            db.flush().unwrap();
        }
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let index = open(&db);
        assert_eq!(
            index.inner.pages.scan_prefix(orphan.to_be_bytes()).count(),
            0
        );
        assert_eq!(index.runs().len(), FANOUT - 1);
        for block in 1..FANOUT as u64 {
            for hash in block_hashes(block, 300) {
                assert_eq!(index.get(&hash).unwrap(), Some(Height(block)));
            }
        }
        // New ids do not reuse a listed one.
        assert!(index.allocate_id().unwrap() > index.runs().iter().map(|r| r.id).max().unwrap());
    }

    /// A run must be written in hash order; the writer refuses otherwise
    /// and skips a repeated hash.
    #[test]
    fn the_writer_keeps_runs_sorted_and_unique() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let index = open(&db);
        let mut writer = RunWriter::new(&index.inner.pages, 0);
        writer.push(&[2; 32], 1).unwrap();
        writer.push(&[2; 32], 1).unwrap();
        assert!(writer.push(&[1; 32], 1).is_err());
        assert_eq!(writer.finish().unwrap(), 1);
    }

    /// A damaged page is an error, not a panic or a wrong answer.
    #[test]
    fn a_damaged_page_is_an_error() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let index = open(&db);
        let hashes = block_hashes(1, 5);
        index.add_block(Height(1), &hashes).unwrap();
        let (key, _) = index.inner.pages.iter().next().unwrap().unwrap();
        index.inner.pages.insert(key, &[1u8; 39][..]).unwrap();
        let error = index.get(&hashes[0]).unwrap_err();
        assert!(error.to_string().contains("page"), "{error}");
    }
}
