//! The safety record: `HOME/safety.json`, the votes this validator signed
//! at its current height (the consensus [`SafetyState`]).
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
//! - no record and no blocks is a new (or fully wiped) validator.

use std::io::Write;
use std::path::{Path, PathBuf};

use cairn_consensus::SafetyState;
use cairn_core::codec;
use serde::{Deserialize, Serialize};

use crate::storage::Storage;

/// The record's file name in the validator's home folder.
pub const SAFETY_FILE: &str = "safety.json";
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
    state: String,
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
}

/// How the record was found at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from `safety.json`.
    Read,
    /// Moved from an older data folder's `meta` tree.
    Converted,
    /// Neither a record nor blocks: a new or fully wiped validator.
    Fresh,
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
        };
        match std::fs::read(&record.path) {
            Ok(bytes) => {
                let state = record.parse(&bytes)?;
                Ok((record, state, Origin::Read))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let shown = record.path.display();
                if let Some(bytes) = storage.legacy_safety().map_err(|e| e.to_string())? {
                    let state: SafetyState = codec::decode(&bytes)
                        .map_err(|e| format!("data folder is corrupt: safety state: {e}"))?;
                    record
                        .persist(&state)
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
                Ok((record, SafetyState::default(), Origin::Fresh))
            }
            Err(e) => Err(format!("cannot read {}: {e}", record.path.display())),
        }
    }

    fn parse(&self, bytes: &[u8]) -> Result<SafetyState, String> {
        let damaged = |what: String| format!("{} is damaged: {what}", self.path.display());
        let json: RecordJson = serde_json::from_slice(bytes).map_err(|e| damaged(e.to_string()))?;
        if json.format != FORMAT {
            return Err(damaged(format!(
                "format {:?}, expected {FORMAT:?}",
                json.format
            )));
        }
        let encoded = hex::decode(&json.state).map_err(|e| damaged(format!("state: {e}")))?;
        let state: SafetyState =
            codec::decode(&encoded).map_err(|e| damaged(format!("state: {e}")))?;
        if state.height().0 != json.height || state.view().0 != json.view {
            return Err(damaged(
                "height or view differs from the encoded state".into(),
            ));
        }
        Ok(state)
    }

    /// Writes `state` durably: returns once the file and the folder entry
    /// are on disk. Returns the bytes written.
    pub fn persist(&self, state: &SafetyState) -> std::io::Result<u64> {
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
            state: hex::encode(codec::encode(state)),
        };
        let mut bytes = serde_json::to_vec(&json)?;
        bytes.push(b'\n');
        let temporary = self.path.with_extension("json.tmp");
        {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, &self.path)?;
        std::fs::File::open(&self.folder)?.sync_all()?;
        Ok(bytes.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::tests::genesis;

    /// A state at `height` in view 2 (its fields are the consensus
    /// crate's own; its serde form is the way in from here).
    fn state_at(height: u64) -> SafetyState {
        serde_json::from_value(serde_json::json!({
            "height": height, "view": 2, "start_view": 0, "proposal": null,
            "prepare_vote": null, "commit_vote": null, "view_change": null,
            "prepared": null,
        }))
        .unwrap()
    }

    #[test]
    fn a_written_record_reads_back() {
        let home = tempfile::tempdir().unwrap();
        let (block, accounts) = genesis();
        let storage = Storage::open(&home.path().join("data"), &block, &accounts).unwrap();
        let (record, state, origin) = SafetyRecord::load(home.path(), &storage).unwrap();
        assert_eq!((state, origin), (SafetyState::default(), Origin::Fresh));
        record.persist(&state_at(9)).unwrap();
        let (_, state, origin) = SafetyRecord::load(home.path(), &storage).unwrap();
        assert_eq!((state, origin), (state_at(9), Origin::Read));
        let text = std::fs::read_to_string(home.path().join(SAFETY_FILE)).unwrap();
        assert!(text.contains("\"height\":9"), "{text}");
        assert!(!home.path().join("safety.json.tmp").exists());
    }

    /// An older data folder's state moves into the record, once.
    #[test]
    fn a_legacy_state_is_moved_into_the_record() {
        let home = tempfile::tempdir().unwrap();
        let (block, accounts) = genesis();
        let storage = Storage::open(&home.path().join("data"), &block, &accounts).unwrap();
        storage.set_legacy_safety(&codec::encode(&state_at(4)));
        let (_, state, origin) = SafetyRecord::load(home.path(), &storage).unwrap();
        assert_eq!((state, origin), (state_at(4), Origin::Converted));
        assert_eq!(storage.legacy_safety().unwrap(), None);
        let (_, state, origin) = SafetyRecord::load(home.path(), &storage).unwrap();
        assert_eq!((state, origin), (state_at(4), Origin::Read));
    }

    #[test]
    fn a_damaged_record_is_refused_not_emptied() {
        let home = tempfile::tempdir().unwrap();
        let (block, accounts) = genesis();
        let storage = Storage::open(&home.path().join("data"), &block, &accounts).unwrap();
        let (record, _, _) = SafetyRecord::load(home.path(), &storage).unwrap();
        record.persist(&state_at(9)).unwrap();
        let path = home.path().join(SAFETY_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        for damaged in [
            String::new(),
            text[..text.len() / 2].to_string(),
            text.replace("\"height\":9", "\"height\":8"),
            text.replace("cairn-safety-1", "cairn-safety-0"),
        ] {
            std::fs::write(&path, &damaged).unwrap();
            let error = SafetyRecord::load(home.path(), &storage)
                .err()
                .expect("refused");
            assert!(error.contains("safety.json is damaged"), "{error}");
        }
    }
}
