//! sled storage: the chain, certificates, indexes, account state, and the
//! consensus safety state.
//!
//! Trees:
//! - `blocks`: height (big-endian u64) -> encoded [`Block`]
//! - `certificates`: height -> encoded [`Certificate`]
//! - `block_heights`: block hash -> height
//! - `tx_locations`: transaction hash -> (height, index in block)
//! - `accounts`: address -> encoded [`Account`]
//! - `meta`: tip height, genesis hash, safety state
//!
//! A block, its certificate, its indexes, the account changes it produces and
//! the new tip are written in **one** sled transaction across the trees and
//! then flushed once, so a `kill -9` at any moment leaves either the whole
//! block or none of it. The safety state is flushed before a vote leaves.

use std::collections::BTreeMap;
use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use cairn_core::codec;
use cairn_core::state::{Account, StateView};
use cairn_core::{Block, Certificate, Hash, Height, PublicKey};

const META_TIP: &[u8] = b"tip_height";
const META_GENESIS: &[u8] = b"genesis_hash";
const META_SAFETY: &[u8] = b"safety";

/// What went wrong with the data folder.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("data folder is corrupt: {0}")]
    Corrupt(String),
    #[error("data folder belongs to another chain (genesis {found}, expected {expected})")]
    WrongGenesis { expected: Hash, found: Hash },
}

fn corrupt(message: impl Into<String>) -> StorageError {
    StorageError::Corrupt(message.into())
}

/// Where a committed transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TxLocation {
    pub height: Height,
    pub index: u32,
}

/// The node's database. Cheap to clone (sled trees are reference counted).
#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    blocks: sled::Tree,
    certificates: sled::Tree,
    block_heights: sled::Tree,
    tx_locations: sled::Tree,
    accounts: sled::Tree,
    meta: sled::Tree,
}

fn height_key(height: Height) -> [u8; 8] {
    height.0.to_be_bytes()
}

impl Storage {
    /// Opens (or creates) the database in `path` for the chain whose genesis
    /// is `genesis_block` with `genesis_accounts`, and checks that what is
    /// there is whole: the genesis matches, the tip block and certificate
    /// exist and decode, and the tip links to its parent.
    pub fn open(
        path: &Path,
        genesis_block: &Block,
        genesis_accounts: &BTreeMap<PublicKey, Account>,
    ) -> Result<Storage, StorageError> {
        // sled may panic instead of erring on some damaged files; a damaged
        // data folder must be a clear error, never a panic (or a panic loop
        // under a supervisor).
        // The default hook would print a panic report for a failure we turn
        // into an error; silence it for the duration (start-up only).
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
        let db = sled::Config::new().path(path).open()?;
        let storage = Storage {
            blocks: db.open_tree("blocks")?,
            certificates: db.open_tree("certificates")?,
            block_heights: db.open_tree("block_heights")?,
            tx_locations: db.open_tree("tx_locations")?,
            accounts: db.open_tree("accounts")?,
            meta: db.open_tree("meta")?,
            db,
        };
        let genesis_hash = genesis_block.header.parent_hash;
        match storage.meta.get(META_GENESIS)? {
            None => storage.init_genesis(genesis_block, genesis_accounts)?,
            Some(found) => {
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
        storage.check_consistency(genesis_block)?;
        Ok(storage)
    }

    fn init_genesis(
        &self,
        genesis_block: &Block,
        accounts: &BTreeMap<PublicKey, Account>,
    ) -> Result<(), StorageError> {
        let changes: Vec<_> = accounts.iter().map(|(k, a)| (*k, *a)).collect();
        self.write_block(genesis_block, None, &[], &changes)?;
        self.meta
            .insert(META_GENESIS, &genesis_block.header.parent_hash.0[..])?;
        self.db.flush()?;
        Ok(())
    }

    fn check_consistency(&self, genesis_block: &Block) -> Result<(), StorageError> {
        let tip = self.tip_height()?;
        let stored_genesis = self
            .block(Height(0))?
            .ok_or_else(|| corrupt("genesis block missing"))?;
        if stored_genesis != *genesis_block {
            return Err(corrupt(
                "stored genesis block differs from the genesis file",
            ));
        }
        if let Some((last, _)) = self.blocks.last()? {
            let last = u64::from_be_bytes(
                last.as_ref()
                    .try_into()
                    .map_err(|_| corrupt("block key has the wrong length"))?,
            );
            if last != tip.0 {
                return Err(corrupt(format!(
                    "tip is {tip} but the last stored block is {last}"
                )));
            }
        }
        if tip.0 > 0 {
            let block = self
                .block(tip)?
                .ok_or_else(|| corrupt(format!("tip block {tip} missing")))?;
            let parent = self
                .block(Height(tip.0 - 1))?
                .ok_or_else(|| corrupt(format!("block {} missing", tip.0 - 1)))?;
            if block.header.parent_hash != parent.hash() {
                return Err(corrupt(format!("block {tip} does not link to its parent")));
            }
            let certificate = self
                .certificate(tip)?
                .ok_or_else(|| corrupt(format!("certificate of block {tip} missing")))?;
            if certificate.block_hash != block.hash() {
                return Err(corrupt(format!(
                    "certificate of block {tip} is for another block"
                )));
            }
        }
        Ok(())
    }

    /// Writes a block, its certificate (none for genesis), its indexes, the
    /// account changes and the new tip in one transaction, then flushes.
    pub fn commit_block(
        &self,
        block: &Block,
        certificate: &Certificate,
        tx_hashes: &[Hash],
        changes: &[(PublicKey, Account)],
    ) -> Result<(), StorageError> {
        assert_eq!(
            tx_hashes.len(),
            block.transactions.len(),
            "one hash per transaction"
        );
        self.write_block(block, Some(certificate), tx_hashes, changes)?;
        self.db.flush()?;
        Ok(())
    }

    fn write_block(
        &self,
        block: &Block,
        certificate: Option<&Certificate>,
        tx_hashes: &[Hash],
        changes: &[(PublicKey, Account)],
    ) -> Result<(), StorageError> {
        let height = block.height();
        let key = height_key(height);
        let block_bytes = codec::encode(block);
        let certificate_bytes = certificate.map(codec::encode);
        let mut tx_batch = sled::Batch::default();
        for (index, hash) in tx_hashes.iter().enumerate() {
            let location = TxLocation {
                height,
                index: index as u32,
            };
            tx_batch.insert(&hash.0[..], codec::encode(&location));
        }
        let mut account_batch = sled::Batch::default();
        for (address, account) in changes {
            account_batch.insert(&address.0[..], codec::encode(account));
        }
        let hash = block.hash();
        let result: Result<(), TransactionError<()>> = (
            &self.blocks,
            &self.certificates,
            &self.block_heights,
            &self.tx_locations,
            &self.accounts,
            &self.meta,
        )
            .transaction(|(blocks, certificates, heights, txs, accounts, meta)| {
                blocks.insert(&key, block_bytes.as_slice())?;
                if let Some(bytes) = &certificate_bytes {
                    certificates.insert(&key, bytes.as_slice())?;
                }
                heights.insert(&hash.0, &key)?;
                txs.apply_batch(&tx_batch)?;
                accounts.apply_batch(&account_batch)?;
                meta.insert(META_TIP, &key)?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(e.into()),
            Err(TransactionError::Abort(())) => unreachable!("the block transaction never aborts"),
        }
    }

    /// Durably records the consensus safety state. Returns after the flush.
    pub fn persist_safety(&self, bytes: &[u8]) -> Result<(), StorageError> {
        self.meta.insert(META_SAFETY, bytes)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }

    pub fn safety(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.meta.get(META_SAFETY)?.map(|v| v.to_vec()))
    }

    pub fn tip_height(&self) -> Result<Height, StorageError> {
        let bytes = self
            .meta
            .get(META_TIP)?
            .ok_or_else(|| corrupt("tip height missing"))?;
        let bytes: [u8; 8] = bytes
            .as_ref()
            .try_into()
            .map_err(|_| corrupt("tip height has the wrong length"))?;
        Ok(Height(u64::from_be_bytes(bytes)))
    }

    pub fn block(&self, height: Height) -> Result<Option<Block>, StorageError> {
        self.decode_from(&self.blocks, &height_key(height), "block")
    }

    pub fn certificate(&self, height: Height) -> Result<Option<Certificate>, StorageError> {
        self.decode_from(&self.certificates, &height_key(height), "certificate")
    }

    pub fn tx_location(&self, hash: &Hash) -> Result<Option<TxLocation>, StorageError> {
        self.decode_from(&self.tx_locations, &hash.0, "transaction location")
    }

    pub fn height_of(&self, hash: &Hash) -> Result<Option<Height>, StorageError> {
        match self.block_heights.get(hash.0)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(Height(u64::from_be_bytes(
                bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt("block height has the wrong length"))?,
            )))),
        }
    }

    pub fn account(&self, address: &PublicKey) -> Result<Account, StorageError> {
        Ok(self
            .decode_from(&self.accounts, &address.0, "account")?
            .unwrap_or_default())
    }

    /// Sum of all balances (walks every account: for tests and checks).
    pub fn total_supply(&self) -> Result<u128, StorageError> {
        let mut total = 0u128;
        for entry in self.accounts.iter() {
            let (_, bytes) = entry?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::{BlockHeader, View};

    fn genesis() -> (Block, BTreeMap<PublicKey, Account>) {
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
        let mut header = parent.header.clone();
        header.height = parent.height().next();
        header.parent_hash = parent.hash();
        let block = Block {
            header,
            transactions: vec![],
        };
        let certificate = Certificate {
            height: block.height(),
            view: View(0),
            block_hash: block.hash(),
            signatures: vec![],
        };
        (block, certificate)
    }

    #[test]
    fn commit_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, accounts) = genesis();
        let (block, certificate) = child(&genesis);
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
                .commit_block(&block, &certificate, &[], &change)
                .unwrap();
        }
        let storage = Storage::open(dir.path(), &genesis, &accounts).unwrap();
        assert_eq!(storage.tip_height().unwrap(), Height(1));
        assert_eq!(storage.block(Height(1)).unwrap(), Some(block.clone()));
        assert_eq!(storage.certificate(Height(1)).unwrap(), Some(certificate));
        assert_eq!(storage.height_of(&block.hash()).unwrap(), Some(Height(1)));
        assert_eq!(storage.account(&PublicKey([2; 32])).unwrap().nonce, 1);
        assert_eq!(
            storage.account(&PublicKey([3; 32])).unwrap(),
            Account::default()
        );
    }

    #[test]
    fn refuses_another_genesis() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, accounts) = genesis();
        drop(Storage::open(dir.path(), &genesis, &accounts).unwrap());
        let mut other = genesis.clone();
        other.header.parent_hash = Hash([8; 32]);
        assert!(matches!(
            Storage::open(dir.path(), &other, &accounts),
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
                .commit_block(&block, &certificate, &[], &[])
                .unwrap();
            storage.blocks.remove(height_key(Height(1))).unwrap();
            storage.db.flush().unwrap();
        }
        assert!(matches!(
            Storage::open(dir.path(), &genesis, &accounts),
            Err(StorageError::Corrupt(_))
        ));
    }
}
