//! Writing a local testnet: genesis file, node homes, funded account keys.
//! (Implemented by the genesis/wallet work.)

use std::path::Path;

/// Options of `cairn-genesis testnet`.
#[derive(Clone, Debug)]
pub struct TestnetOptions {
    pub validators: usize,
    pub accounts: usize,
    pub balance: u64,
    pub chain_id: String,
    pub api_port_base: u16,
    pub p2p_port_base: u16,
    pub host: String,
}

/// Writes a testnet into `out`, which must not exist or be empty.
pub fn write_testnet(out: &Path, options: &TestnetOptions) -> Result<crate::ValidGenesis, String> {
    let _ = (out, options);
    unimplemented!("testnet generation")
}
