//! The safety record: `HOME/safety.json`, the votes this validator signed
//! at its current height (the consensus [`SafetyState`]).
//!
//! Two files: `safety.json` (the state, without the prepared block's
//! transactions) and `safety-block-HASH.bin` (the prepared block, encoded,
//! named by its hash's first 16 hex digits), written only when the
//! prepared block changes, about once a height. The block file is written
//! before the record that names it and the one it replaces is removed
//! after, so a crash leaves at worst a spare file, removed later. A
//! full block in JSON on every vote cost about 70 ms a write; docs/
//! BENCHMARKS.md has the figures.
//!
//! It lives beside the validator key, outside the data folder, so that a
//! data folder that is lost or moved aside (to resync from peers) does not
//! take the record with it: a validator that forgot a vote could sign a
//! conflicting one and, with one Byzantine primary, make a fork. It is
//! written durably before any vote leaves: to a temporary file, which is
//! fsynced, renamed over the record, and the folder fsynced (sled's own
//! flush uses `sync_file_range`, which does not flush the disk's cache).
//!
//! At start:
//! - a record that exists is read, and a damaged one is an error (never
//!   the empty state);
//! - a missing record with a data folder that holds blocks is an error:
//!   the votes behind those blocks are unknown;
//! - a data folder of an older version, which kept the state in its `meta`
//!   tree, has it moved into the record;
//! - no record and no blocks is a validator that lost its record (a wiped
//!   home; `cairn-genesis testnet` writes every new validator an initial
//!   record of no votes, so a new network does not start this way): the
//!   replica abstains (`cairn_consensus`'s `abstain.rs`), and a record
//!   saying so (`"abstaining": true`) is written at once, so that a restart
//!   while it abstains, with blocks synced meanwhile, abstains again
//!   rather than being refused. Every record written while the replica
//!   abstains says so; the first written after says nothing.
//! - a record without `state` is the initial one: height 0, view 0, no
//!   votes.

use std::io::Write;
use std::path::{Path, PathBuf};

use cairn_consensus::SafetyState;
use cairn_core::codec;
use serde::{Deserialize, Serialize};

use crate::storage::Storage;

/// The record's file name in the validator's home folder.
pub const SAFETY_FILE: &str = cairn_genesis::SAFETY_FILE;
/// The prepared block's file name, beside the record.
fn block_file(hash: &cairn_core::Hash) -> String {
    format!("safety-block-{}.bin", &hash.to_string()[..16])
}

fn is_block_file(name: &str) -> bool {
    name.starts_with("safety-block-") && name.ends_with(".bin")
}
const FORMAT: &str = "cairn-safety-1";

/// What `safety.json` holds. `height`, `view` and the votes are for people
/// reading the file; `state` (hex of the encoded [`SafetyState`]) is what
/// the node reads back, and the two are checked against each other.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordJson {
    format: String,
    height: u64,
    view: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prepare_vote: Option<VoteJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    commit_vote: Option<VoteJson>,
    /// Absent in the initial record (no votes yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<String>,
    /// The validator lost its record and abstains from voting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    abstaining: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VoteJson {
    view: u64,
    block_hash: String,
}

/// Where the record lives; written by the consensus thread only.
pub struct SafetyRecord {
    path: PathBuf,
    folder: PathBuf,
    /// The prepared block whose file the record on disk names.
    block_written: std::cell::Cell<Option<cairn_core::Hash>>,
    /// Whether records written now say the replica abstains.
    abstaining: std::cell::Cell<bool>,
}

/// How the record was found at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from `safety.json`.
    Read,
    /// Moved from an older data folder's `meta` tree.
    Converted,
    /// Neither a record nor blocks: a validator that lost its record (a
    /// wiped home). It abstains; a record saying so is written at once.
    Fresh,
    /// A record written while the replica abstained: it abstains again.
    Abstaining,
}

impl Origin {
    /// Whether the replica must abstain (`Replica::new_fresh`).
    pub fn abstains(self) -> bool {
        matches!(self, Origin::Fresh | Origin::Abstaining)
    }
}

impl SafetyRecord {
    /// Loads the record of the validator whose home folder is `home` (see
    /// the module doc for what is refused).
    pub fn load(
        home: &Path,
        storage: &Storage,
    ) -> Result<(SafetyRecord, SafetyState, Origin), String> {
        let record = SafetyRecord {
            path: home.join(SAFETY_FILE),
            folder: home.to_path_buf(),
            block_written: std::cell::Cell::new(None),
            abstaining: std::cell::Cell::new(false),
        };
        match std::fs::read(&record.path) {
            Ok(bytes) => {
                let (state, abstaining) = record.parse(&bytes)?;
                record.abstaining.set(abstaining);
                let origin = if abstaining {
                    Origin::Abstaining
                } else {
                    Origin::Read
                };
                Ok((record, state, origin))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let shown = record.path.display();
                if let Some(bytes) = storage.legacy_safety().map_err(|e| e.to_string())? {
                    let state: SafetyState = codec::decode(&bytes)
                        .map_err(|e| format!("data folder is corrupt: safety state: {e}"))?;
                    record
                        .persist(state.clone())
                        .map_err(|e| format!("cannot write {shown}: {e}"))?;
                    storage.remove_legacy_safety().map_err(|e| e.to_string())?;
                    tracing::info!("moved the safety state into {shown}");
                    return Ok((record, state, Origin::Converted));
                }
                let tip = storage.tip_height().map_err(|e| e.to_string())?;
                if tip.0 > 0 {
                    return Err(format!(
                        "{shown} is missing but the data folder holds blocks up to height \
                         {tip}: the record of this validator's votes is lost, and voting \
                         without it could sign a conflicting vote; restore the file"
                    ));
                }
                record.abstaining.set(true);
                record
                    .persist(SafetyState::default())
                    .map_err(|e| format!("cannot write {shown}: {e}"))?;
                Ok((record, SafetyState::default(), Origin::Fresh))
            }
            Err(e) => Err(format!("cannot read {}: {e}", record.path.display())),
        }
    }

    /// Whether the records written from now on say the replica abstains.
    pub fn set_abstaining(&self, abstaining: bool) {
        self.abstaining.set(abstaining);
    }

    /// The state and whether the replica abstained.
    fn parse(&self, bytes: &[u8]) -> Result<(SafetyState, bool), String> {
        let damaged = |what: String| format!("{} is damaged: {what}", self.path.display());
        let json: RecordJson = serde_json::from_slice(bytes).map_err(|e| damaged(e.to_string()))?;
        if json.format != FORMAT {
            return Err(damaged(format!(
                "format {:?}, expected {FORMAT:?}",
                json.format
            )));
        }
        let Some(encoded) = &json.state else {
            let initial = json.height == 0
                && json.view == 0
                && json.prepare_vote.is_none()
                && json.commit_vote.is_none();
            if !initial {
                return Err(damaged("votes without a state".into()));
            }
            return Ok((SafetyState::default(), json.abstaining));
        };
        let encoded = hex::decode(encoded).map_err(|e| damaged(format!("state: {e}")))?;
        let mut state: SafetyState =
            codec::decode(&encoded).map_err(|e| damaged(format!("state: {e}")))?;
        if state.height().0 != json.height || state.view().0 != json.view {
            return Err(damaged(
                "height or view differs from the encoded state".into(),
            ));
        }
        if let Some(stripped) = state.prepared_block_mut() {
            let path = self.folder.join(block_file(&stripped.hash()));
            let shown = path.display();
            let bytes = std::fs::read(&path)
                .map_err(|e| damaged(format!("cannot read its prepared block {shown}: {e}")))?;
            let block: cairn_core::Block =
                codec::decode(&bytes).map_err(|e| damaged(format!("{shown}: {e}")))?;
            let hashes: Vec<cairn_core::Hash> =
                block.transactions.iter().map(|t| t.hash()).collect();
            if block.hash() != stripped.hash()
                || cairn_core::tx_root(&hashes) != block.header.tx_root
            {
                return Err(damaged(format!(
                    "{shown} is not the prepared block {}",
                    stripped.hash()
                )));
            }
            self.block_written.set(Some(block.hash()));
            *stripped = block;
        }
        self.remove_spare_blocks();
        Ok((state, json.abstaining))
    }

    /// Writes `state` durably: returns once the files and the folder
    /// entries are on disk. Returns the bytes written.
    pub fn persist(&self, mut state: SafetyState) -> std::io::Result<u64> {
        let mut written = 0;
        // The prepared block first, so the record never names a block the
        // folder does not hold.
        let block_hash = state.prepared_block().map(|block| block.hash());
        if let (Some(block), Some(hash)) = (state.prepared_block(), block_hash) {
            if self.block_written.get() != Some(hash) {
                let bytes = codec::encode(block);
                write_durably(&self.folder.join(block_file(&hash)), &bytes)?;
                std::fs::File::open(&self.folder)?.sync_all()?;
                written += bytes.len() as u64;
            }
        }
        if let Some(block) = state.prepared_block_mut() {
            block.transactions = Vec::new();
        }
        let vote = |vote: Option<(cairn_core::View, cairn_core::Hash)>| {
            vote.map(|(view, hash)| VoteJson {
                view: view.0,
                block_hash: hash.to_string(),
            })
        };
        let json = RecordJson {
            format: FORMAT.into(),
            height: state.height().0,
            view: state.view().0,
            prepare_vote: vote(state.prepare_vote()),
            commit_vote: vote(state.commit_vote()),
            state: Some(hex::encode(codec::encode(&state))),
            abstaining: self.abstaining.get(),
        };
        let mut bytes = serde_json::to_vec(&json)?;
        bytes.push(b'\n');
        write_durably(&self.path, &bytes)?;
        std::fs::File::open(&self.folder)?.sync_all()?;
        if block_hash != self.block_written.get() {
            self.block_written.set(block_hash);
            self.remove_spare_blocks();
        }
        Ok(written + bytes.len() as u64)
    }

    /// Removes block files the record does not name (left by the record
    /// moving on, or by a crash between a block file and its record).
    fn remove_spare_blocks(&self) {
        let keep = self.block_written.get().map(|hash| block_file(&hash));
        let Ok(entries) = std::fs::read_dir(&self.folder) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_block_file(name) && Some(name) != keep.as_deref() {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!("cannot remove {}: {e}", entry.path().display());
                }
            }
        }
    }
}

/// Writes `bytes` to a temporary file beside `path`, fsyncs it and renames
/// it over `path` (the caller fsyncs the folder).
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::tests::{child_with_transfers, genesis};

    /// A validator's home folder with a fresh data folder in it.
    fn open_home() -> (tempfile::TempDir, Storage) {
        let home = tempfile::tempdir().unwrap();
        let (block, accounts) = genesis();
        let storage = Storage::open(&home.path().join("data"), &block, &accounts).unwrap();
        (home, storage)
    }

    /// A state at `height` in view 2 (its fields are the consensus
    /// crate's own; its serde form is the way in from here).
    fn state_at(height: u64) -> SafetyState {
        serde_json::from_value(serde_json::json!({
            "height": height, "view": 2, "start_view": 0, "proposal": null,
            "prepare_vote": null, "commit_vote": null, "view_change": null,
            "prepared": null, "prepared_block": null,
        }))
        .unwrap()
    }

    #[test]
    fn a_written_record_reads_back() {
        let (home, storage) = open_home();
        std::fs::write(
            home.path().join(SAFETY_FILE),
            cairn_genesis::INITIAL_SAFETY_RECORD,
        )
        .unwrap();
        let (record, state, origin) = SafetyRecord::load(home.path(), &storage).unwrap();
        assert_eq!((state, origin), (SafetyState::default(), Origin::Read));
        record.persist(state_at(9)).unwrap();
        let (_, state, origin) = SafetyRecord::load(home.path(), &storage).unwrap();
        assert_eq!((state, origin), (state_at(9), Origin::Read));
        let text = std::fs::read_to_string(home.path().join(SAFETY_FILE)).unwrap();
        assert!(text.contains("\"height\":9"), "{text}");
        assert!(!home.path().join("safety.json.tmp").exists());
    }

    /// A state at `height` holding a prepared certificate for `block`:
    /// `prepared` and `prepared_block` are the state's last fields, so its
    /// encoding is that of [`state_at`] with the final two `None`s (0
    /// bytes) made `Some`.
    pub(super) fn prepared_at(height: u64, block: &cairn_core::Block) -> SafetyState {
        let mut bytes = codec::encode(&state_at(height));
        assert_eq!(bytes.pop(), Some(0), "prepared_block is None and last");
        assert_eq!(bytes.pop(), Some(0), "prepared is None");
        bytes.push(1);
        bytes.extend(codec::encode(&cairn_consensus::PreparedCertificate {
            view: cairn_core::View(2),
            block_hash: block.hash(),
            signatures: vec![],
        }));
        bytes.push(1);
        bytes.extend(codec::encode(block));
        let state: SafetyState = codec::decode(&bytes).unwrap();
        assert_eq!(state.prepared_block(), Some(block));
        state
    }

    fn block_files(home: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(home)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| is_block_file(name))
            .collect();
        names.sort();
        names
    }

    /// The prepared block lives in its own file, written once per block;
    /// the record reads back whole; a block file the record does not name
    /// is removed, and one that is not the named block is refused.
    #[test]
    fn the_prepared_block_is_kept_apart() {
        let home = tempfile::tempdir().unwrap();
        let (genesis_block, accounts) = genesis();
        let storage = Storage::open(&home.path().join("data"), &genesis_block, &accounts).unwrap();
        let (block, _) = child_with_transfers(&genesis_block, 200);
        let (other, _) = child_with_transfers(&block, 3);
        let (record, _, _) = SafetyRecord::load(home.path(), &storage).unwrap();
        let first = record.persist(prepared_at(5, &block)).unwrap();
        let again = record.persist(prepared_at(5, &block)).unwrap();
        assert!(
            first > again + 10_000,
            "the block is written once: {first} then {again}"
        );
        let json = std::fs::read_to_string(home.path().join(SAFETY_FILE)).unwrap();
        assert!(
            json.len() < 2_000,
            "the record holds no transactions: {} bytes",
            json.len()
        );
        assert_eq!(block_files(home.path()), [block_file(&block.hash())]);
        let (_, state, _) = SafetyRecord::load(home.path(), &storage).unwrap();
        assert_eq!(state, prepared_at(5, &block));

        // A crash after the next block's file, before its record: the spare
        // file goes at the next load, and the record still reads.
        std::fs::write(
            home.path().join(block_file(&other.hash())),
            codec::encode(&other),
        )
        .unwrap();
        let (record, state, _) = SafetyRecord::load(home.path(), &storage).unwrap();
        assert_eq!(state, prepared_at(5, &block));
        assert_eq!(block_files(home.path()), [block_file(&block.hash())]);

        // Moving on to a state without a prepared block removes the file.
        record.persist(state_at(6)).unwrap();
        assert!(block_files(home.path()).is_empty());

        // A block file that is not the named block is refused.
        record.persist(prepared_at(7, &block)).unwrap();
        std::fs::write(
            home.path().join(block_file(&block.hash())),
            codec::encode(&other),
        )
        .unwrap();
        let error = SafetyRecord::load(home.path(), &storage).err().unwrap();
        assert!(error.contains("is not the prepared block"), "{error}");
    }

    /// An older data folder's state moves into the record, once.
    #[test]
    fn a_legacy_state_is_moved_into_the_record() {
        let (home, storage) = open_home();
        storage.set_legacy_safety(&codec::encode(&state_at(4)));
        let (_, state, origin) = SafetyRecord::load(home.path(), &storage).unwrap();
        assert_eq!((state, origin), (state_at(4), Origin::Converted));
        assert_eq!(storage.legacy_safety().unwrap(), None);
        let (_, state, origin) = SafetyRecord::load(home.path(), &storage).unwrap();
        assert_eq!((state, origin), (state_at(4), Origin::Read));
    }

    /// No record and no blocks: a wiped home. It abstains, and says so in a
    /// record at once, so a restart after syncing blocks abstains again
    /// instead of being refused; the first record written after it
    /// stopped abstaining is an ordinary one.
    #[test]
    fn a_home_without_a_record_abstains_until_told_otherwise() {
        let (home, storage) = open_home();
        let (record, state, origin) = SafetyRecord::load(home.path(), &storage).unwrap();
        assert_eq!((state, origin), (SafetyState::default(), Origin::Fresh));
        assert!(origin.abstains());
        let text = std::fs::read_to_string(home.path().join(SAFETY_FILE)).unwrap();
        assert!(text.contains("\"abstaining\":true"), "{text}");
        let (_, _, origin) = SafetyRecord::load(home.path(), &storage).unwrap();
        assert_eq!(origin, Origin::Abstaining);
        record.persist(state_at(3)).unwrap();
        let (_, _, origin) = SafetyRecord::load(home.path(), &storage).unwrap();
        assert_eq!(origin, Origin::Abstaining, "persisted while abstaining");
        record.set_abstaining(false);
        record.persist(state_at(4)).unwrap();
        let (_, state, origin) = SafetyRecord::load(home.path(), &storage).unwrap();
        assert_eq!((state, origin), (state_at(4), Origin::Read));
        let text = std::fs::read_to_string(home.path().join(SAFETY_FILE)).unwrap();
        assert!(!text.contains("abstaining"), "{text}");
    }

    #[test]
    fn a_damaged_record_is_refused_not_emptied() {
        let (home, storage) = open_home();
        let (record, _, _) = SafetyRecord::load(home.path(), &storage).unwrap();
        record.persist(state_at(9)).unwrap();
        let path = home.path().join(SAFETY_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        for damaged in [
            String::new(),
            text[..text.len() / 2].to_string(),
            text.replace("\"height\":9", "\"height\":8"),
            text.replace("cairn-safety-1", "cairn-safety-0"),
            r#"{"format":"cairn-safety-1","height":9,"view":0}"#.into(),
        ] {
            std::fs::write(&path, &damaged).unwrap();
            let error = SafetyRecord::load(home.path(), &storage)
                .err()
                .expect("refused");
            assert!(error.contains("safety.json is damaged"), "{error}");
        }
    }
}

/// What a safety record write costs (run with `cargo test --release -p
/// cairn-node safety_record_cost -- --ignored --nocapture`).
#[cfg(test)]
mod cost {
    use super::tests::prepared_at;
    use super::*;
    use crate::storage::tests::{child_with_transfers, genesis};
    use std::time::Instant;

    #[test]
    #[ignore]
    fn safety_record_cost() {
        let home = tempfile::tempdir_in(".").unwrap();
        let (genesis_block, accounts) = genesis();
        let storage = Storage::open(&home.path().join("data"), &genesis_block, &accounts).unwrap();
        let (record, _, _) = SafetyRecord::load(home.path(), &storage).unwrap();
        let rounds = 20;
        let mut blocks = Vec::new();
        let mut parent = genesis_block;
        for _ in 0..rounds {
            let (block, _) = child_with_transfers(&parent, 10_000);
            parent = block.clone();
            blocks.push(block);
        }
        let (mut with_block, mut without) = (0.0, 0.0);
        let mut encode = 0.0;
        for (i, block) in blocks.iter().enumerate() {
            let state = prepared_at(i as u64 + 1, block);
            let started = Instant::now();
            let _ = codec::encode(&state);
            encode += started.elapsed().as_secs_f64();
            let started = Instant::now();
            record.persist(state.clone()).unwrap();
            with_block += started.elapsed().as_secs_f64();
            let started = Instant::now();
            record.persist(state).unwrap();
            without += started.elapsed().as_secs_f64();
        }
        let ms = |s: f64| s * 1e3 / rounds as f64;
        println!(
            "safety record write, 10,000-tx prepared block: {:.2} ms with the block file, \
             {:.2} ms without (the block already written); encoding the whole state: {:.2} ms",
            ms(with_block),
            ms(without),
            ms(encode)
        );
    }
}
