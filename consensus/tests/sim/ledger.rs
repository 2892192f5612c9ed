//! The simulator's in-memory ledger: real signed transfers applied with the
//! core state transition, blocks checked root by root, commits asserted to
//! extend the tip.

use std::collections::BTreeMap;

use cairn_consensus::Ledger;
use cairn_core::state::{next_state_root, Account, MemoryState, Overlay, StateView};
use cairn_core::{
    tx_root, Block, BlockHeader, Certificate, Hash, Height, Keypair, PublicKey, SignedTransaction,
    Transfer, View,
};

/// Funded accounts that send the simulated transfers.
pub const ACCOUNTS: u8 = 4;
const BALANCE: u64 = 1_000_000;

pub struct SimLedger {
    chain_id: String,
    accounts: Vec<Keypair>,
    state: MemoryState,
    /// State roots by height; index 0 is genesis.
    roots: Vec<Hash>,
    /// Committed blocks; index `h - 1` holds height `h`.
    pub blocks: Vec<(Block, Certificate)>,
    genesis_hash: Hash,
    pub pending: bool,
    pub validate_calls: u64,
}

impl SimLedger {
    pub fn new(chain_id: &str) -> SimLedger {
        let accounts: Vec<Keypair> = (0..ACCOUNTS)
            .map(|i| Keypair::from_seed([100 + i; 32]))
            .collect();
        let mut state = MemoryState::default();
        for key in &accounts {
            let account = Account {
                balance: BALANCE,
                nonce: 0,
            };
            state.accounts.insert(key.public(), account);
        }
        let root = cairn_core::state::genesis_state_root(&state.accounts);
        SimLedger {
            chain_id: chain_id.to_string(),
            accounts,
            state,
            roots: vec![root],
            blocks: vec![],
            genesis_hash: Hash::digest(&[b"sim genesis"]),
            pending: true,
            validate_calls: 0,
        }
    }

    pub fn height(&self) -> Height {
        Height(self.blocks.len() as u64)
    }

    pub fn total_supply(&self) -> u128 {
        self.state.total_supply()
    }

    /// Committed blocks with certificates from `from` up, at most `count`.
    pub fn blocks_from(&self, from: Height, count: usize) -> Vec<(Block, Certificate)> {
        let start = (from.0.max(1) - 1) as usize;
        self.blocks
            .iter()
            .skip(start)
            .take(count)
            .cloned()
            .collect()
    }

    /// A valid block on the tip; `salt` varies the transfer amount so a
    /// Byzantine primary can make a conflicting block.
    pub fn build(&self, view: View, proposer: PublicKey, now_ms: u64, salt: u64) -> Block {
        let height = self.height().next();
        let k = self.accounts.len() as u64;
        let from = &self.accounts[((height.0 + view.0) % k) as usize];
        let to = self.accounts[((height.0 + view.0 + 1) % k) as usize].public();
        let transfer = Transfer {
            chain_id: self.chain_id.clone(),
            from: from.public(),
            to,
            amount: 1 + (height.0 + salt) % 7,
            nonce: self.state.account(&from.public()).nonce,
        };
        let tx = SignedTransaction::sign(transfer, from);
        let mut overlay = Overlay::new(&self.state);
        overlay
            .apply(&tx, &self.chain_id)
            .expect("the generator makes valid transfers");
        let state_root = next_state_root(self.root(), overlay.changes());
        let header = BlockHeader {
            height,
            parent_hash: self.tip().1,
            view,
            proposer,
            timestamp_ms: now_ms,
            tx_root: tx_root([&tx.hash()]),
            state_root,
        };
        Block {
            header,
            transactions: vec![tx],
        }
    }

    fn root(&self) -> &Hash {
        self.roots.last().expect("genesis root")
    }

    /// Applies the block's transfers to a copy of the state: the changes,
    /// or why the block is invalid.
    fn apply(&self, block: &Block) -> Result<BTreeMap<PublicKey, Account>, String> {
        let header = &block.header;
        if header.height != self.height().next() || header.parent_hash != self.tip().1 {
            return Err("not on the tip".into());
        }
        let hashes: Vec<Hash> = block.transactions.iter().map(|t| t.hash()).collect();
        if tx_root(&hashes) != header.tx_root {
            return Err("tx root".into());
        }
        let mut overlay = Overlay::new(&self.state);
        for tx in &block.transactions {
            tx.verify_signature().map_err(|e| e.to_string())?;
            overlay
                .apply(tx, &self.chain_id)
                .map_err(|e| e.to_string())?;
        }
        let changes = overlay.into_changes();
        if next_state_root(self.root(), &changes) != header.state_root {
            return Err("state root".into());
        }
        Ok(changes)
    }
}

impl Ledger for SimLedger {
    fn tip(&self) -> (Height, Hash) {
        match self.blocks.last() {
            Some((block, _)) => (block.height(), block.hash()),
            None => (Height(0), self.genesis_hash),
        }
    }

    fn has_pending(&self) -> bool {
        self.pending
    }

    fn propose(&mut self, view: View, proposer: PublicKey, now_ms: u64) -> Option<Block> {
        self.pending.then(|| self.build(view, proposer, now_ms, 0))
    }

    fn validate(&mut self, block: &Block) -> Result<(), String> {
        self.validate_calls += 1;
        self.apply(block).map(|_| ())
    }

    fn commit(&mut self, block: &Block, certificate: &Certificate) -> Result<(), String> {
        assert_eq!(
            block.header.parent_hash,
            self.tip().1,
            "commit extends the tip"
        );
        assert_eq!(
            certificate.block_hash,
            block.hash(),
            "certificate of the block"
        );
        let changes = self.apply(block)?;
        self.state.apply_changes(&changes);
        self.roots.push(block.header.state_root);
        self.blocks.push((block.clone(), certificate.clone()));
        Ok(())
    }
}
