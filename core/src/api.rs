//! The JSON shapes of the HTTP API, shared by the node (which serves them)
//! and the wallet (which sends and reads them). Only these edge types know
//! about JSON; hashes, keys and signatures appear as lowercase hex.

use serde::{Deserialize, Serialize};

use crate::tx::{SignedTransaction, Transfer};
use crate::types::ParseHexError;

/// A signed transfer as `POST /v1/transactions` takes it and `sign-transfer`
/// prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxJson {
    pub chain_id: String,
    pub from: String,
    pub to: String,
    pub amount: u64,
    pub nonce: u64,
    pub signature: String,
}

/// Why a [`TxJson`] is not a well-formed transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxJsonError {
    #[error("field `{field}`: {error}")]
    BadHex {
        field: &'static str,
        error: ParseHexError,
    },
    #[error("chain id longer than {} bytes", crate::limits::CHAIN_ID_BYTES_MAX)]
    ChainIdTooLong,
}

impl TxJsonError {
    pub fn code(&self) -> &'static str {
        match self {
            TxJsonError::BadHex {
                field: "from" | "to",
                ..
            } => "invalid_address",
            TxJsonError::BadHex { .. } => "invalid_signature",
            TxJsonError::ChainIdTooLong => "wrong_chain",
        }
    }
}

impl From<&SignedTransaction> for TxJson {
    fn from(tx: &SignedTransaction) -> Self {
        TxJson {
            chain_id: tx.transfer.chain_id.clone(),
            from: tx.transfer.from.to_hex(),
            to: tx.transfer.to.to_hex(),
            amount: tx.transfer.amount,
            nonce: tx.transfer.nonce,
            signature: tx.signature.to_hex(),
        }
    }
}

impl TryFrom<&TxJson> for SignedTransaction {
    type Error = TxJsonError;

    fn try_from(json: &TxJson) -> Result<Self, Self::Error> {
        let hex = |field: &'static str, value: &str| -> Result<_, TxJsonError> {
            value
                .parse()
                .map_err(|error| TxJsonError::BadHex { field, error })
        };
        if json.chain_id.len() > crate::limits::CHAIN_ID_BYTES_MAX {
            return Err(TxJsonError::ChainIdTooLong);
        }
        Ok(SignedTransaction {
            transfer: Transfer {
                chain_id: json.chain_id.clone(),
                from: hex("from", &json.from)?,
                to: hex("to", &json.to)?,
                amount: json.amount,
                nonce: json.nonce,
            },
            signature: json
                .signature
                .parse()
                .map_err(|error| TxJsonError::BadHex {
                    field: "signature",
                    error,
                })?,
        })
    }
}

/// Every error body: `{"error": "...", "code": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorJson {
    pub error: String,
    pub code: String,
}

/// `202` answer of `POST /v1/transactions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitJson {
    pub hash: String,
}

/// One entry of the `POST /v1/transactions/batch` answer: `hash` when the
/// transaction was accepted, `error` and `code` when it was not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchEntryJson {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountJson {
    pub address: String,
    pub balance: u64,
    pub nonce: u64,
    /// The next nonce counting the transactions the answering node holds
    /// for this account (equal to `nonce` when none). Always sent by the
    /// node; optional only so older answers still parse.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pending_nonce: Option<u64>,
    /// With `?proof=true`: the proof of `balance` and `nonce`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub proof: Option<AccountProofJson>,
}

/// A block header: the fields of a block without `transactions` and
/// `commit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderJson {
    pub height: u64,
    pub hash: String,
    pub parent_hash: String,
    pub view: u64,
    pub proposer: String,
    pub timestamp_ms: u64,
    pub tx_root: String,
    pub state_root: String,
}

/// A commit certificate: a quorum of commit votes for (height, view,
/// block hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateJson {
    pub height: u64,
    pub view: u64,
    pub block_hash: String,
    pub signatures: Vec<CommitSignatureJson>,
}

/// The path of an account's key in the state tree: siblings from the
/// root's children down, and what sits where the path ends (`null`: an
/// empty subtree).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateProofJson {
    pub siblings: Vec<String>,
    pub leaf: Option<ProofLeafJson>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofLeafJson {
    pub key: String,
    pub value: String,
}

/// `proof` of `GET /v1/accounts/{address}?proof=true`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountProofJson {
    /// The committed height the answer is for.
    pub height: u64,
    pub header: HeaderJson,
    pub commit: CertificateJson,
    pub merkle_proof: StateProofJson,
}

/// An RFC 6962 audit path (leaf side first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxMerkleProofJson {
    pub index: u64,
    pub size: u64,
    pub path: Vec<String>,
}

/// `proof` of `GET /v1/transactions/{hash}?proof=true`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxProofJson {
    pub header: HeaderJson,
    pub commit: CertificateJson,
    pub merkle_proof: TxMerkleProofJson,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusJson {
    pub chain_id: String,
    pub node_id: String,
    pub height: u64,
    pub latest_block_hash: String,
    pub view: u64,
    pub leader: String,
    pub validators: Vec<String>,
    pub peers: usize,
    pub mempool_size: usize,
    pub syncing: bool,
}

/// `GET /v1/transactions/{hash}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxStatusJson {
    pub hash: String,
    /// `pending`, `committed`, `rejected` or `expired` (admitted, then
    /// dropped unexecuted: it waited too long, or was evicted).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub height: Option<u64>,
    /// Why a rejected or expired transaction is so, for a person.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// The error code that applies to a rejected or expired transaction.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// With `?proof=true`, for a committed transaction.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub proof: Option<TxProofJson>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockTxJson {
    pub hash: String,
    #[serde(flatten)]
    pub tx: TxJson,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSignatureJson {
    /// The validator's public key.
    pub validator: String,
    pub signature: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockJson {
    pub height: u64,
    pub hash: String,
    pub parent_hash: String,
    pub view: u64,
    pub proposer: String,
    pub timestamp_ms: u64,
    pub tx_root: String,
    pub state_root: String,
    pub transactions: Vec<BlockTxJson>,
    /// The commit certificate's signatures (empty for genesis).
    pub commit: Vec<CommitSignatureJson>,
    /// The view the commit votes were cast in (the block's own view unless
    /// it was re-proposed after a view change); absent for genesis.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub commit_view: Option<u64>,
}

/// The data of one SSE `block` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEventJson {
    pub height: u64,
    pub hash: String,
    pub tx_count: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;

    #[test]
    fn tx_json_round_trip_and_errors() {
        let key = Keypair::from_seed([5; 32]);
        let tx = SignedTransaction::sign(
            Transfer {
                chain_id: "c".into(),
                from: key.public(),
                to: key.public(),
                amount: 1,
                nonce: 2,
            },
            &key,
        );
        let json = TxJson::from(&tx);
        assert_eq!(SignedTransaction::try_from(&json), Ok(tx));
        let mut bad = json.clone();
        bad.to = "xyz".into();
        assert_eq!(
            SignedTransaction::try_from(&bad).unwrap_err().code(),
            "invalid_address"
        );
        let mut bad = json;
        bad.signature.pop();
        assert_eq!(
            SignedTransaction::try_from(&bad).unwrap_err().code(),
            "invalid_signature"
        );
    }
}
