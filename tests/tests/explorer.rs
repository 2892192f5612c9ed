//! Issue 12: the block explorer at `GET /`, in a real browser. Headless
//! Chromium, driven over WebDriver (`chromedriver`, plain HTTP and JSON),
//! loads the page from a running 4-validator network, shows the current
//! height, and updates from the live SSE stream when a new block commits;
//! every check reads the rendered DOM. A block's commit certificate and an
//! account look-up are checked too, in a phone-sized window.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them
//! when missing; without them the test fails in CI and says SKIPPED
//! elsewhere). `CAIRN_SCREENSHOT=FILE` saves a screenshot (PNG).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn_tests::{free_port_base, stderr, wait_for, Testnet};
use serde_json::{json, Value};

const BALANCE: u64 = 1_000_000;

/// A chromedriver process and one browser session; both end on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port_base(1);
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (Debian package chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
        };
        wait_for("chromedriver", Duration::from_secs(20), || {
            ureq::get(&format!("{}/status", browser.base))
                .call()
                .ok()
                .and_then(|r| r.into_json::<Value>().ok())
                .filter(|v| v["value"]["ready"] == true)
                .map(|_| ())
        });
        let session = browser.post(
            "/session",
            json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=412,915"],
            }}}}),
        );
        browser.session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {session}"))
            .to_string();
        browser
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let answer = ureq::post(&format!("{}{path}", self.base))
            .timeout(Duration::from_secs(60))
            .send_json(body);
        let value: Value = match answer {
            Ok(r) => r.into_json().expect("WebDriver JSON"),
            Err(ureq::Error::Status(code, r)) => {
                panic!(
                    "WebDriver {path}: HTTP {code}: {}",
                    r.into_string().unwrap_or_default()
                )
            }
            Err(e) => panic!("WebDriver {path}: {e}"),
        };
        value["value"].clone()
    }

    fn go(&self, url: &str) {
        self.post(
            &format!("/session/{}/url", self.session),
            json!({ "url": url }),
        );
    }

    /// Runs `script` in the page and returns what it returns.
    fn eval(&self, script: &str) -> Value {
        self.post(
            &format!("/session/{}/execute/sync", self.session),
            json!({ "script": script, "args": [] }),
        )
    }

    fn text(&self, id: &str) -> String {
        self.eval(&format!(
            "const e = document.getElementById({id:?}); return e ? e.textContent : null;"
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    fn screenshot(&self) -> Vec<u8> {
        let answer = ureq::get(&format!(
            "{}/session/{}/screenshot",
            self.base, self.session
        ))
        .call()
        .expect("screenshot");
        let value: Value = answer.into_json().expect("JSON");
        base64_decode(value["value"].as_str().expect("base64 PNG"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
    {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn the_explorer_shows_the_chain_live_in_a_browser() {
    let browser_present = cairn_tests::program_runs("chromedriver")
        && std::path::Path::new("/usr/bin/chromium").exists();
    if !cairn_tests::machine_has(
        "the explorer test",
        browser_present,
        "Debian's chromium and chromium-driver",
    ) {
        return;
    }
    let net = Testnet::start_all(4, 2, BALANCE);
    let alice = net.account_address(0);
    let bob = net.account_address(1);
    let (_, first) = net.wallet_transfer(0, 0, &bob, 5);
    let page = net.get(0, "/");
    assert_eq!(page.status, 200);

    let browser = Browser::start();
    browser.go(&format!("{}/", net.api(0)));
    // The current height, as the node reports it, in the rendered page.
    let height = net.height(0);
    assert!(height >= first);
    wait_for(
        "the page shows the current height",
        Duration::from_secs(20),
        || {
            let shown: u64 = browser.text("height").parse().ok()?;
            (shown >= height).then_some(())
        },
    );
    wait_for("the SSE stream is live", Duration::from_secs(20), || {
        (browser.text("live") == "live").then_some(())
    });
    // A new block arrives over SSE: the height and the list follow without
    // a reload.
    let (hash, committed) = net.wallet_transfer(1, 0, &bob, 7);
    wait_for(
        "the page follows a new commit",
        Duration::from_secs(20),
        || {
            let shown: u64 = browser.text("height").parse().ok()?;
            let listed = browser.text("blocks").contains(&format!("#{committed}"));
            (shown >= committed && listed).then_some(())
        },
    );
    assert!(
        browser.text("blocks-seen").contains("live"),
        "{}",
        browser.text("blocks-seen")
    );
    // The block with its certificate: which validators signed.
    browser.eval(&format!(
        "location.hash = '#/block/{committed}'; return null;"
    ));
    wait_for("the block view", Duration::from_secs(20), || {
        let body = browser.text("detail-body");
        (browser.text("detail-title") == format!("Block #{committed}") && body.contains("signed"))
            .then_some(body)
    });
    let signed =
        browser.eval("return [...document.querySelectorAll('#detail-body td.ok')].length;");
    assert!(signed.as_u64().unwrap_or(0) >= 3, "signers shown: {signed}");
    let body = browser.text("detail-body");
    assert!(
        body.contains(&hash[..12]),
        "the transaction is listed: {body}"
    );
    // Account look-up.
    browser.eval(&format!(
        "location.hash = '#/account/{alice}'; return null;"
    ));
    let expected = (BALANCE - 12).to_string();
    wait_for("the account view", Duration::from_secs(20), || {
        browser
            .text("detail-body")
            .contains(&expected)
            .then_some(())
    });
    // Readable on a phone: nothing wider than the window.
    let overflow = browser.eval(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
    );
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "horizontal overflow: {overflow}"
    );
    browser.eval(&format!(
        "location.hash = '#/block/{committed}'; return null;"
    ));
    std::thread::sleep(Duration::from_millis(500));
    if let Ok(path) = std::env::var("CAIRN_SCREENSHOT") {
        std::fs::write(&path, browser.screenshot()).expect("write the screenshot");
    }
    let png = browser.screenshot();
    assert_eq!(&png[..4], b"\x89PNG", "a screenshot: {}", stderr_hint());
}

fn stderr_hint() -> String {
    let output = Command::new("chromium").arg("--version").output();
    output.map(|o| stderr(&o)).unwrap_or_default()
}
