//! Issue 12: `GET /v1/openapi.json` is true to the server. Against a live
//! 4-validator network, a real answer of every documented route (success
//! and error answers) is checked against the document's schema for its
//! status, and the document names every route the server serves. Then, when
//! available, Schemathesis (from PyPI; `.ci/run` installs it in a
//! virtualenv and sets `CAIRN_SCHEMATHESIS`) fuzzes the live validator from
//! the document: no 5xx, every answer conforms.

use std::process::Command;

use cairn_tests::{http_get, http_post, http_post_bytes, stderr, stdout, Testnet};
use serde_json::{json, Value};

const BALANCE: u64 = 1_000_000;

/// A small validator for the JSON-schema subset the document uses.
struct Schema<'a> {
    doc: &'a Value,
}

impl Schema<'_> {
    fn resolve<'s>(&'s self, schema: &'s Value) -> &'s Value {
        match schema["$ref"].as_str() {
            Some(r) => {
                let name = r.trim_start_matches("#/components/schemas/");
                let target = &self.doc["components"]["schemas"][name];
                assert!(!target.is_null(), "dangling $ref {r}");
                self.resolve(target)
            }
            None => schema,
        }
    }

    fn check(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        if value.is_null() && schema["nullable"] == true {
            return Ok(());
        }
        if let Some(options) = schema["oneOf"].as_array() {
            let passing = options
                .iter()
                .filter(|o| self.check(o, value, at).is_ok())
                .count();
            return (passing == 1)
                .then_some(())
                .ok_or(format!("{at}: {passing} oneOf options match {value}"));
        }
        let ty = schema["type"].as_str().unwrap_or("any");
        let ok = match ty {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_u64() || value.is_i64(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => true,
        };
        if !ok {
            return Err(format!("{at}: expected {ty}, got {value}"));
        }
        if let Some(min) = schema["minimum"].as_i64() {
            if value.as_i64().is_some_and(|v| v < min) {
                return Err(format!("{at}: {value} below {min}"));
            }
        }
        if let Some(values) = schema["enum"].as_array() {
            if !values.contains(value) {
                return Err(format!("{at}: {value} not in {values:?}"));
            }
        }
        if let (Some(pattern), Some(text)) = (schema["pattern"].as_str(), value.as_str()) {
            let fits = match pattern {
                "^[0-9a-f]{64}$" => text.len() == 64 && text.bytes().all(is_hex),
                "^[0-9a-f]{128}$" => text.len() == 128 && text.bytes().all(is_hex),
                "^(latest|0|[1-9][0-9]{0,18})$" => {
                    text == "latest"
                        || text == "0"
                        || (text.len() <= 19
                            && !text.starts_with('0')
                            && text.bytes().all(|b| b.is_ascii_digit()))
                }
                "^[a-z0-9_]+$" => {
                    !text.is_empty()
                        && text
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                }
                other => panic!("the test knows no pattern {other}"),
            };
            if !fits {
                return Err(format!("{at}: {text:?} does not match {pattern}"));
            }
        }
        if let Some(items) = value.as_array() {
            if let Some(max) = schema["maxItems"].as_u64() {
                if items.len() as u64 > max {
                    return Err(format!("{at}: more than {max} items"));
                }
            }
            for (i, item) in items.iter().enumerate() {
                self.check(&schema["items"], item, &format!("{at}[{i}]"))?;
            }
        }
        if let Some(object) = value.as_object() {
            let properties = schema["properties"].as_object();
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                if !object.contains_key(name) {
                    return Err(format!("{at}: missing required {name}"));
                }
            }
            for (name, field) in object {
                match properties.and_then(|p| p.get(name)) {
                    Some(s) => self.check(s, field, &format!("{at}.{name}"))?,
                    None if schema["additionalProperties"] == false => {
                        return Err(format!("{at}: undocumented field {name}"))
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

#[test]
fn the_openapi_document_is_true_to_the_server() {
    let net = Testnet::start_all(4, 2, BALANCE);
    let bob = net.account_address(1);
    let (hash, height) = net.wallet_transfer(0, 0, &bob, 5);
    let api = net.api(0);
    let doc = http_get(&format!("{api}/v1/openapi.json"));
    assert_eq!(doc.status, 200);
    let doc = doc.json;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let schema = Schema { doc: &doc };

    let signed = {
        let output = net.wallet(
            0,
            &[
                "sign-transfer",
                "--key",
                net.account_key(1).to_str().unwrap(),
                "--to",
                &net.account_address(0),
                "--amount",
                "1",
                "--nonce",
                "0",
                "--chain-id",
                "cairn-e2e",
            ],
        );
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
    };
    let absent = "11".repeat(32);
    // (documented path, method, URL path, body, expected status)
    let cases: Vec<(&str, &str, String, Option<String>, u16)> = vec![
        ("/v1/status", "get", "/v1/status".into(), None, 200),
        (
            "/v1/accounts/{address}",
            "get",
            format!("/v1/accounts/{bob}"),
            None,
            200,
        ),
        (
            "/v1/accounts/{address}",
            "get",
            format!("/v1/accounts/{bob}?proof=true"),
            None,
            200,
        ),
        (
            "/v1/accounts/{address}",
            "get",
            format!("/v1/accounts/{absent}?proof=true"),
            None,
            200,
        ),
        (
            "/v1/accounts/{address}",
            "get",
            "/v1/accounts/xyz".into(),
            None,
            400,
        ),
        (
            "/v1/transactions",
            "post",
            "/v1/transactions".into(),
            Some(signed.clone()),
            202,
        ),
        (
            "/v1/transactions",
            "post",
            "/v1/transactions".into(),
            Some("{}".into()),
            400,
        ),
        (
            "/v1/transactions/batch",
            "post",
            "/v1/transactions/batch".into(),
            Some(format!("[{signed}, {{\"nope\": 1}}]")),
            200,
        ),
        (
            "/v1/transactions/{hash}",
            "get",
            format!("/v1/transactions/{hash}"),
            None,
            200,
        ),
        (
            "/v1/transactions/{hash}",
            "get",
            format!("/v1/transactions/{hash}?proof=true"),
            None,
            200,
        ),
        (
            "/v1/transactions/{hash}",
            "get",
            format!("/v1/transactions/{absent}"),
            None,
            404,
        ),
        (
            "/v1/transactions/{hash}",
            "get",
            "/v1/transactions/zz".into(),
            None,
            400,
        ),
        (
            "/v1/blocks/{which}",
            "get",
            "/v1/blocks/latest".into(),
            None,
            200,
        ),
        (
            "/v1/blocks/{which}",
            "get",
            "/v1/blocks/0".into(),
            None,
            200,
        ),
        (
            "/v1/blocks/{which}",
            "get",
            format!("/v1/blocks/{height}"),
            None,
            200,
        ),
        (
            "/v1/blocks/{which}",
            "get",
            "/v1/blocks/999999".into(),
            None,
            404,
        ),
        (
            "/v1/blocks/{which}",
            "get",
            "/v1/blocks/-1".into(),
            None,
            400,
        ),
        ("/health", "get", "/health".into(), None, 200),
        ("/ready", "get", "/ready".into(), None, 200),
        (
            "/v1/openapi.json",
            "get",
            "/v1/openapi.json".into(),
            None,
            200,
        ),
    ];
    let mut exercised = std::collections::BTreeSet::new();
    for (path, method, url, body, expected) in &cases {
        let answer = match body {
            None => http_get(&format!("{api}{url}")),
            Some(body) => http_post(&format!("{api}{url}"), body),
        };
        assert_eq!(answer.status, *expected, "{method} {url}: {}", answer.json);
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let responses = &operation["responses"];
        let documented = if responses[expected.to_string()].is_object() {
            &responses[expected.to_string()]
        } else {
            &responses["default"]
        };
        assert!(
            documented.is_object(),
            "{method} {path}: status {expected} undocumented"
        );
        let body_schema = &documented["content"]["application/json"]["schema"];
        schema
            .check(body_schema, &answer.json, &format!("{method} {url}"))
            .unwrap_or_else(|e| panic!("the answer does not conform: {e}\n{}", answer.json));
        exercised.insert(*path);
    }
    // The batch's binary form (issue 13): documented as a request body,
    // answered like the JSON batch; binary under another Content-Type is
    // read as JSON (bad JSON, a documented error).
    let batch_doc = &doc["paths"]["/v1/transactions/batch"]["post"];
    assert_eq!(
        batch_doc["requestBody"]["content"]["application/octet-stream"]["schema"]["format"],
        "binary"
    );
    let binary = {
        let signer = net.signer(1, 1);
        let tx = signer.sign_with_nonce(signer.address(), 1, 1);
        cairn_core::tx_batch::encode(&[cairn_core::SignedTransaction::try_from(&tx).unwrap()])
    };
    let url = format!("{api}/v1/transactions/batch");
    for (content_type, body, expected, documented) in [
        ("application/octet-stream", binary.clone(), 200, "200"),
        (
            "application/octet-stream",
            binary[..9].to_vec(),
            400,
            "default",
        ),
        ("text/plain", binary, 400, "default"),
    ] {
        let answer = http_post_bytes(&url, content_type, &body);
        assert_eq!(answer.status, expected, "{content_type}: {}", answer.json);
        let body_schema =
            &batch_doc["responses"][documented]["content"]["application/json"]["schema"];
        schema
            .check(
                body_schema,
                &answer.json,
                &format!("binary batch as {content_type}"),
            )
            .unwrap_or_else(|e| panic!("the answer does not conform: {e}\n{}", answer.json));
    }

    // Routes that are not JSON: served with the documented content type.
    for (path, kind) in [("/metrics", "text/plain"), ("/", "text/html")] {
        let answer = ureq::get(&format!("{api}{path}")).call().expect(path);
        assert_eq!(answer.status(), 200);
        assert!(
            answer.content_type().starts_with(kind),
            "{path}: {}",
            answer.content_type()
        );
        assert!(doc["paths"][path]["get"]["responses"]["200"]["content"][kind].is_object());
        exercised.insert(path);
    }
    assert!(doc["paths"]["/v1/events"]["get"].is_object());
    exercised.insert("/v1/events");
    // Every documented path was exercised, and an unknown one is a
    // documented error.
    let documented: std::collections::BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        documented, exercised,
        "documented routes vs routes exercised"
    );
    let unknown = http_get(&format!("{api}/v1/nothing"));
    assert_eq!(unknown.status, 404);
    schema
        .check(
            &json!({"$ref": "#/components/schemas/Error"}),
            &unknown.json,
            "404",
        )
        .unwrap();

    run_schemathesis(&api);
}

/// Schemathesis against the live validator: property-based requests from
/// the document; fails on any 5xx or non-conforming answer.
fn run_schemathesis(api: &str) {
    let st = std::env::var("CAIRN_SCHEMATHESIS").unwrap_or_default();
    if !cairn_tests::machine_has(
        "Schemathesis against a live validator",
        !st.is_empty() && std::path::Path::new(&st).exists(),
        "Schemathesis (CAIRN_SCHEMATHESIS=path to `st`; pip install schemathesis)",
    ) {
        return;
    }
    let output = Command::new(&st)
        .args([
            "run",
            &format!("{api}/v1/openapi.json"),
            "--url",
            api,
            // Every check of the server's answers against the document.
            // Not `positive_data_acceptance`: a request can fit the schema
            // and still be refused for what it means (a random signature,
            // another chain, an unknown hash: 400/404 by design); not
            // `negative_data_rejection`: an oversized batch is 413
            // `payload_too_large` (INTERFACE.md), not a 4xx it lists.
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,\
             unsupported_method,allow_header_conformance,missing_required_header",
            "--exclude-path",
            "/v1/events",
            "--max-examples",
            "30",
            "--workers",
            "1",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let text = format!("{}{}", stdout(&output), stderr(&output));
    println!("{text}");
    assert!(
        output.status.success(),
        "Schemathesis found problems:\n{text}"
    );
}
