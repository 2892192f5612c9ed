//! Unit tests of genesis validation, hashing, testnet writing and node configs.

use super::*;
use cairn_core::Keypair;

fn key(i: u8) -> Keypair {
    Keypair::from_seed([i; 32])
}

/// A valid genesis: three validators, two funded accounts, fixed time.
fn sample() -> Genesis {
    let options = TestnetOptions {
        validators: 3,
        accounts: 2,
        ..TestnetOptions::default()
    };
    let validators = [key(1), key(2), key(3)];
    let accounts = [key(10), key(11)];
    build_genesis(&options, &validators, &accounts, 1_700_000_000_000).unwrap()
}

/// The validation error message of `genesis`, which must be invalid.
fn error_of(genesis: Genesis) -> String {
    match genesis.validate() {
        Ok(_) => panic!("expected the genesis to be invalid"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn sample_is_valid() {
    let valid = sample().validate().unwrap();
    assert_eq!(valid.validators.len(), 3);
    assert_eq!(valid.validators[1], key(2).public());
    assert_eq!(valid.api_addresses[2].to_string(), "127.0.0.1:8082");
    assert_eq!(valid.p2p_addresses[0].to_string(), "127.0.0.1:26600");
    assert_eq!(valid.total_supply(), 2_000_000_000);
    assert_eq!(valid.index_of(&key(3).public()), Some(2));
    assert_eq!(valid.index_of(&key(9).public()), None);
    assert_eq!(valid.block().header.parent_hash, valid.hash);
}

#[test]
fn duplicate_validator_key() {
    let mut g = sample();
    g.validators[2].public_key = g.validators[0].public_key.clone();
    assert!(error_of(g).contains("duplicate validator key"));
}

#[test]
fn bad_hex() {
    let mut g = sample();
    g.validators[0].public_key = "zz".repeat(32);
    assert!(error_of(g).contains("bad hex"));
    let mut g = sample();
    g.validators[0].public_key.pop();
    assert!(error_of(g).contains("bad hex"));
    let mut g = sample();
    g.validators[0].public_key = g.validators[0].public_key.to_uppercase();
    assert!(error_of(g).contains("bad hex"));
    let mut g = sample();
    g.accounts[1].address = "00".into();
    assert!(error_of(g).contains("account 1"));
    let mut g = sample();
    g.admins = vec!["nope".into()];
    assert!(error_of(g).contains("admin 0"));
}

#[test]
fn empty_validator_set() {
    let mut g = sample();
    g.validators.clear();
    assert!(error_of(g).contains("fewer than 1 validator"));
}

#[test]
fn bad_and_duplicate_addresses() {
    let mut g = sample();
    g.validators[1].p2p_address = "localhost:26601".into();
    assert!(error_of(g).contains("not ip:port"));
    let mut g = sample();
    g.validators[1].api_address = "127.0.0.1".into();
    assert!(error_of(g).contains("not ip:port"));
    let mut g = sample();
    g.validators[1].api_address = g.validators[0].api_address.clone();
    assert!(error_of(g).contains("used twice"));
    let mut g = sample();
    g.validators[0].api_address = g.validators[0].p2p_address.clone();
    assert!(error_of(g).contains("used twice"));
    let mut g = sample();
    g.validators[0].p2p_address = "127.0.0.1:0".into();
    assert!(error_of(g).contains("port 0"));
}

#[test]
fn duplicate_names_and_accounts() {
    let mut g = sample();
    g.validators[1].name = "node0".into();
    assert!(error_of(g).contains("duplicate name"));
    let mut g = sample();
    g.accounts[1].address = g.accounts[0].address.clone();
    assert!(error_of(g).contains("duplicate account"));
}

/// Small-order (weak) keys, canonical and not, with what the error says,
/// and 32 bytes that are no curve point: the all-zero key (order 4), the
/// identity, the point of order 2, a point of order 8, y = p (a
/// non-canonical order-4 point), and `[2; 32]`, which does not decompress.
fn unusable_keys() -> Vec<(String, &'static str)> {
    vec![
        ("00".repeat(32), "weak key"),
        (format!("01{}", "00".repeat(31)), "weak key"),
        (format!("ec{}7f", "ff".repeat(30)), "weak key"),
        (
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a".into(),
            "weak key",
        ),
        (format!("ed{}7f", "ff".repeat(30)), "weak key"),
        ("02".repeat(32), "not a curve point"),
    ]
}

/// Issue 8: money held by a weak key can be taken by anyone, and a weak
/// validator key lets anyone sign its votes.
#[test]
fn weak_account_and_validator_keys_are_refused() {
    for (weak, why) in unusable_keys() {
        let mut g = sample();
        g.accounts[1].address = weak.clone();
        let error = error_of(g);
        assert!(
            error.contains("account 1") && error.contains(why),
            "{weak}: {error}"
        );
        let mut g = sample();
        g.validators[0].public_key = weak.clone();
        let error = error_of(g);
        assert!(
            error.contains("validator 0") && error.contains(why),
            "{weak}: {error}"
        );
        let mut g = sample();
        g.admins = vec![weak.clone()];
        let error = error_of(g);
        assert!(
            error.contains("admin 0") && error.contains(why),
            "{weak}: {error}"
        );
    }
}

#[test]
fn supply_overflow_and_zero_supply() {
    let mut g = sample();
    g.accounts[0].balance = u64::MAX;
    g.accounts[1].balance = 1;
    assert!(error_of(g).contains("overflows"));
    let mut g = sample();
    g.accounts[0].balance = u64::MAX;
    g.accounts[1].balance = 0;
    assert_eq!(g.validate().unwrap().total_supply(), u64::MAX);
    let mut g = sample();
    for account in &mut g.accounts {
        account.balance = 0;
    }
    assert!(error_of(g).contains("zero total supply"));
    let mut g = sample();
    g.accounts.clear();
    assert!(error_of(g).contains("zero total supply"));
}

#[test]
fn bad_chain_id() {
    let mut g = sample();
    g.chain_id = String::new();
    assert!(error_of(g).contains("chain_id"));
    let mut g = sample();
    g.chain_id = "a".repeat(65);
    assert!(error_of(g).contains("chain_id"));
    let mut g = sample();
    g.chain_id = "has space".into();
    assert!(error_of(g).contains("chain_id"));
}

/// Changes one parameter; the error must name `field`.
type ParamCase = (fn(&mut Params), &'static str);

#[test]
fn bad_params() {
    let cases: [ParamCase; 6] = [
        (|p| p.block_txs_max = 0, "block_txs_max"),
        (
            |p| p.block_txs_max = cairn_core::limits::BLOCK_TXS_MAX + 1,
            "block_txs_max",
        ),
        (|p| p.block_interval_ms = 60_001, "block_interval_ms"),
        (|p| p.view_timeout_ms = 99, "view_timeout_ms"),
        (
            |p| p.mempool_txs_max = p.block_txs_max - 1,
            "mempool_txs_max",
        ),
        (|p| p.mempool_txs_max = 10_000_001, "mempool_txs_max"),
    ];
    for (change, field) in cases {
        let mut g = sample();
        change(&mut g.params);
        let error = error_of(g);
        assert!(error.contains(field), "{field}: {error}");
    }
}

#[test]
fn parse_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("genesis.json");
    std::fs::write(&path, "{ not json").unwrap();
    let error = Genesis::load(&path).unwrap_err().to_string();
    assert!(error.contains("not a valid genesis file"), "{error}");
    let mut value = serde_json::to_value(sample()).unwrap();
    value["surprise"] = 1.into();
    std::fs::write(&path, value.to_string()).unwrap();
    assert!(Genesis::load(&path).is_err(), "unknown fields are refused");
    let missing = dir.path().join("absent.json");
    assert!(Genesis::load(&missing)
        .unwrap_err()
        .to_string()
        .contains("cannot read"));
}

#[test]
fn genesis_hash_is_stable_and_covers_content() {
    let a = sample().validate().unwrap().hash;
    assert_eq!(a, sample().validate().unwrap().hash);
    let round_trip: Genesis =
        serde_json::from_str(&serde_json::to_string_pretty(&sample()).unwrap()).unwrap();
    assert_eq!(round_trip.validate().unwrap().hash, a);

    let changes: [fn(&mut Genesis); 5] = [
        |g| g.chain_id.push('x'),
        |g| g.genesis_time_ms += 1,
        |g| g.accounts[0].balance += 1,
        |g| g.validators[0].api_address = "127.0.0.1:9999".into(),
        |g| g.params.view_timeout_ms += 1,
    ];
    for change in changes {
        let mut g = sample();
        change(&mut g);
        assert_ne!(g.validate().unwrap().hash, a);
    }
}

fn options(validators: usize, accounts: usize) -> TestnetOptions {
    TestnetOptions {
        validators,
        accounts,
        balance: 500,
        chain_id: "test-chain".into(),
        api_port_base: 18080,
        p2p_port_base: 36600,
        host: "127.0.0.1".into(),
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn testnet_writes_a_runnable_network() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let valid = write_testnet(&out, &options(3, 2)).unwrap();
    assert_eq!(valid.chain_id(), "test-chain");
    assert_eq!(valid.total_supply(), 1000);
    assert!(valid.genesis.admins.is_empty());
    assert_eq!(valid.genesis.params, Params::default());

    let loaded = Genesis::load(&out.join(GENESIS_FILE)).unwrap();
    assert_eq!(loaded.hash, valid.hash);
    for i in 0..3 {
        let home = node_home(&out, i);
        let config = NodeConfig::load(&home).unwrap();
        assert_eq!(config.genesis, home.join("genesis.json"));
        assert_eq!(config.data, home.join("data"));
        assert_eq!(config.p2p_listen, None);
        assert_eq!(Genesis::load(&config.genesis).unwrap().hash, valid.hash);
        let key = keyfile::read(&config.key).unwrap();
        assert_eq!(key.public(), valid.validators[i]);
        assert_eq!(valid.genesis.validators[i].name, format!("node{i}"));
        assert_eq!(valid.api_addresses[i].port(), 18080 + i as u16);
        assert_eq!(valid.p2p_addresses[i].port(), 36600 + i as u16);
        #[cfg(unix)]
        assert_eq!(mode(&config.key), 0o600);
        // A record of no votes yet, so a new network does not start as
        // validators that lost theirs (they would all abstain).
        let record = std::fs::read_to_string(home.join(SAFETY_FILE)).unwrap();
        assert_eq!(record, INITIAL_SAFETY_RECORD);
        let error = write_initial_safety_record(&home).unwrap_err();
        assert!(error.contains("safety.json"), "never overwritten: {error}");
    }
    assert!(!node_home(&out, 3).exists());
    for j in 0..2 {
        let path = account_key_path(&out, j);
        let key = keyfile::read(&path).unwrap();
        assert_eq!(valid.accounts[&key.public()].balance, 500);
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
    }
}

#[test]
fn testnet_refuses_a_non_empty_dir_and_accepts_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
    let error = write_testnet(dir.path(), &options(1, 1)).unwrap_err();
    assert!(error.contains("not empty"), "{error}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let empty = tempfile::tempdir().unwrap();
    write_testnet(empty.path(), &options(1, 1)).unwrap();
    let error = write_testnet(empty.path(), &options(1, 1)).unwrap_err();
    assert!(error.contains("not empty"), "{error}");

    let file = dir.path().join("keep.txt");
    assert!(write_testnet(&file, &options(1, 1)).is_err());
}

#[test]
fn testnet_option_errors_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let check = |options: TestnetOptions, expected: &str| {
        let error = write_testnet(&out, &options).unwrap_err();
        assert!(error.contains(expected), "{expected}: {error}");
        assert!(!out.exists());
    };
    check(options(0, 1), "at least 1");
    check(options(300, 1), "at most");
    check(options(1, 0), "zero total supply");
    check(
        TestnetOptions {
            balance: 0,
            ..options(1, 1)
        },
        "zero total supply",
    );
    check(
        TestnetOptions {
            balance: u64::MAX,
            ..options(1, 2)
        },
        "overflows",
    );
    check(
        TestnetOptions {
            api_port_base: 65534,
            ..options(3, 1)
        },
        "above 65535",
    );
    check(
        TestnetOptions {
            p2p_port_base: 0,
            ..options(1, 1)
        },
        "must not be 0",
    );
    check(
        TestnetOptions {
            api_port_base: 26601,
            p2p_port_base: 26600,
            ..options(2, 1)
        },
        "used twice",
    );
    check(
        TestnetOptions {
            host: "localhost".into(),
            ..options(1, 1)
        },
        "not an IP address",
    );
    check(
        TestnetOptions {
            chain_id: "bad chain".into(),
            ..options(1, 1)
        },
        "chain_id",
    );
}

#[test]
fn testnet_ipv6_host() {
    let dir = tempfile::tempdir().unwrap();
    let valid = write_testnet(
        dir.path(),
        &TestnetOptions {
            host: "::1".into(),
            ..options(2, 1)
        },
    )
    .unwrap();
    assert_eq!(valid.genesis.validators[1].api_address, "[::1]:18081");
}

#[test]
fn node_config_resolves_paths_against_home() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    std::fs::write(
        home.join(NODE_CONFIG_FILE),
        r#"{"genesis": "g.json", "key": "/abs/v.key", "data": "db", "api_listen": "0.0.0.0:9000"}"#,
    )
    .unwrap();
    let config = NodeConfig::load(home).unwrap();
    assert_eq!(config.genesis, home.join("g.json"));
    assert_eq!(config.key, PathBuf::from("/abs/v.key"));
    assert_eq!(config.data, home.join("db"));
    assert_eq!(config.api_listen, Some("0.0.0.0:9000".parse().unwrap()));

    std::fs::write(home.join(NODE_CONFIG_FILE), r#"{"genesis": "g.json"}"#).unwrap();
    assert!(NodeConfig::load(home)
        .unwrap_err()
        .contains("not a valid node config"));
    let missing = NodeConfig::load(&home.join("nowhere")).unwrap_err();
    assert!(missing.contains("cannot read"), "{missing}");
}

#[test]
fn key_files_round_trip_and_refuse_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    keyfile::write_new(&path, &key(7)).unwrap();
    assert_eq!(keyfile::read(&path).unwrap().public(), key(7).public());
    let error = keyfile::write_new(&path, &key(8)).unwrap_err();
    assert!(error.contains("refusing to overwrite"), "{error}");
    assert_eq!(keyfile::read(&path).unwrap().public(), key(7).public());

    let text = std::fs::read_to_string(&path).unwrap();
    let other = key(8).public().to_hex();
    let mismatched = text.replace(&key(7).public().to_hex(), &other);
    std::fs::write(&path, mismatched).unwrap();
    assert!(keyfile::read(&path).unwrap_err().contains("does not match"));
    std::fs::write(&path, "garbage").unwrap();
    assert!(keyfile::read(&path).unwrap_err().contains("not a key file"));
}

#[test]
fn peer_addresses_override_where_peers_are_dialed() {
    let genesis = sample().validate().unwrap();
    let names: Vec<String> = genesis
        .genesis
        .validators
        .iter()
        .map(|v| v.name.clone())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let write = |peers: &str| {
        std::fs::write(
            home.join(NODE_CONFIG_FILE),
            format!(
                r#"{{"genesis": "g.json", "key": "v.key", "data": "db", "peer_addresses": {peers}}}"#
            ),
        )
        .unwrap();
    };

    // Without entries, every peer is dialed at its genesis address.
    write("{}");
    let config = NodeConfig::load(home).unwrap();
    assert_eq!(
        config.dial_addresses(&genesis, 0).unwrap(),
        genesis.p2p_addresses
    );
    // An entry replaces that one peer's address only.
    write(&format!(r#"{{"{}": "127.0.0.9:7001"}}"#, names[2]));
    let config = NodeConfig::load(home).unwrap();
    let dial = config.dial_addresses(&genesis, 0).unwrap();
    assert_eq!(dial[2], "127.0.0.9:7001".parse().unwrap());
    assert_eq!(dial[..2], genesis.p2p_addresses[..2]);
    // It survives a round trip through the file format, and is left out
    // when empty (node.json files written before it still load).
    let text = serde_json::to_string(&config).unwrap();
    assert!(text.contains("peer_addresses"), "{text}");
    let written = serde_json::to_string(&NodeConfig {
        peer_addresses: Default::default(),
        ..config.clone()
    })
    .unwrap();
    assert!(!written.contains("peer_addresses"), "{written}");

    // Bad entries are refused with the reason.
    let cases = [
        (
            r#"{"nobody": "127.0.0.1:7001"}"#.to_string(),
            "no validator is named \"nobody\"",
        ),
        (
            format!(r#"{{"{}": "127.0.0.1:7001"}}"#, names[0]),
            "is this validator",
        ),
        (
            format!(r#"{{"{}": "127.0.0.1:0"}}"#, names[1]),
            "not an address to dial",
        ),
        (
            format!(r#"{{"{}": "0.0.0.0:7001"}}"#, names[1]),
            "not an address to dial",
        ),
    ];
    for (peers, expected) in cases {
        write(&peers);
        let error = NodeConfig::load(home)
            .unwrap()
            .dial_addresses(&genesis, 0)
            .unwrap_err();
        assert!(error.contains(expected), "{peers}: {error}");
    }
    // Not host:port at all: the file does not parse.
    write(&format!(r#"{{"{}": "somewhere"}}"#, names[1]));
    let error = NodeConfig::load(home).unwrap_err();
    assert!(error.contains("not a valid node config"), "{error}");
}

/// `init` makes a home with a key and a node config and returns the entry
/// naming that key; it never overwrites a home; bad names and addresses
/// are refused before anything is written.
#[test]
fn init_makes_a_home_and_its_entry_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("org-a");
    let entry = assemble::init_home(&home, "org-a", "10.0.0.1:26600", "10.0.0.1:8080").unwrap();
    let key = keyfile::read(&home.join(VALIDATOR_KEY_FILE)).unwrap();
    assert_eq!(entry.public_key, key.public().to_hex());
    assert_eq!(
        (entry.name.as_str(), entry.p2p_address.as_str()),
        ("org-a", "10.0.0.1:26600")
    );
    let config = NodeConfig::load(&home).unwrap();
    assert!(
        home.join("safety.json").exists(),
        "a new home has its initial record"
    );
    assert_eq!(config.key, home.join(VALIDATOR_KEY_FILE));
    assert_eq!(config.genesis, home.join(GENESIS_FILE));
    let again = assemble::init_home(&home, "org-a", "10.0.0.1:26600", "10.0.0.1:8080");
    assert!(again.unwrap_err().contains("refusing to overwrite"));
    assert_eq!(
        keyfile::read(&home.join(VALIDATOR_KEY_FILE))
            .unwrap()
            .public(),
        key.public()
    );
    for (name, p2p, api, expected) in [
        ("", "10.0.0.1:1", "10.0.0.1:2", "--name"),
        ("a b", "10.0.0.1:1", "10.0.0.1:2", "--name"),
        ("b", "nowhere", "10.0.0.1:2", "--p2p"),
        ("b", "0.0.0.0:1", "10.0.0.1:2", "--p2p"),
        ("b", "10.0.0.1:1", "10.0.0.1:0", "--api"),
        ("b", "10.0.0.1:1", "10.0.0.1:1", "must differ"),
    ] {
        let other = dir.path().join("other");
        let error = assemble::init_home(&other, name, p2p, api).unwrap_err();
        assert!(error.contains(expected), "{error}");
        assert!(!other.exists(), "nothing is written for a refused init");
    }
}

/// Entries assembled into a genesis file give the same validation as any
/// genesis: duplicates and bad accounts are refused, a good one validates.
#[test]
fn assemble_checks_the_file_as_validate_does() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<ValidatorInfo> = (0..4)
        .map(|i| {
            assemble::init_home(
                &dir.path().join(format!("v{i}")),
                &format!("org-{i}"),
                &format!("10.0.0.{}:26600", i + 1),
                &format!("10.0.0.{}:8080", i + 1),
            )
            .unwrap()
        })
        .collect();
    let alice = key(10).public().to_hex();
    let account = assemble::parse_account(&format!("{alice}=500")).unwrap();
    let (genesis, valid) = assemble::assemble(
        "orgs-net",
        1_700_000_000_000,
        entries.clone(),
        vec![account.clone()],
    )
    .unwrap();
    assert_eq!(valid.validators.len(), 4);
    assert_eq!(valid.total_supply(), 500);
    let out = dir.path().join("genesis.json");
    assemble::write_new_json(&out, &genesis).unwrap();
    assert_eq!(Genesis::load(&out).unwrap().hash, valid.hash);
    assert!(assemble::write_new_json(&out, &genesis)
        .unwrap_err()
        .contains("refusing to overwrite"));
    let mut twice = entries.clone();
    twice[1] = twice[0].clone();
    assert!(assemble::assemble("orgs-net", 1, twice, vec![account.clone()]).is_err());
    assert!(assemble::assemble("bad id!", 1, entries.clone(), vec![account]).is_err());
    for bad in [
        "nothing",
        "abc=1",
        &format!("{alice}=-1"),
        &format!("{alice}=x"),
    ] {
        let parsed = assemble::parse_account(bad);
        let refused = parsed.is_err()
            || assemble::assemble("orgs-net", 1, entries.clone(), vec![parsed.unwrap()]).is_err();
        assert!(refused, "{bad} accepted");
    }
}
/// Cheap KDF parameters so the many decryptions below stay fast; one test
/// runs the real default.
const CHEAP: keyfile::KdfParams = keyfile::KdfParams {
    m_cost_kib: 64,
    t_cost: 1,
    p_cost: 1,
};

/// Writes `key(7)` encrypted under "correct horse" and returns the file.
fn encrypted_file(dir: &std::path::Path, params: keyfile::KdfParams) -> PathBuf {
    let path = dir.join("enc.key");
    keyfile::write_new_encrypted(&path, &key(7), b"correct horse", params).unwrap();
    path
}

fn open(path: &std::path::Path, passphrase: &[u8]) -> Result<Keypair, String> {
    match keyfile::load(path)? {
        keyfile::KeyFile::Encrypted(sealed) => sealed.open(passphrase),
        keyfile::KeyFile::Plain(_) => panic!("expected an encrypted key file"),
    }
}

/// Rewrites one JSON field of the file at `path` (`pointer` as in RFC 6901).
fn tamper(path: &std::path::Path, pointer: &str, value: serde_json::Value) {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    *json.pointer_mut(pointer).unwrap() = value;
    std::fs::write(path, json.to_string()).unwrap();
}

#[test]
fn encrypted_key_file_round_trips_with_the_default_kdf() {
    let dir = tempfile::tempdir().unwrap();
    let path = encrypted_file(dir.path(), keyfile::KdfParams::DEFAULT);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&hex::encode(key(7).seed())), "seed in clear");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["kdf"]["name"], "argon2id");
    assert_eq!(json["kdf"]["m_cost_kib"], 65536);
    assert_eq!(json["kdf"]["t_cost"], 3);
    assert_eq!(json["cipher"]["name"], "xchacha20poly1305");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let loaded = keyfile::load(&path).unwrap();
    assert!(loaded.is_encrypted());
    assert_eq!(loaded.public(), key(7).public());
    let opened = open(&path, b"correct horse").unwrap();
    assert_eq!(opened.seed(), key(7).seed());
    // Never overwritten.
    let error = keyfile::write_new_encrypted(&path, &key(8), b"x", CHEAP).unwrap_err();
    assert!(error.contains("refusing to overwrite"), "{error}");
}

#[test]
fn wrong_passphrase_is_refused_with_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = encrypted_file(dir.path(), CHEAP);
    for wrong in [&b"correct horsf"[..], b"", b"correct horse "] {
        let Err(error) = open(&path, wrong) else {
            panic!("a wrong passphrase opened the key");
        };
        assert!(
            error.contains("wrong passphrase or corrupted key file"),
            "{error}"
        );
        assert!(error.contains("enc.key"), "{error}");
    }
    // Each file gets its own salt and nonce.
    let other = dir.path().join("other.key");
    keyfile::write_new_encrypted(&other, &key(7), b"correct horse", CHEAP).unwrap();
    assert_ne!(
        std::fs::read_to_string(&path).unwrap(),
        std::fs::read_to_string(&other).unwrap()
    );
    assert_eq!(
        open(&other, b"correct horse").unwrap().public(),
        key(7).public()
    );
}

#[test]
fn any_change_to_an_encrypted_file_makes_it_fail_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(encrypted_file(dir.path(), CHEAP)).unwrap();
    let json: serde_json::Value = serde_json::from_str(&original).unwrap();
    let flip = |hex_text: &serde_json::Value| {
        let mut bytes = hex::decode(hex_text.as_str().unwrap()).unwrap();
        bytes[0] ^= 1;
        serde_json::Value::String(hex::encode(bytes))
    };
    let changes: Vec<(&str, serde_json::Value)> = vec![
        ("/ciphertext", flip(&json["ciphertext"])),
        ("/public_key", key(8).public().to_hex().into()),
        ("/kdf/salt", flip(&json["kdf"]["salt"])),
        ("/kdf/m_cost_kib", 128.into()),
        ("/kdf/t_cost", 2.into()),
        ("/cipher/nonce", flip(&json["cipher"]["nonce"])),
    ];
    for (pointer, value) in changes {
        let path = dir.path().join("tampered.key");
        std::fs::write(&path, &original).unwrap();
        tamper(&path, pointer, value);
        let error = open(&path, b"correct horse")
            .err()
            .unwrap_or_else(|| panic!("a changed {pointer} still opened"));
        assert!(
            error.contains("wrong passphrase or corrupted key file"),
            "{pointer}: {error}"
        );
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn hostile_kdf_parameters_are_refused_before_the_kdf_runs() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(encrypted_file(dir.path(), CHEAP)).unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("/kdf/m_cost_kib", (4u64 << 30).into(), "m_cost_kib"), // 4 TiB
        ("/kdf/m_cost_kib", (512 * 1024).into(), "over the limit"), // 512 MiB
        ("/kdf/t_cost", 1_000_000.into(), "t_cost"),
        ("/kdf/t_cost", 0.into(), "t_cost"),
        ("/kdf/p_cost", 1_000.into(), "p_cost"),
        ("/kdf/m_cost_kib", 4.into(), "m_cost_kib"),
        ("/kdf/name", "scrypt".into(), "not supported"),
        ("/kdf/version", 16.into(), "not supported"),
        ("/cipher/name", "aes-256-gcm".into(), "not supported"),
        ("/version", 2.into(), "version 2 is not supported"),
        ("/kdf/salt", "00".into(), "salt"),
        ("/cipher/nonce", "00".into(), "nonce"),
        ("/ciphertext", "zz".into(), "ciphertext"),
    ];
    for (pointer, value, expected) in cases {
        let path = dir.path().join("hostile.key");
        std::fs::write(&path, &original).unwrap();
        tamper(&path, pointer, value);
        let started = std::time::Instant::now();
        let error = keyfile::load(&path)
            .err()
            .unwrap_or_else(|| panic!("{pointer} accepted"));
        assert!(error.contains(expected), "{pointer}: {error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        std::fs::remove_file(&path).unwrap();
    }
    // 256 MiB × 4 passes is twice the work bound, each value alone allowed.
    let path = dir.path().join("hostile.key");
    std::fs::write(&path, &original).unwrap();
    tamper(&path, "/kdf/m_cost_kib", (256 * 1024).into());
    tamper(&path, "/kdf/t_cost", 8.into());
    let Err(error) = keyfile::load(&path) else {
        panic!("too much work accepted");
    };
    assert!(error.contains("m_cost_kib × t_cost"), "{error}");
    // Nor are they written.
    let error = keyfile::write_new_encrypted(
        &dir.path().join("never.key"),
        &key(1),
        b"pass",
        keyfile::KdfParams {
            m_cost_kib: 1 << 30,
            t_cost: 1,
            p_cost: 1,
        },
    )
    .unwrap_err();
    assert!(error.contains("m_cost_kib"), "{error}");
    assert!(!dir.path().join("never.key").exists());
}

#[test]
fn plain_key_files_say_so_and_old_ones_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.key");
    keyfile::write_new(&path, &key(7)).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["plain"], true);
    assert!(json["note"].as_str().unwrap().contains("UNENCRYPTED"));
    assert!(!keyfile::load(&path).unwrap().is_encrypted());

    // A file from before `plain` and `note` existed.
    let old = dir.path().join("old.key");
    std::fs::write(
        &old,
        format!(
            "{{\"public_key\": \"{}\", \"secret_key\": \"{}\"}}",
            key(9).public().to_hex(),
            hex::encode(key(9).seed())
        ),
    )
    .unwrap();
    assert_eq!(keyfile::read(&old).unwrap().public(), key(9).public());
    // Unknown fields are still refused, and a plain file cannot claim not
    // to be one.
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&old).unwrap()).unwrap();
    json["plain"] = false.into();
    std::fs::write(&old, json.to_string()).unwrap();
    assert!(keyfile::read(&old).unwrap_err().contains("plain"));
    json["plain"] = true.into();
    json["extra"] = 1.into();
    std::fs::write(&old, json.to_string()).unwrap();
    assert!(keyfile::read(&old).unwrap_err().contains("unknown field"));
    // A huge file is not read whole.
    std::fs::write(&old, vec![b' '; 100_000]).unwrap();
    assert!(keyfile::read(&old).unwrap_err().contains("larger than"));
}

#[test]
fn testnet_keys_are_plain_and_labelled() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let options = TestnetOptions {
        validators: 1,
        accounts: 1,
        ..TestnetOptions::default()
    };
    write_testnet(&out, &options).unwrap();
    for path in [
        out.join("node0").join("validator.key"),
        account_key_path(&out, 0),
    ] {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"plain\": true"), "{text}");
        assert!(!keyfile::load(&path).unwrap().is_encrypted());
    }
}

#[test]
fn replacing_a_sealed_key_keeps_the_key_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let path = encrypted_file(dir.path(), CHEAP);
    let resealed = keyfile::EncryptedKey::seal(&key(7), b"new one", CHEAP).unwrap();
    keyfile::replace_sealed(&path, &resealed).unwrap();
    assert_eq!(open(&path, b"new one").unwrap().public(), key(7).public());
    assert!(open(&path, b"correct horse").is_err());
    assert!(!dir.path().join("enc.key.new").exists());

    let other = keyfile::EncryptedKey::seal(&key(8), b"new one", CHEAP).unwrap();
    let error = keyfile::replace_sealed(&path, &other).unwrap_err();
    assert!(error.contains("holds another key"), "{error}");
    assert_eq!(open(&path, b"new one").unwrap().public(), key(7).public());
}
