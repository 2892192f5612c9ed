//! The simulator's in-memory ledger: real signed transfers, blocks built,
//! checked and executed by the production block executor
//! (`cairn_core::executor`, as the node does), commits asserted to extend
//! the tip.

use std::collections::BTreeMap;

use cairn_consensus::Ledger;
use cairn_core::executor::{
    build_block, execute_block, first_bad_signature, with_hashes, BlockRules, Executed, Parent,
    Proposer,
};
use cairn_core::state::{Account, MemoryState, StateView};
use cairn_core::{
    tx_root, Block, BlockHeader, Certificate, Hash, Height, Keypair, PublicKey, Signature,
    SignedTransaction, Transfer, ValidatorIndex, View,
};

/// Funded accounts that send the simulated transfers.
pub const ACCOUNTS: u8 = 4;
const BALANCE: u64 = 1_000_000;
/// Blocks carry at most two transfers (filler and the client's), so every
/// block has room by this bound.
pub const BLOCK_TXS_MAX: usize = 4;

/// The all-zero key: a small-order ed25519 point (of order 4), so anyone can
/// sign for it under ZIP-215. No honest validator may commit a transfer that
/// touches it.
pub const WEAK_ADDRESS: [u8; 32] = [0; 32];

/// One transfer a client submits to every validator at some moment: honest
/// primaries put it in their next block; a censoring one leaves it out.
#[derive(Clone)]
pub struct ClientTx {
    pub tx: SignedTransaction,
    pub since_ms: u64,
    pub committed_at: Option<Height>,
}

fn client_key() -> Keypair {
    Keypair::from_seed([99; 32])
}

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
    pub client: Option<ClientTx>,
    /// Extra transfers in each block built (big blocks).
    pub filler: usize,
}

impl SimLedger {
    pub fn new(chain_id: &str) -> SimLedger {
        let accounts: Vec<Keypair> = (0..ACCOUNTS)
            .map(|i| Keypair::from_seed([100 + i; 32]))
            .collect();
        let funded = Account {
            balance: BALANCE,
            nonce: 0,
        };
        let state = MemoryState::from_accounts(
            accounts
                .iter()
                .map(|key| (key.public(), funded))
                .chain([(client_key().public(), funded)])
                .collect(),
        );
        let root = cairn_core::state::genesis_state_root(state.accounts());
        SimLedger {
            chain_id: chain_id.to_string(),
            accounts,
            state,
            roots: vec![root],
            blocks: vec![],
            genesis_hash: Hash::digest(&[b"sim genesis"]),
            pending: true,
            validate_calls: 0,
            client: None,
            filler: 0,
        }
    }

    /// The ledger as it was at height `keep` (a data folder rolled back, as
    /// sled can after a power loss): the first `keep` blocks replayed on a
    /// fresh one. The client's transfer stays submitted.
    pub fn rolled_back(&self, keep: usize) -> SimLedger {
        let mut ledger = SimLedger::new(&self.chain_id);
        ledger.client = self.client.clone().map(|c| ClientTx {
            committed_at: None,
            ..c
        });
        for (block, certificate) in self.blocks.iter().take(keep) {
            ledger
                .commit(block, certificate, 0)
                .expect("a committed block replays");
        }
        ledger
    }

    /// The client's transfer reaches this validator at `now_ms`.
    pub fn submit_client_tx(&mut self, now_ms: u64) {
        let transfer = Transfer {
            chain_id: self.chain_id.clone(),
            from: client_key().public(),
            to: self.accounts[0].public(),
            amount: 5,
            nonce: 0,
        };
        self.client = Some(ClientTx {
            tx: SignedTransaction::sign(transfer, &client_key()),
            since_ms: now_ms,
            committed_at: None,
        });
    }

    fn client_pending(&self) -> Option<&ClientTx> {
        self.client.as_ref().filter(|c| c.committed_at.is_none())
    }

    /// Most transactions in a block: room for the filler and the two
    /// transfers (blocks stay at most half full).
    pub fn block_txs_max(&self) -> usize {
        BLOCK_TXS_MAX.max(2 * (self.filler + 2))
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

    /// A valid block on the tip, with the client's transfer if it is
    /// pending; `salt` varies the transfer amount so a Byzantine primary can
    /// make a conflicting block.
    pub fn build(&self, view: View, proposer: PublicKey, now_ms: u64, salt: u64) -> Block {
        self.build_with(view, proposer, now_ms, salt, true)
    }

    /// [`SimLedger::build`], leaving out the client's transfer unless
    /// `with_client`.
    pub fn build_with(
        &self,
        view: View,
        proposer: PublicKey,
        now_ms: u64,
        salt: u64,
        with_client: bool,
    ) -> Block {
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
        let nonce = transfer.nonce;
        let mut transactions = vec![SignedTransaction::sign(transfer, from)];
        for k in 0..self.filler as u64 {
            let filler = Transfer {
                chain_id: self.chain_id.clone(),
                from: from.public(),
                to,
                amount: 1,
                nonce: nonce + 1 + k,
            };
            transactions.push(SignedTransaction::sign(filler, from));
        }
        if let Some(client) = self.client_pending().filter(|_| with_client) {
            transactions.push(client.tx.clone());
        }
        let candidates = with_hashes(transactions);
        let proposer = Proposer {
            view,
            key: proposer,
            now_ms,
        };
        let built = build_block(
            &self.state,
            &self.parent(),
            &self.rules(),
            proposer,
            candidates,
        );
        assert!(
            built.left_out.is_empty(),
            "the generator makes valid transfers: {:?}",
            built.left_out
        );
        built.block
    }

    /// A block for the next height on the tip, with `transactions` and the
    /// state root they lead to.
    fn block_on_tip(
        &self,
        view: View,
        proposer: PublicKey,
        now_ms: u64,
        transactions: Vec<SignedTransaction>,
        state_root: Hash,
    ) -> Block {
        let hashes: Vec<Hash> = transactions.iter().map(|t| t.hash()).collect();
        let header = BlockHeader {
            height: self.height().next(),
            parent_hash: self.tip().1,
            view,
            proposer,
            timestamp_ms: now_ms.max(self.parent().timestamp_ms),
            tx_root: tx_root(&hashes),
            state_root,
        };
        Block {
            header,
            transactions,
        }
    }

    /// The theft of issue 8 as one block on the tip: a funded account sends
    /// 5 to the all-zero key (a small-order point, [`WEAK_ADDRESS`]), and a
    /// second transfer moves it on to `thief` under a crafted identity-R
    /// signature (R = identity, s = 0), which ZIP-215 accepts for a
    /// small-order key over any message. The changes and state root are
    /// worked out by hand, as a validator without the weak-key rule would,
    /// so the block is valid in every other respect.
    pub fn build_weak_key_theft(
        &self,
        view: View,
        proposer: PublicKey,
        now_ms: u64,
        thief: PublicKey,
    ) -> Block {
        const AMOUNT: u64 = 5;
        let height = self.height().next();
        let weak = PublicKey(WEAK_ADDRESS);
        let sender_key = &self.accounts[(height.0 % self.accounts.len() as u64) as usize];
        let mut sender = self.state.account(&sender_key.public());
        let mut weak_account = self.state.account(&weak);
        let mut thief_account = self.state.account(&thief);
        let deposit = Transfer {
            chain_id: self.chain_id.clone(),
            from: sender_key.public(),
            to: weak,
            amount: AMOUNT,
            nonce: sender.nonce,
        };
        let mut crafted = [0u8; 64];
        crafted[0] = 1;
        let theft = SignedTransaction {
            transfer: Transfer {
                chain_id: self.chain_id.clone(),
                from: weak,
                to: thief,
                amount: AMOUNT,
                nonce: weak_account.nonce,
            },
            signature: Signature(crafted),
        };
        assert_eq!(theft.verify_signature(), Ok(()), "ZIP-215 accepts it");
        let transactions = vec![SignedTransaction::sign(deposit, sender_key), theft];
        sender.balance -= AMOUNT;
        sender.nonce += 1;
        weak_account.nonce += 1;
        thief_account.balance += AMOUNT;
        let changes = BTreeMap::from([
            (sender_key.public(), sender),
            (weak, weak_account),
            (thief, thief_account),
        ]);
        let state_root = cairn_core::merkle::update_tree(self.state.tree(), &changes).root;
        self.block_on_tip(view, proposer, now_ms, transactions, state_root)
    }

    fn root(&self) -> &Hash {
        self.roots.last().expect("genesis root")
    }

    fn rules(&self) -> BlockRules<'_> {
        BlockRules {
            chain_id: &self.chain_id,
            block_txs_max: self.block_txs_max(),
        }
    }

    /// The tip as its child sees it (genesis: time 0).
    fn parent(&self) -> Parent {
        let (height, hash) = self.tip();
        Parent {
            height,
            hash,
            timestamp_ms: self.blocks.last().map_or(0, |(b, _)| b.header.timestamp_ms),
            state_root: *self.root(),
        }
    }

    /// Runs the production block executor on the block: the changes, or
    /// why the block is invalid.
    fn apply(&self, block: &Block) -> Result<Executed, String> {
        execute_block(
            &self.state,
            &self.parent(),
            &self.rules(),
            block,
            first_bad_signature,
        )
        .map_err(|e| e.to_string())
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

    fn oldest_pending_ms(&self, _now_ms: u64, _primary: ValidatorIndex) -> Option<u64> {
        self.client_pending().map(|c| c.since_ms)
    }

    fn propose(&mut self, view: View, proposer: PublicKey, now_ms: u64) -> Option<Block> {
        self.pending.then(|| self.build(view, proposer, now_ms, 0))
    }

    fn validate(&mut self, block: &Block) -> Result<(), String> {
        self.validate_calls += 1;
        self.apply(block).map(|_| ())
    }

    fn commit(
        &mut self,
        block: &Block,
        certificate: &Certificate,
        _now_ms: u64,
    ) -> Result<(), String> {
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
        let executed = self.apply(block)?;
        self.state.apply_executed(
            &executed.changes,
            &executed.tree_writes,
            executed.state_root,
        );
        self.roots.push(block.header.state_root);
        self.blocks.push((block.clone(), certificate.clone()));
        let height = self.height();
        if let Some(client) = self.client.as_mut() {
            let hash = client.tx.hash();
            if block.transactions.iter().any(|t| t.hash() == hash) {
                client.committed_at = Some(height);
            }
        }
        Ok(())
    }
}
