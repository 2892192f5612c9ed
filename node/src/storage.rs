//! sled storage: the chain, certificates, indexes, account state, and the
//! consensus safety state.
//!
//! Trees:
//! - `blocks`: (height, chunk number), both big-endian -> one
//!   [`BLOCK_CHUNK_BYTES`] piece of the encoded [`Block`] (see below)
//! - `certificates`: height (big-endian u64) -> encoded [`Certificate`]
//! - `block_heights`: block hash -> height
//! - `tx_runs`: the transaction index, hash -> height, as sorted runs
//!   merged in the background ([`tx_index`] says how and why)
//! - `state`: address -> encoded [`Account`]; the nodes of the state tree
//!   (`cairn_core::merkle`), [`NodeKey::to_bytes`] (34 bytes) -> encoded
//!   [`TreeNode`], but for the internal nodes down to [`TREE_CACHE_DEPTH`]
//!   (kept in memory and rebuilt at open from the nodes below them); and
//!   the tip (height and hash of the last committed block) under
//!   [`TIP_KEY`]. Keys of the three kinds differ in length. Only the tree
//!   of the tip is kept (nodes are overwritten in place), so proofs are
//!   served for the last committed height only.
//! - `meta`: genesis hash, storage format, the transaction index's list of
//!   runs (the consensus safety state was here before it moved to the
//!   safety record, `crate::safety_record`)
//!
//! **Memory.** `blocks` is shaped for sled 0.34's cache, which bounds
//! memory only for small pages: a leaf holds up to 16 entries, and a page
//! alone in its LRU shard (of 256) is never evicted, so whole blocks as
//! values stayed resident (200 full blocks: 303 MiB with a 16 MiB cache).
//! In 4 KiB chunks they are evicted like any small page (75 MiB, flat).
//! docs/BENCHMARKS.md (Analysis, point 5) has the measurements and
//! `benches/examples/storage_memory.rs` reproduces them.
//!
//! Committing a block writes the block, its certificate and its indexes
//! first, then the account changes together with the new tip in **one**
//! atomic sled batch on `state`, then flushes once. Readers see nothing above
//! the tip, so until that batch lands the block is invisible; a `kill -9` at
//! any moment leaves the committed state either before or after the whole
//! block. (A block written above the tip before a crash is the certified
//! block of that height, so the same block is written there again when the
//! height commits; it is removed at start-up meanwhile.)

use std::collections::BTreeMap;
use std::path::Path;

use cairn_core::codec;
use cairn_core::merkle::{self, NodeKey, StateProof, TreeNode};
use cairn_core::state::{Account, StateView};
use cairn_core::{Block, BlockHeader, Certificate, Hash, Height, PublicKey};

mod tx_index;
use tx_index::TxIndex;

/// Key of the tip in the `state` tree (shorter than any address, so it can
/// never collide with one).
pub const TIP_KEY: &[u8] = b"tip";
/// A small file beside sled's own, in the data folder, holding the height
/// of the last block committed and flushed. sled recovers a truncated or
/// damaged log to an earlier consistent state without a word; the marker
/// turns that into a clear error at start instead of a validator that
/// silently forgot committed blocks (and the votes it cast for them).
pub const TIP_MARKER_FILE: &str = "cairn-tip";
const META_GENESIS: &[u8] = b"genesis_hash";
/// Layout version of the trees above, written when a data folder is
/// created; a folder of another layout is refused, never misread.
const META_FORMAT: &[u8] = b"format";
const FORMAT: &[u8] = b"cairn-storage-5";
/// Layouts this version reads, and upgrades to [`FORMAT`] at open: format
/// 4 stored every node of the state tree; format 5 stores no internal node
/// down to [`TREE_CACHE_DEPTH`] (they are rebuilt at open, see
/// [`Storage::load_tree_cache`]). The format is written at once, so a
/// cairn-node of format 4 refuses the folder rather than trust the stale
/// internal nodes left there.
const FORMATS_UPGRADED: [&[u8]; 1] = [b"cairn-storage-4"];
/// Earlier layouts, whose chains hashed state and transactions without
/// Merkle trees: their blocks can never be part of a chain of this version,
/// so they are refused with a word on what to do.
const FORMATS_BEFORE_MERKLE: [&[u8]; 2] = [b"cairn-storage-2", b"cairn-storage-3"];
/// Size of one stored piece of an encoded block (see the module doc).
pub const BLOCK_CHUNK_BYTES: usize = 4096;
const META_SAFETY: &[u8] = b"safety";
/// sled's page cache (its default is 1 GiB, which a validator's RSS budget
/// cannot afford; sled still keeps recently written data beyond it, see
/// docs/BENCHMARKS.md).
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// The length of every header's encoding (all its fields have fixed
/// widths; a unit test checks).
fn header_len() -> usize {
    static LEN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LEN.get_or_init(|| {
        codec::encoded_len(&BlockHeader {
            height: Height(0),
            parent_hash: Hash::ZERO,
            view: cairn_core::View(0),
            proposer: PublicKey([0; 32]),
            timestamp_ms: 0,
            tx_root: Hash::ZERO,
            state_root: Hash::ZERO,
        })
    })
}

/// What went wrong with the data folder.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("data folder is corrupt: {0}")]
    Corrupt(String),
    #[error("data folder belongs to another chain (genesis {found}, expected {expected})")]
    WrongGenesis { expected: Hash, found: Hash },
    #[error("blocks commit too fast to read a consistent proof; try again")]
    Busy,
}

fn poisoned_cache() -> StorageError {
    corrupt("an in-memory cache of the state was poisoned by a panic")
}

fn corrupt(message: impl Into<String>) -> StorageError {
    StorageError::Corrupt(message.into())
}

/// The parent of a state tree node (depth at least 1), and whether the
/// node is its right child.
fn parent_of(child: &NodeKey) -> (NodeKey, bool) {
    let depth = child.depth - 1;
    let (byte, mask) = (depth as usize / 8, 0x80u8 >> (depth % 8));
    let mut prefix = child.prefix;
    let right = prefix[byte] & mask != 0;
    prefix[byte] &= !mask;
    (NodeKey { depth, prefix }, right)
}

/// The node's database. Cheap to clone (sled trees are reference counted).
#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    /// The tip marker file (see [`TIP_MARKER_FILE`]).
    marker: std::path::PathBuf,
    blocks: sled::Tree,
    certificates: sled::Tree,
    block_heights: sled::Tree,
    tx_index: TxIndex,
    state: sled::Tree,
    meta: sled::Tree,
    /// The state tree's nodes down to [`TREE_CACHE_DEPTH`], in memory: every
    /// block's update and every proof reads its top levels, which change
    /// with every block. Built at open (its internal nodes are not stored)
    /// and kept in step with each batch under its write lock, so it is
    /// never stale and a miss there means no node (it is never filled from
    /// a read, which could race a commit).
    tree_cache: std::sync::Arc<std::sync::RwLock<std::collections::HashMap<NodeKey, TreeNode>>>,
    /// Committed accounts recently read or written, at most
    /// [`ACCOUNT_CACHE_MAX`]: admission reads a sender's account twice per
    /// transaction, and reading it from sled was a tenth of a validator's
    /// CPU at peak (docs/BENCHMARKS.md, issue 13). See [`AccountCache`].
    account_cache: std::sync::Arc<std::sync::RwLock<AccountCache>>,
}

/// Most accounts kept in [`Storage`]'s account cache (about 100 bytes
/// each with the map's overhead: a few MiB).
pub const ACCOUNT_CACHE_MAX: usize = 65_536;

/// Committed accounts by address. Commits update it under its write lock
/// together with the state batch, and bump `generation`; a reader that
/// missed notes the generation before reading sled and fills the entry
/// only if no commit happened meanwhile, so an entry is never older than
/// the committed state (an account absent from sled is cached as the
/// default account, which is what reading it returns).
#[derive(Default)]
struct AccountCache {
    accounts: std::collections::HashMap<PublicKey, Account>,
    generation: u64,
}

impl AccountCache {
    fn put(&mut self, address: PublicKey, account: Account) {
        if self.accounts.len() >= ACCOUNT_CACHE_MAX && !self.accounts.contains_key(&address) {
            // Any entry will do: a cache miss costs one sled read.
            if let Some(evicted) = self.accounts.keys().next().copied() {
                self.accounts.remove(&evicted);
            }
        }
        self.accounts.insert(address, account);
    }
}

/// Depth down to which state tree nodes are cached: at most 2^15 - 1
/// nodes (a few MiB), all of the tree for up to about a thousand accounts
/// and its busiest levels for more.
pub const TREE_CACHE_DEPTH: u16 = 14;

fn height_key(height: Height) -> [u8; 8] {
    height.0.to_be_bytes()
}

fn decode_height(bytes: &[u8]) -> Result<Height, StorageError> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt("height has the wrong length"))?;
    Ok(Height(u64::from_be_bytes(bytes)))
}

/// Key of chunk `chunk` of the block at `height`.
fn chunk_key(height: Height, chunk: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&height_key(height));
    key[8..].copy_from_slice(&chunk.to_be_bytes());
    key
}

fn tip_value(height: Height, hash: &Hash) -> [u8; 40] {
    let mut value = [0u8; 40];
    value[..8].copy_from_slice(&height_key(height));
    value[8..].copy_from_slice(&hash.0);
    value
}

impl Storage {
    /// Opens (or creates) the database in `path` for the chain whose genesis
    /// is `genesis_block` with `genesis_accounts`, and checks that what is
    /// there is whole: the genesis matches, the tip block and certificate
    /// exist, decode, match the recorded tip and link to their parent.
    pub fn open(
        path: &Path,
        genesis_block: &Block,
        genesis_accounts: &BTreeMap<PublicKey, Account>,
    ) -> Result<Storage, StorageError> {
        // sled may panic instead of erring on some damaged files; a damaged
        // data folder must be a clear error, never a panic (or a panic loop
        // under a supervisor). The default hook would print a panic report
        // for a failure we turn into an error; silence it meanwhile
        // (start-up only).
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Storage::open_checked(path, genesis_block, genesis_accounts)
        }));
        std::panic::set_hook(hook);
        opened.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown failure");
            Err(corrupt(format!("the database failed to open: {what}")))
        })
    }

    fn open_checked(
        path: &Path,
        genesis_block: &Block,
        genesis_accounts: &BTreeMap<PublicKey, Account>,
    ) -> Result<Storage, StorageError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()?;
        let meta = db.open_tree("meta")?;
        let storage = Storage {
            marker: path.join(TIP_MARKER_FILE),
            blocks: db.open_tree("blocks")?,
            certificates: db.open_tree("certificates")?,
            block_heights: db.open_tree("block_heights")?,
            tx_index: TxIndex::open(&db, &meta)?,
            state: db.open_tree("state")?,
            meta,
            db,
            tree_cache: Default::default(),
            account_cache: Default::default(),
        };
        let genesis_hash = genesis_block.header.parent_hash;
        match storage.meta.get(META_GENESIS)? {
            None => storage.init_genesis(genesis_block, genesis_accounts)?,
            Some(found) => {
                let format = storage.meta.get(META_FORMAT)?;
                if format
                    .as_deref()
                    .is_some_and(|f| FORMATS_BEFORE_MERKLE.contains(&f))
                {
                    return Err(corrupt(
                        "the data folder holds a chain made by a cairn-node before Merkle \
                         state roots (storage format 2 or 3); its blocks cannot join a chain \
                         of this version: start a new network from a new genesis",
                    ));
                }
                match storage.meta.get(META_FORMAT)?.as_deref() {
                    Some(f) if f == FORMAT => {}
                    Some(f) if FORMATS_UPGRADED.contains(&f) => {
                        storage.meta.insert(META_FORMAT, FORMAT)?;
                        storage.db.flush()?;
                    }
                    _ => {
                        return Err(corrupt(
                            "the data folder was written by another version of cairn-node \
                             (storage format differs); move it aside to resync from peers",
                        ))
                    }
                }
                let found = Hash(
                    found
                        .as_ref()
                        .try_into()
                        .map_err(|_| corrupt("genesis hash has the wrong length"))?,
                );
                if found != genesis_hash {
                    return Err(StorageError::WrongGenesis {
                        expected: genesis_hash,
                        found,
                    });
                }
            }
        }
        storage.load_tree_cache()?;
        storage.check_consistency(genesis_block)?;
        storage.check_marker()?;
        storage.remove_above_tip()?;
        Ok(storage)
    }

    fn init_genesis(
        &self,
        genesis_block: &Block,
        accounts: &BTreeMap<PublicKey, Account>,
    ) -> Result<(), StorageError> {
        let changes: Vec<_> = accounts.iter().map(|(k, a)| (*k, *a)).collect();
        let tree = merkle::update_tree(&merkle::EmptyTree, accounts);
        if tree.root != genesis_block.header.state_root {
            return Err(corrupt(
                "the genesis block's state root is not its accounts'",
            ));
        }
        self.write_block(genesis_block, None, &[], &changes, &tree.writes)?;
        self.meta.insert(META_FORMAT, FORMAT)?;
        self.meta
            .insert(META_GENESIS, &genesis_block.header.parent_hash.0[..])?;
        self.db.flush()?;
        Ok(())
    }

    fn check_consistency(&self, genesis_block: &Block) -> Result<(), StorageError> {
        let (tip, tip_hash) = self.tip()?;
        let stored_genesis = self
            .block(Height(0))?
            .ok_or_else(|| corrupt("genesis block missing"))?;
        if stored_genesis != *genesis_block {
            return Err(corrupt(
                "stored genesis block differs from the genesis file",
            ));
        }
        let block = self
            .block(tip)?
            .ok_or_else(|| corrupt(format!("tip block {tip} missing")))?;
        if block.hash() != tip_hash {
            return Err(corrupt(format!("block {tip} is not the recorded tip")));
        }
        let root = self
            .tree_cache
            .read()
            .map_err(|_| poisoned_cache())?
            .get(&NodeKey::ROOT)
            .map_or(Hash::ZERO, TreeNode::hash);
        if root != block.header.state_root {
            return Err(corrupt(format!(
                "the stored state tree's root is not the state root of block {tip}"
            )));
        }
        if tip.0 > 0 {
            let parent = self
                .block(Height(tip.0 - 1))?
                .ok_or_else(|| corrupt(format!("block {} missing", tip.0 - 1)))?;
            if block.header.parent_hash != parent.hash() {
                return Err(corrupt(format!("block {tip} does not link to its parent")));
            }
            let certificate = self
                .certificate(tip)?
                .ok_or_else(|| corrupt(format!("certificate of block {tip} missing")))?;
            if certificate.block_hash != tip_hash {
                return Err(corrupt(format!(
                    "certificate of block {tip} is for another block"
                )));
            }
        }
        Ok(())
    }

    /// Refuses a database whose tip is below the last height this data
    /// folder recorded as committed.
    fn check_marker(&self) -> Result<(), StorageError> {
        let recorded = match std::fs::read_to_string(&self.marker) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(corrupt(format!(
                    "cannot read {}: {e}",
                    self.marker.display()
                )))
            }
        };
        let recorded: u64 = recorded
            .trim()
            .parse()
            .map_err(|_| corrupt(format!("{} is not a height", self.marker.display())))?;
        let tip = self.tip_height()?;
        if tip.0 < recorded {
            return Err(corrupt(format!(
                "the database ends at height {tip} but block {recorded} was committed here: \
                 the data folder was truncated or damaged (move it aside to resync from peers)"
            )));
        }
        Ok(())
    }

    /// Records `height` as committed in the marker file (after the flush).
    /// Written to a temporary file and renamed, so a crash leaves the old
    /// or the new height, never a torn one; a lost rename only weakens the
    /// check, it never raises a false alarm.
    fn write_marker(&self, height: Height) {
        let temporary = self.marker.with_extension("tmp");
        let written = std::fs::File::create(&temporary)
            .and_then(|mut file| {
                use std::io::Write;
                file.write_all(height.0.to_string().as_bytes())?;
                file.sync_all()
            })
            .and_then(|_| std::fs::rename(&temporary, &self.marker));
        if let Err(e) = written {
            tracing::warn!("cannot record the tip in {}: {e}", self.marker.display());
        }
    }

    /// Removes blocks a crash left written above the tip (see the module
    /// doc); their index entries stay, invisible above the tip, and are
    /// rewritten by the same block when its height commits.
    fn remove_above_tip(&self) -> Result<(), StorageError> {
        let (tip, _) = self.tip()?;
        // Both key layouts start with the big-endian height.
        let above = height_key(tip.next());
        for tree in [&self.blocks, &self.certificates] {
            let keys: Vec<sled::IVec> = tree.range(above..).keys().collect::<Result<_, _>>()?;
            for key in keys {
                tree.remove(key)?;
            }
        }
        Ok(())
    }

    /// Writes a committed block with its certificate, transaction hashes
    /// (one per transaction, in order), account changes and the state tree
    /// nodes they write, then flushes.
    pub fn commit_block(
        &self,
        block: &Block,
        certificate: &Certificate,
        tx_hashes: &[Hash],
        changes: &[(PublicKey, Account)],
        tree_writes: &[(NodeKey, TreeNode)],
    ) -> Result<(), StorageError> {
        assert_eq!(
            tx_hashes.len(),
            block.transactions.len(),
            "one hash per transaction"
        );
        self.write_block(block, Some(certificate), tx_hashes, changes, tree_writes)?;
        self.db.flush()?;
        self.write_marker(block.height());
        Ok(())
    }

    /// The block and its indexes first (invisible above the tip), then the
    /// account changes and the new tip in one atomic batch.
    fn write_block(
        &self,
        block: &Block,
        certificate: Option<&Certificate>,
        tx_hashes: &[Hash],
        changes: &[(PublicKey, Account)],
        tree_writes: &[(NodeKey, TreeNode)],
    ) -> Result<(), StorageError> {
        let height = block.height();
        let key = height_key(height);
        let hash = block.hash();
        for (chunk, bytes) in codec::encode(block).chunks(BLOCK_CHUNK_BYTES).enumerate() {
            self.blocks.insert(chunk_key(height, chunk as u32), bytes)?;
        }
        if let Some(certificate) = certificate {
            self.certificates.insert(key, codec::encode(certificate))?;
        }
        self.block_heights.insert(hash.0, &key)?;
        // Appended as one sorted run; see `tx_index` for why not one
        // insert per transaction into a hash-keyed tree.
        self.tx_index.add_block(height, tx_hashes)?;
        let mut state = sled::Batch::default();
        for (address, account) in changes {
            state.insert(&address.0[..], codec::encode(account));
        }
        state.insert(TIP_KEY, &tip_value(height, &hash)[..]);
        // The cache changes with the batch, under its write lock: a reader
        // sees the old or the new nodes, never the new tip with old nodes.
        let mut cache = self.tree_cache.write().map_err(|_| poisoned_cache())?;
        for (key, node) in tree_writes {
            match node {
                // Cached, and rebuilt at open from what lies below: not
                // stored. Where a leaf stood (an account that moved down
                // beside a newcomer) the leaf goes, or it would be read at
                // open as still there.
                TreeNode::Internal { .. } if key.depth <= TREE_CACHE_DEPTH => {
                    if matches!(cache.get(key), Some(TreeNode::Leaf { .. })) {
                        state.remove(&key.to_bytes()[..]);
                    }
                }
                _ => state.insert(&key.to_bytes()[..], codec::encode(node)),
            }
        }
        let mut accounts = self.account_cache.write().map_err(|_| poisoned_cache())?;
        accounts.generation += 1;
        self.state.apply_batch(state)?;
        for (key, node) in tree_writes {
            if key.depth <= TREE_CACHE_DEPTH {
                cache.insert(*key, *node);
            }
        }
        for (address, account) in changes {
            accounts.put(*address, *account);
        }
        Ok(())
    }

    /// Builds the cache of the state tree down to [`TREE_CACHE_DEPTH`]:
    /// the leaves stored there, and the internal nodes (which are not
    /// stored) hashed up level by level from the nodes one level below
    /// (stored) and those leaves. Keys sort first by depth, so this reads
    /// only the top of the tree. Internal nodes stored there by format 4
    /// are ignored (rebuilt the same).
    fn load_tree_cache(&self) -> Result<(), StorageError> {
        let mut cache = self.tree_cache.write().map_err(|_| poisoned_cache())?;
        cache.clear();
        // Nodes one level below the cache: their hashes are all the
        // deepest cached internal nodes need.
        let mut below: Vec<(NodeKey, Hash)> = Vec::new();
        let end = (TREE_CACHE_DEPTH + 2).to_be_bytes();
        for entry in self.state.range(..&end[..]) {
            let (key, value) = entry?;
            if key.len() != 34 {
                continue; // an address (32 bytes) that sorts here
            }
            let depth = u16::from_be_bytes([key[0], key[1]]);
            let mut prefix = [0u8; 32];
            prefix.copy_from_slice(&key[2..]);
            let node: TreeNode =
                codec::decode(&value).map_err(|e| corrupt(format!("state tree node: {e}")))?;
            let key = NodeKey { depth, prefix };
            match node {
                TreeNode::Leaf { .. } if depth <= TREE_CACHE_DEPTH => {
                    cache.insert(key, node);
                }
                TreeNode::Internal { .. } if depth <= TREE_CACHE_DEPTH => {}
                _ => below.push((key, node.hash())),
            }
        }
        for depth in (0..=TREE_CACHE_DEPTH).rev() {
            // The children at depth + 1: stored ones, or those just built.
            let children: Vec<(NodeKey, Hash)> = if depth == TREE_CACHE_DEPTH {
                std::mem::take(&mut below)
            } else {
                cache
                    .iter()
                    .filter(|(k, _)| k.depth == depth + 1)
                    .map(|(k, n)| (*k, n.hash()))
                    .collect()
            };
            let mut parents: std::collections::HashMap<NodeKey, (Hash, Hash)> =
                std::collections::HashMap::new();
            for (child, hash) in children {
                let (parent, right) = parent_of(&child);
                let sides = parents.entry(parent).or_insert((Hash::ZERO, Hash::ZERO));
                if right {
                    sides.1 = hash;
                } else {
                    sides.0 = hash;
                }
            }
            for (parent, (left, right)) in parents {
                if cache.contains_key(&parent) {
                    return Err(corrupt(format!(
                        "state tree: a leaf at depth {} has nodes below it",
                        parent.depth
                    )));
                }
                cache.insert(parent, TreeNode::Internal { left, right });
            }
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }

    /// The consensus safety state as versions before the safety record
    /// (`crate::safety_record`) kept it, in `meta`.
    pub fn legacy_safety(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.meta.get(META_SAFETY)?.map(|v| v.to_vec()))
    }

    /// Removes the legacy safety state once the record holds it.
    pub fn remove_legacy_safety(&self) -> Result<(), StorageError> {
        self.meta.remove(META_SAFETY)?;
        self.db.flush()?;
        Ok(())
    }

    #[cfg(test)]
    pub fn set_legacy_safety(&self, bytes: &[u8]) {
        self.meta.insert(META_SAFETY, bytes).unwrap();
    }

    /// Height and hash of the last committed block.
    pub fn tip(&self) -> Result<(Height, Hash), StorageError> {
        let value = self
            .state
            .get(TIP_KEY)?
            .ok_or_else(|| corrupt("tip missing"))?;
        if value.len() != 40 {
            return Err(corrupt("tip has the wrong length"));
        }
        let hash = Hash(value[8..].try_into().expect("32 bytes"));
        Ok((decode_height(&value[..8])?, hash))
    }

    pub fn tip_height(&self) -> Result<Height, StorageError> {
        Ok(self.tip()?.0)
    }

    fn committed(&self, height: Height) -> Result<bool, StorageError> {
        Ok(height <= self.tip_height()?)
    }

    pub fn block(&self, height: Height) -> Result<Option<Block>, StorageError> {
        if !self.committed(height)? {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        let chunks = self
            .blocks
            .range(chunk_key(height, 0)..=chunk_key(height, u32::MAX));
        for (expected, entry) in chunks.enumerate() {
            let (key, chunk) = entry?;
            if key[8..] != (expected as u32).to_be_bytes() {
                return Err(corrupt(format!("block {height}: chunk {expected} missing")));
            }
            bytes.extend_from_slice(&chunk);
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        codec::decode(&bytes)
            .map(Some)
            .map_err(|e| corrupt(format!("block {height}: {e}")))
    }

    /// The header of a committed block, read from the block's first chunk
    /// alone (a header's encoding has a fixed length, well under a chunk).
    pub fn header(&self, height: Height) -> Result<Option<BlockHeader>, StorageError> {
        if !self.committed(height)? {
            return Ok(None);
        }
        let Some(chunk) = self.blocks.get(chunk_key(height, 0))? else {
            return Ok(None);
        };
        let len = header_len();
        if chunk.len() < len {
            return Err(corrupt(format!("block {height}: first chunk too short")));
        }
        codec::decode(&chunk[..len])
            .map(Some)
            .map_err(|e| corrupt(format!("block {height} header: {e}")))
    }

    pub fn certificate(&self, height: Height) -> Result<Option<Certificate>, StorageError> {
        if !self.committed(height)? {
            return Ok(None);
        }
        self.decode_from(&self.certificates, &height_key(height), "certificate")
    }

    /// Height of the committed block holding transaction `hash`.
    pub fn tx_height(&self, hash: &Hash) -> Result<Option<Height>, StorageError> {
        match self.tx_index.get(hash)? {
            Some(height) if self.committed(height)? => Ok(Some(height)),
            _ => Ok(None),
        }
    }

    /// How many runs the transaction index has (the benchmark prints it).
    pub fn tx_index_runs(&self) -> usize {
        self.tx_index.runs().len()
    }

    pub fn height_of(&self, hash: &Hash) -> Result<Option<Height>, StorageError> {
        match self.block_heights.get(hash.0)? {
            None => Ok(None),
            Some(bytes) => {
                let height = decode_height(&bytes)?;
                Ok(self.committed(height)?.then_some(height))
            }
        }
    }

    /// The committed account of `address` (the default account if it has
    /// none), from the cache or else from sled.
    pub fn account(&self, address: &PublicKey) -> Result<Account, StorageError> {
        let generation = {
            let cache = self.account_cache.read().map_err(|_| poisoned_cache())?;
            if let Some(account) = cache.accounts.get(address) {
                return Ok(*account);
            }
            cache.generation
        };
        let account = self
            .decode_from(&self.state, &address.0, "account")?
            .unwrap_or_default();
        let mut cache = self.account_cache.write().map_err(|_| poisoned_cache())?;
        if cache.generation == generation {
            cache.put(*address, account);
        }
        Ok(account)
    }

    /// A stored node of the state tree.
    pub fn tree_node(&self, key: &NodeKey) -> Result<Option<TreeNode>, StorageError> {
        if key.depth <= TREE_CACHE_DEPTH {
            let cache = self.tree_cache.read().map_err(|_| poisoned_cache())?;
            return Ok(cache.get(key).copied());
        }
        self.decode_from(&self.state, &key.to_bytes(), "state tree node")
    }

    /// The account of `address` at the tip with the proof of it under the
    /// tip's `state_root`, and the tip's height. The tip and the tree
    /// change together in one batch; a proof read while a block commits is
    /// read again, so it never mixes two heights.
    pub fn account_with_proof(
        &self,
        address: &PublicKey,
    ) -> Result<(Height, Account, StateProof), StorageError> {
        for _ in 0..16 {
            let (height, _) = self.tip()?;
            let reader = TreeReader {
                storage: self,
                error: Default::default(),
            };
            let proof = merkle::prove_account(&reader, address);
            if let Some(e) = reader.error.into_inner() {
                return Err(e);
            }
            let account = self.account(address)?;
            if self.tip()?.0 == height {
                return Ok((height, account, proof));
            }
        }
        Err(StorageError::Busy)
    }

    /// Sum of all balances (walks every account: for tests and checks).
    pub fn total_supply(&self) -> Result<u128, StorageError> {
        let mut total = 0u128;
        for entry in self.state.iter() {
            let (key, bytes) = entry?;
            if key.len() != PublicKey::LEN {
                continue;
            }
            let account: Account =
                codec::decode(&bytes).map_err(|e| corrupt(format!("account: {e}")))?;
            total += account.balance as u128;
        }
        Ok(total)
    }

    fn decode_from<T: serde::de::DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, StorageError> {
        match tree.get(key)? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes)
                .map(Some)
                .map_err(|e| corrupt(format!("{what}: {e}"))),
        }
    }
}

/// Committed state as the state transition reads it. A storage error here
/// means the data folder is unreadable mid-run, which the node cannot
/// survive safely, so it stops.
impl StateView for Storage {
    fn account(&self, address: &PublicKey) -> Account {
        Storage::account(self, address).unwrap_or_else(|e| {
            tracing::error!("cannot read account state: {e}");
            std::process::exit(70)
        })
    }

    fn tree_node(&self, key: &NodeKey) -> Option<TreeNode> {
        Storage::tree_node(self, key).unwrap_or_else(|e| {
            tracing::error!("cannot read the state tree: {e}");
            std::process::exit(70)
        })
    }
}

/// The state tree as proofs read it: errors are kept, not fatal.
struct TreeReader<'a> {
    storage: &'a Storage,
    error: std::cell::RefCell<Option<StorageError>>,
}

impl merkle::TreeStore for TreeReader<'_> {
    fn tree_node(&self, key: &NodeKey) -> Option<TreeNode> {
        match self.storage.tree_node(key) {
            Ok(node) => node,
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e);
                None
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cairn_core::{BlockHeader, View};

    /// Reopens a database this process just closed: sled's background
    /// flusher may hold the folder's lock for a moment after the drop.
    fn reopen(
        path: &Path,
        genesis: &Block,
        accounts: &BTreeMap<PublicKey, Account>,
    ) -> Result<Storage, StorageError> {
        for _ in 0..100 {
            match Storage::open(path, genesis, accounts) {
                Err(StorageError::Sled(sled::Error::Io(e))) if e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                result => return result,
            }
        }
        Storage::open(path, genesis, accounts)
    }

    pub(crate) fn genesis() -> (Block, BTreeMap<PublicKey, Account>) {
        let mut accounts = BTreeMap::new();
        accounts.insert(
            PublicKey([1; 32]),
            Account {
                balance: 100,
                nonce: 0,
            },
        );
        let block = Block {
            header: BlockHeader {
                height: Height(0),
                parent_hash: Hash([7; 32]),
                view: View(0),
                proposer: PublicKey([0; 32]),
                timestamp_ms: 1,
                tx_root: cairn_core::tx_root([]),
                state_root: cairn_core::state::genesis_state_root(&accounts),
            },
            transactions: vec![],
        };
        (block, accounts)
    }

    fn child(parent: &Block) -> (Block, Certificate) {
        child_with(parent, vec![])
    }

    /// A child of `parent` holding `count` transfers (signed, but not
    /// meant to apply: storage does not execute).
    pub(crate) fn child_with_transfers(parent: &Block, count: u64) -> (Block, Certificate) {
        let key = cairn_core::Keypair::from_seed([3; 32]);
        let transactions = (0..count)
            .map(|nonce| {
                cairn_core::SignedTransaction::sign(
                    cairn_core::Transfer {
                        chain_id: "storage-test".into(),
                        from: key.public(),
                        to: PublicKey([2; 32]),
                        amount: 1,
                        nonce,
                    },
                    &key,
                )
            })
            .collect();
        child_with(parent, transactions)
    }

    fn child_with(
        parent: &Block,
        transactions: Vec<cairn_core::SignedTransaction>,
    ) -> (Block, Certificate) {
        let mut header = parent.header.clone();
        header.height = parent.height().next();
        header.parent_hash = parent.hash();
        let hashes: Vec<Hash> = transactions.iter().map(|tx| tx.hash()).collect();
        header.tx_root = cairn_core::tx_root(&hashes);
        let block = Block {
            header,
            transactions,
        };
        let certificate = Certificate {
            height: block.height(),
            view: View(0),
            block_hash: block.hash(),
            signatures: vec![],
        };
        (block, certificate)
    }

    fn tx_hashes(block: &Block) -> Vec<Hash> {
        block.transactions.iter().map(|tx| tx.hash()).collect()
    }

    #[test]
    fn commit_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, accounts) = genesis();
        // Large enough to be stored in several chunks.
        let (block, certificate) = child_with_transfers(&genesis, 200);
        assert!(codec::encode(&block).len() > 3 * BLOCK_CHUNK_BYTES);
        let hashes = tx_hashes(&block);
        {
            let storage = Storage::open(dir.path(), &genesis, &accounts).unwrap();
            assert_eq!(storage.tip_height().unwrap(), Height(0));
            assert_eq!(storage.account(&PublicKey([1; 32])).unwrap().balance, 100);
            let change = [(
                PublicKey([2; 32]),
                Account {
                    balance: 5,
                    nonce: 1,
                },
            )];
            storage
                .commit_block(&block, &certificate, &hashes, &change, &[])
                .unwrap();
        }
        let storage = reopen(dir.path(), &genesis, &accounts).unwrap();
        assert_eq!(storage.tip_height().unwrap(), Height(1));
        assert_eq!(storage.block(Height(1)).unwrap(), Some(block.clone()));
        assert_eq!(storage.block(Height(0)).unwrap(), Some(genesis.clone()));
        assert_eq!(storage.block(Height(2)).unwrap(), None);
        assert_eq!(storage.certificate(Height(1)).unwrap(), Some(certificate));
        assert_eq!(storage.height_of(&block.hash()).unwrap(), Some(Height(1)));
        for hash in &hashes {
            assert_eq!(storage.tx_height(hash).unwrap(), Some(Height(1)));
        }
        assert_eq!(storage.tx_height(&Hash([9; 32])).unwrap(), None);
        assert_eq!(storage.account(&PublicKey([2; 32])).unwrap().nonce, 1);
        assert_eq!(
            storage.account(&PublicKey([3; 32])).unwrap(),
            Account::default()
        );
    }

    /// The account cache answers what sled holds: an account read before a
    /// commit (cached, even when absent) reads as the commit left it after
    /// it, and the cache never holds more than its bound.
    #[test]
    fn cached_accounts_follow_commits_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, accounts) = genesis();
        let storage = Storage::open(dir.path(), &genesis, &accounts).unwrap();
        let (block, certificate) = child(&genesis);
        let block = Block {
            transactions: vec![],
            ..block
        };
        let fresh = PublicKey([7; 32]);
        assert_eq!(storage.account(&fresh).unwrap(), Account::default());
        let after = Account {
            balance: 9,
            nonce: 3,
        };
        storage
            .commit_block(&block, &certificate, &[], &[(fresh, after)], &[])
            .unwrap();
        assert_eq!(storage.account(&fresh).unwrap(), after);
        for i in 0..(ACCOUNT_CACHE_MAX as u32 + 100) {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key[31] = 0xee;
            assert_eq!(
                storage.account(&PublicKey(key)).unwrap(),
                Account::default()
            );
        }
        assert!(storage.account_cache.read().unwrap().accounts.len() <= ACCOUNT_CACHE_MAX);
        // Evicted or not, the committed account still reads right.
        assert_eq!(storage.account(&fresh).unwrap(), after);
    }

    /// A transaction that shares all but the last byte of its hash with a
    /// committed one is not reported as committed.
    #[test]
    fn a_hash_sharing_the_index_key_is_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, accounts) = genesis();
        let (block, certificate) = child(&genesis);
        let storage = Storage::open(dir.path(), &genesis, &accounts).unwrap();
        let committed = Hash([4; 32]);
        let mut lookalike = committed;
        lookalike.0[31] ^= 1;
        let block = Block {
            transactions: vec![],
            ..block
        };
        storage
            .write_block(&block, Some(&certificate), &[committed], &[], &[])
            .unwrap();
        assert_eq!(storage.tx_height(&committed).unwrap(), Some(Height(1)));
        assert_eq!(storage.tx_height(&lookalike).unwrap(), None);
    }

    /// The state tree is stored with each block: every account's proof
    /// read back verifies against the tip's state root (the root the
    /// executor put in the header), across a reopen; absent accounts prove
    /// absent.
    #[test]
    fn account_proofs_verify_against_the_tip_state_root() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, accounts) = genesis();
        let mut state = cairn_core::state::MemoryState::from_accounts(accounts.clone());
        let mut parent = genesis.clone();
        {
            let storage = Storage::open(dir.path(), &genesis, &accounts).unwrap();
            for h in 1..=3u8 {
                let changes: BTreeMap<PublicKey, Account> = (0..5u8)
                    .map(|i| {
                        let account = Account {
                            balance: u64::from(h) * 10 + u64::from(i),
                            nonce: u64::from(h),
                        };
                        (PublicKey([10 * h + i; 32]), account)
                    })
                    .collect();
                parent = commit_changes(&storage, &parent, &mut state, &changes);
            }
        }
        let storage = reopen(dir.path(), &genesis, &accounts).unwrap();
        // What sled holds of the tree is its leaves (this tree is all
        // within the cached depth), and the cache built at open agrees.
        let stored = stored_tree_nodes(&storage);
        for (key, node) in &stored {
            assert!(matches!(node, TreeNode::Leaf { .. }), "{node:?} stored");
            assert_eq!(storage.tree_node(key).unwrap(), Some(*node));
        }
        assert_eq!(stored.len(), state.accounts().len());
        assert_eq!(
            cairn_core::merkle::stored_root(&cairn_core::state::ViewTree(&storage)),
            parent.header.state_root
        );
        let root = parent.header.state_root;
        assert_eq!(
            storage.header(Height(3)).unwrap(),
            Some(parent.header.clone())
        );
        assert_eq!(
            storage.header(Height(0)).unwrap(),
            Some(genesis.header.clone())
        );
        assert_eq!(storage.header(Height(4)).unwrap(), None);
        for (address, account) in state.accounts() {
            let (height, read, proof) = storage.account_with_proof(address).unwrap();
            assert_eq!((height, read), (Height(3), *account));
            assert_eq!(
                merkle::verify_account(&root, address, account, &proof),
                Ok(())
            );
        }
        let absent = PublicKey([99; 32]);
        let (_, read, proof) = storage.account_with_proof(&absent).unwrap();
        assert_eq!(read, Account::default());
        assert_eq!(
            merkle::verify_account(&root, &absent, &read, &proof),
            Ok(())
        );
        let wrong = Account {
            balance: 1,
            nonce: 0,
        };
        assert!(merkle::verify_account(&root, &absent, &wrong, &proof).is_err());
    }

    /// Commits `blocks` blocks of `per_block` new accounts each (seeded
    /// addresses) with their tree writes, returning the last block and the
    /// accounts in memory.
    fn commit_new_accounts(
        storage: &Storage,
        genesis: &Block,
        accounts: &BTreeMap<PublicKey, Account>,
        blocks: u32,
        per_block: u32,
    ) -> (Block, cairn_core::state::MemoryState) {
        let mut state = cairn_core::state::MemoryState::from_accounts(accounts.clone());
        let mut parent = genesis.clone();
        for h in 0..blocks {
            let changes: BTreeMap<PublicKey, Account> = (0..per_block)
                .map(|i| {
                    let seed = (h * per_block + i).to_le_bytes();
                    let address = PublicKey(Hash::digest(&[b"account", &seed[..]]).0);
                    let account = Account {
                        balance: u64::from(i) + 1,
                        nonce: u64::from(h),
                    };
                    (address, account)
                })
                .collect();
            parent = commit_changes(storage, &parent, &mut state, &changes);
        }
        (parent, state)
    }

    /// Commits a child of `parent` that changes `changes` (with the state
    /// tree's writes and root), applies them to `state` too, and returns
    /// the block.
    fn commit_changes(
        storage: &Storage,
        parent: &Block,
        state: &mut cairn_core::state::MemoryState,
        changes: &BTreeMap<PublicKey, Account>,
    ) -> Block {
        let (mut block, mut certificate) = child(parent);
        let tree = merkle::update_tree(&cairn_core::state::ViewTree(storage), changes);
        block.header.state_root = tree.root;
        certificate.block_hash = block.hash();
        let list: Vec<_> = changes.iter().map(|(k, a)| (*k, *a)).collect();
        storage
            .commit_block(&block, &certificate, &[], &list, &tree.writes)
            .unwrap();
        state.apply_changes(changes);
        assert_eq!(state.root(), tree.root);
        block
    }

    /// Every state tree node stored in sled.
    fn stored_tree_nodes(storage: &Storage) -> Vec<(NodeKey, TreeNode)> {
        storage
            .state
            .iter()
            .map(|entry| entry.unwrap())
            .filter(|(key, _)| key.len() == 34)
            .map(|(key, value)| {
                let node_key = NodeKey {
                    depth: u16::from_be_bytes([key[0], key[1]]),
                    prefix: key[2..].try_into().unwrap(),
                };
                (node_key, codec::decode(&value).unwrap())
            })
            .collect()
    }

    /// Internal nodes down to the cached depth are not stored, and are
    /// rebuilt at open from the leaves there and the nodes below: with
    /// enough accounts for leaves above and below that depth (and leaves
    /// that moved down beside newcomers, leaving no stale copy), every
    /// proof read after a reopen verifies against the tip's state root.
    #[test]
    fn the_cached_top_of_the_state_tree_is_rebuilt_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, accounts) = genesis();
        let (tip, state) = {
            let storage = Storage::open(dir.path(), &genesis, &accounts).unwrap();
            commit_new_accounts(&storage, &genesis, &accounts, 8, 5_000)
        };
        let storage = reopen(dir.path(), &genesis, &accounts).unwrap();
        let (mut cached_leaves, mut deep) = (0, 0);
        for (key, node) in stored_tree_nodes(&storage) {
            if key.depth <= TREE_CACHE_DEPTH {
                assert!(matches!(node, TreeNode::Leaf { .. }), "stored: {node:?}");
                cached_leaves += 1;
            } else {
                deep += 1;
            }
        }
        assert!(
            cached_leaves > 100 && deep > 100,
            "{cached_leaves} / {deep}"
        );
        let root = tip.header.state_root;
        assert_eq!(
            merkle::stored_root(&cairn_core::state::ViewTree(&storage)),
            root
        );
        for (address, account) in state.accounts().iter().take(2_000) {
            let (_, read, proof) = storage.account_with_proof(address).unwrap();
            assert_eq!(read, *account);
            assert_eq!(
                merkle::verify_account(&root, address, account, &proof),
                Ok(())
            );
        }
    }

    /// A format 4 folder (every tree node stored) opens, ignores the
    /// internal nodes stored above the cached depth (here made wrong on
    /// purpose), and is marked format 5; a tree that does not hash to the
    /// tip's state root is refused.
    #[test]
    fn a_format_4_folder_is_upgraded_and_a_wrong_tree_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, accounts) = genesis();
        let leaf_key = {
            let storage = Storage::open(dir.path(), &genesis, &accounts).unwrap();
            commit_new_accounts(&storage, &genesis, &accounts, 2, 500);
            let bogus = TreeNode::Internal {
                left: Hash([5; 32]),
                right: Hash([6; 32]),
            };
            storage
                .state
                .insert(&NodeKey::ROOT.to_bytes()[..], codec::encode(&bogus))
                .unwrap();
            storage
                .meta
                .insert(META_FORMAT, b"cairn-storage-4")
                .unwrap();
            storage.flush().unwrap();
            stored_tree_nodes(&storage)
                .into_iter()
                .find(|(_, node)| matches!(node, TreeNode::Leaf { .. }))
                .unwrap()
                .0
        };
        {
            let storage = reopen(dir.path(), &genesis, &accounts).unwrap();
            assert_eq!(
                storage.meta.get(META_FORMAT).unwrap().as_deref(),
                Some(FORMAT)
            );
            // A lost leaf: the tree no longer hashes to the tip's root.
            storage.state.remove(leaf_key.to_bytes()).unwrap();
            storage.flush().unwrap();
        }
        match reopen(dir.path(), &genesis, &accounts) {
            Err(StorageError::Corrupt(e)) => assert!(e.contains("state root"), "{e}"),
            other => panic!("opened a wrong tree: {:?}", other.map(|_| ())),
        }
    }

    /// A folder written by another storage layout is refused by name, not
    /// misread.
    #[test]
    fn refuses_another_storage_format() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, accounts) = genesis();
        {
            let storage = Storage::open(dir.path(), &genesis, &accounts).unwrap();
            storage.meta.remove(META_FORMAT).unwrap();
            storage.db.flush().unwrap();
        }
        let error = reopen(dir.path(), &genesis, &accounts)
            .err()
            .expect("refused");
        assert!(error.to_string().contains("storage format"), "{error}");
    }

    #[test]
    fn refuses_another_genesis() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, accounts) = genesis();
        drop(Storage::open(dir.path(), &genesis, &accounts).unwrap());
        let mut other = genesis.clone();
        other.header.parent_hash = Hash([8; 32]);
        assert!(matches!(
            reopen(dir.path(), &other, &accounts),
            Err(StorageError::WrongGenesis { .. })
        ));
    }

    #[test]
    fn detects_a_missing_tip_block() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, accounts) = genesis();
        let (block, certificate) = child(&genesis);
        {
            let storage = Storage::open(dir.path(), &genesis, &accounts).unwrap();
            storage
                .commit_block(&block, &certificate, &[], &[], &[])
                .unwrap();
            storage.blocks.remove(chunk_key(Height(1), 0)).unwrap();
            storage.db.flush().unwrap();
        }
        assert!(matches!(
            reopen(dir.path(), &genesis, &accounts),
            Err(StorageError::Corrupt(_))
        ));
    }

    /// A block missing a piece in the middle, or truncated, is an error,
    /// never a silently shorter block.
    #[test]
    fn detects_a_missing_or_damaged_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, accounts) = genesis();
        let (block, certificate) = child_with_transfers(&genesis, 200);
        let storage = Storage::open(dir.path(), &genesis, &accounts).unwrap();
        storage
            .commit_block(&block, &certificate, &tx_hashes(&block), &[], &[])
            .unwrap();
        let second = storage.blocks.remove(chunk_key(Height(1), 1)).unwrap();
        let error = storage.block(Height(1)).expect_err("missing chunk");
        assert!(error.to_string().contains("chunk 1 missing"), "{error}");
        storage
            .blocks
            .insert(chunk_key(Height(1), 1), second.unwrap())
            .unwrap();
        assert_eq!(storage.block(Height(1)).unwrap(), Some(block.clone()));
        let chunks = storage
            .blocks
            .range(chunk_key(Height(1), 0)..chunk_key(Height(2), 0))
            .count() as u32;
        storage
            .blocks
            .remove(chunk_key(Height(1), chunks - 1))
            .unwrap();
        assert!(matches!(
            storage.block(Height(1)),
            Err(StorageError::Corrupt(_))
        ));
    }

    /// A database that lost committed blocks (here: a marker ahead of it, as
    /// after sled recovered a truncated log) is refused with a clear error.
    #[test]
    fn a_database_behind_its_marker_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, accounts) = genesis();
        let (block, certificate) = child(&genesis);
        {
            let storage = Storage::open(dir.path(), &genesis, &accounts).unwrap();
            storage
                .commit_block(&block, &certificate, &[], &[], &[])
                .unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join(TIP_MARKER_FILE)).unwrap(),
            "1"
        );
        assert!(reopen(dir.path(), &genesis, &accounts).is_ok());
        std::fs::write(dir.path().join(TIP_MARKER_FILE), "7").unwrap();
        let error = reopen(dir.path(), &genesis, &accounts)
            .err()
            .expect("refused");
        assert!(
            error.to_string().contains("block 7 was committed"),
            "{error}"
        );
    }

    /// A crash after the block was written but before the state batch:
    /// nothing of the block is visible, and start-up removes it.
    #[test]
    fn a_block_above_the_tip_is_invisible_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, accounts) = genesis();
        let (block, certificate) = child(&genesis);
        let tx_hash = Hash([5; 32]);
        {
            let storage = Storage::open(dir.path(), &genesis, &accounts).unwrap();
            // What `write_block` writes before the state batch (in smaller
            // pieces, so that several lie above the tip).
            for (chunk, bytes) in codec::encode(&block).chunks(16).enumerate() {
                storage
                    .blocks
                    .insert(chunk_key(Height(1), chunk as u32), bytes)
                    .unwrap();
            }
            storage
                .certificates
                .insert(height_key(Height(1)), codec::encode(&certificate))
                .unwrap();
            storage.tx_index.add_block(Height(1), &[tx_hash]).unwrap();
            assert_eq!(storage.block(Height(1)).unwrap(), None);
            assert_eq!(storage.certificate(Height(1)).unwrap(), None);
            assert_eq!(storage.tx_height(&tx_hash).unwrap(), None);
            storage.db.flush().unwrap();
        }
        let storage = reopen(dir.path(), &genesis, &accounts).unwrap();
        assert_eq!(storage.tip_height().unwrap(), Height(0));
        let above = chunk_key(Height(1), 0);
        assert_eq!(storage.blocks.range(above..).count(), 0);
        assert!(storage
            .certificates
            .get(height_key(Height(1)))
            .unwrap()
            .is_none());
        assert_eq!(storage.tx_height(&tx_hash).unwrap(), None);
        assert_eq!(storage.total_supply().unwrap(), 100);
    }
}
