//! The HTTP API (warp): committed state from sled, submissions into the
//! mempool, Server-Sent Events of commits, Prometheus metrics.
//!
//! Every error is `{"error", "code"}` with a 4xx status for bad input (5xx
//! only when the node itself cannot answer). Request bodies are bounded by
//! [`HTTP_BODY_BYTES_MAX`]. Only this module and the wallet know JSON.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use cairn_core::api::{
    AccountJson, AccountProofJson, BatchEntryJson, BlockJson, BlockTxJson, ErrorJson, StatusJson,
    SubmitJson, TxJson, TxProofJson, TxStatusJson,
};
use cairn_core::limits::{HTTP_BATCH_TXS_MAX, HTTP_BODY_BYTES_MAX};
use cairn_core::verify::{certificate_json, header_json, state_proof_json, tx_proof_json};
use cairn_core::{Block, Certificate, Hash, Height, PublicKey, SignedTransaction};

use crate::admission::Refusal;
use crate::http_server::{self, ServerLimits, Slots};
use crate::mempool::MempoolStatus;
use crate::Node;

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    json_response(
        status,
        &ErrorJson {
            error: message.into(),
            code: code.into(),
        },
    )
}

/// The query of a route that can prove its answer: `proof=true` asks for
/// the proof (`false`, or no `proof`, for none); other parameters are
/// ignored.
type Query = std::collections::HashMap<String, String>;

/// The block explorer at `GET /`: one page of plain HTML, CSS and a little
/// JavaScript, built into the binary, reading the JSON API and the SSE
/// stream of the node that serves it.
const EXPLORER_HTML: &str = include_str!("explorer/index.html");

/// `GET /v1/openapi.json`: the OpenAPI 3 document of every route. The
/// end-to-end test `tests/openapi.rs` checks the server's real answers
/// against it, and CI runs Schemathesis on it against a live validator.
pub const OPENAPI_JSON: &str = include_str!("openapi/openapi.json");

fn wants_proof(query: &Query) -> Result<bool, Box<Response>> {
    match query.get("proof").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("proof must be true or false, not {other:?}"),
        ))),
    }
}

/// Seconds a client refused for want of room (503, 429) is asked to wait
/// before sending again (`Retry-After`): about the time a few blocks take
/// to make room.
const RETRY_AFTER_S: u32 = 1;

fn refusal_response(refusal: &Refusal) -> Response {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = error_response(status, refusal.code, refusal.message.clone());
    if matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) {
        response.headers_mut().insert(
            warp::http::header::RETRY_AFTER,
            warp::http::HeaderValue::from(RETRY_AFTER_S),
        );
    }
    response
}

fn storage_failure(e: impl std::fmt::Display) -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_error",
        format!("cannot read the database: {e}"),
    )
}

/// Binds the API and returns its address and the server future, which ends
/// after `shutdown` resolves and open requests finish. Call it inside the
/// runtime that will poll the future (the API's own, see [`crate::run`]):
/// the listener and every connection task belong to that runtime. Each
/// connection is bounded by `node.limits` ([`crate::http_server`]).
pub fn serve(
    node: Arc<Node>,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = ()>), String> {
    let listener = http_server::bind(listen).map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let limits = ServerLimits::from(&node.limits);
    let metrics = node.clone();
    let routes = warp::service(routes(node));
    // A 405 names the methods the resource has (RFC 9110 `Allow`); warp's
    // rejection does not know the path, the service around it does.
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::Body>| {
        let allow = allowed_methods(request.uri().path());
        let route = route_template(request.uri().path());
        let mut routes = routes.clone();
        let metrics = metrics.clone();
        async move {
            use hyper::service::Service;
            let mut response = routes.call(request).await?;
            if response.status() == StatusCode::METHOD_NOT_ALLOWED {
                response.headers_mut().insert(
                    warp::http::header::ALLOW,
                    warp::http::HeaderValue::from_static(allow),
                );
            }
            metrics
                .metrics
                .observe_http(route, response.status().as_u16());
            Ok::<_, Infallible>(response)
        }
    });
    let server = http_server::serve(listener, service, limits, shutdown);
    Ok((address, server))
}

/// The methods a path's resource answers: the two submission routes take
/// POST, every other route GET.
fn allowed_methods(path: &str) -> &'static str {
    match path.trim_end_matches('/') {
        "/v1/transactions" | "/v1/transactions/batch" => "POST",
        _ => "GET",
    }
}

/// The route a path belongs to, as the `route` label of
/// `cairn_http_requests_total` (a template, so the label set is bounded).
fn route_template(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        [""] => "/",
        ["v1", "status"] => "/v1/status",
        ["v1", "accounts", _] => "/v1/accounts/{address}",
        ["v1", "transactions"] => "/v1/transactions",
        ["v1", "transactions", "batch"] => "/v1/transactions/batch",
        ["v1", "transactions", _] => "/v1/transactions/{hash}",
        ["v1", "blocks", _] => "/v1/blocks/{which}",
        ["v1", "events"] => "/v1/events",
        ["v1", "openapi.json"] => "/v1/openapi.json",
        ["metrics"] => "/metrics",
        ["health"] => "/health",
        ["ready"] => "/ready",
        _ => "other",
    }
}

/// Every route of the API.
pub fn routes(node: Arc<Node>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let body_timeout = Duration::from_millis(node.limits.api_body_timeout_ms);
    let body = bounded_body(body_timeout);
    let subscribers = Slots::new(node.limits.api_sse_subscribers_max);
    let with_node = warp::any().map(move || node.clone());

    let status = warp::path!("v1" / "status")
        .and(warp::get())
        .and(with_node.clone())
        .map(|node: Arc<Node>| status(&node));
    let account = warp::path!("v1" / "accounts" / String)
        .and(warp::get())
        .and(warp::query::<Query>())
        .and(with_node.clone())
        .map(|address: String, query: Query, node: Arc<Node>| account(&node, &address, &query));
    let submit = warp::path!("v1" / "transactions")
        .and(warp::post())
        .and(with_node.clone())
        .and(body)
        .then(submit_one);
    // The batch route reads its Content-Type (which format) before the
    // body.
    let submit_batch = warp::path!("v1" / "transactions" / "batch")
        .and(warp::post())
        .and(with_node.clone())
        .and(content_type())
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(
            move |node: Arc<Node>,
                  content_type: Option<warp::http::HeaderValue>,
                  declared: Option<u64>,
                  stream| async move {
                let format = batch_format(content_type.as_ref());
                let body = read_bounded(declared, stream, body_timeout).await;
                submit_batch(node, format, body).await
            },
        );
    let transaction = warp::path!("v1" / "transactions" / String)
        .and(warp::get())
        .and(warp::query::<Query>())
        .and(with_node.clone())
        .map(|hash: String, query: Query, node: Arc<Node>| transaction(&node, &hash, &query));
    let block = warp::path!("v1" / "blocks" / String)
        .and(warp::get())
        .and(with_node.clone())
        .map(|which: String, node: Arc<Node>| block(&node, &which));
    let events = warp::path!("v1" / "events")
        .and(warp::get())
        .and(with_node.clone())
        .map(move |node: Arc<Node>| events(&node, &subscribers));
    let explorer = warp::path::end().and(warp::get()).map(|| {
        let reply = warp::reply::html(EXPLORER_HTML);
        let reply = warp::reply::with_header(
            reply,
            "content-security-policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; \
             script-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        );
        warp::reply::with_header(reply, "x-content-type-options", "nosniff").into_response()
    });
    let openapi = warp::path!("v1" / "openapi.json").and(warp::get()).map(|| {
        warp::reply::with_header(OPENAPI_JSON, "content-type", "application/json").into_response()
    });
    let health = warp::path!("health")
        .and(warp::get())
        .map(|| json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" })));
    let ready = warp::path!("ready")
        .and(warp::get())
        .and(with_node.clone())
        .map(|node: Arc<Node>| ready(&node));
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_node)
        .map(|node: Arc<Node>| {
            warp::reply::with_header(
                node.metrics.render(),
                "content-type",
                crate::metrics::CONTENT_TYPE,
            )
            .into_response()
        });

    status
        .or(account)
        .unify()
        .or(submit_batch)
        .unify()
        .or(submit)
        .unify()
        .or(transaction)
        .unify()
        .or(block)
        .unify()
        .or(events)
        .unify()
        .or(metrics)
        .unify()
        .or(health)
        .unify()
        .or(explorer)
        .unify()
        .or(openapi)
        .unify()
        .or(ready)
        .unify()
        .recover(|rejection| async move { Ok::<_, Infallible>(rejection_response(rejection)) })
        .unify()
}

/// The request body, at most [`HTTP_BODY_BYTES_MAX`] bytes, with or without
/// a Content-Length header: a declared length over the limit is refused
/// before anything is read, and an undeclared body is read only up to it.
/// A body not complete within `timeout` is refused 408 `request_timeout`.
pub(crate) fn bounded_body(
    timeout: Duration,
) -> impl Filter<Extract = (Result<bytes::Bytes, Response>,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .then(move |declared, stream| read_bounded(declared, stream, timeout))
}

async fn read_bounded<S, B>(
    declared: Option<u64>,
    stream: S,
    timeout: Duration,
) -> Result<bytes::Bytes, Response>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    if declared.is_some_and(|length| length > HTTP_BODY_BYTES_MAX) {
        return Err(body_too_large());
    }
    match tokio::time::timeout(timeout, read_body(declared, stream)).await {
        Ok(body) => body,
        Err(_) => Err(error_response(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "request body not complete within {} ms",
                timeout.as_millis()
            ),
        )),
    }
}

fn body_too_large() -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body exceeds {HTTP_BODY_BYTES_MAX} bytes"),
    )
}

async fn read_body<S, B>(declared: Option<u64>, stream: S) -> Result<bytes::Bytes, Response>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures::StreamExt;
    let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
    futures::pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| {
            error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("reading the body: {e}"),
            )
        })?;
        if body.len() as u64 + chunk.remaining() as u64 > HTTP_BODY_BYTES_MAX {
            return Err(body_too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            body.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(bytes::Bytes::from(body))
}

/// Turns warp's own rejections (no route, wrong method, body too large) into
/// the API's error shape.
fn rejection_response(rejection: Rejection) -> Response {
    if rejection.is_not_found() {
        error_response(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {HTTP_BODY_BYTES_MAX} bytes"),
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        error_response(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "a Content-Length header is required",
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        )
    } else {
        error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{rejection:?}"),
        )
    }
}

fn status(node: &Node) -> Response {
    let (tip, latest) = match node.storage.tip() {
        Ok(tip) => tip,
        Err(e) => return storage_failure(e),
    };
    let consensus = node.status.read().expect("status lock").clone();
    let validators = &node.genesis.validators;
    json_response(
        StatusCode::OK,
        &StatusJson {
            chain_id: node.genesis.chain_id().to_string(),
            node_id: node.key.public().to_hex(),
            height: tip.0,
            latest_block_hash: latest.to_hex(),
            view: consensus.view.0,
            leader: validators[consensus.leader.get() % validators.len()].to_hex(),
            validators: validators.iter().map(|v| v.to_hex()).collect(),
            peers: node.metrics.peers_connected.get() as usize,
            mempool_size: node.mempool.lock().expect("mempool lock").len(),
            syncing: consensus.syncing,
        },
    )
}

/// `GET /ready`: 200 when this validator can do its work (not catching up,
/// and connected to enough validators that, counting itself, they make a
/// quorum), else 503 saying which.
fn ready(node: &Node) -> Response {
    let consensus = node.status.read().expect("status lock").clone();
    let n = node.genesis.validators.len();
    let peers = node.metrics.peers_connected.get() as usize;
    let quorum = cairn_core::quorum(n);
    if consensus.syncing {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "syncing",
            "this validator is catching up with its peers",
        );
    }
    if peers + 1 < quorum {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_quorum",
            format!(
                "this validator sees {} of {n} validators (itself included); a quorum is {quorum}",
                peers + 1
            ),
        );
    }
    json_response(
        StatusCode::OK,
        &serde_json::json!({ "status": "ready", "validators_seen": peers + 1, "quorum": quorum }),
    )
}

fn account(node: &Node, address: &str, query: &Query) -> Response {
    let proof = match wants_proof(query) {
        Ok(proof) => proof,
        Err(response) => return *response,
    };
    let key: PublicKey = match address.parse() {
        Ok(key) => key,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_address",
                format!("address must be 64 lowercase hex characters: {e}"),
            )
        }
    };
    if key.is_weak() {
        let message = format!("address {key} is a weak key (a small-order ed25519 point)");
        return error_response(StatusCode::BAD_REQUEST, "invalid_address", message);
    }
    let read = if proof {
        account_proof(node, &key).map(|(account, proof)| (account, Some(proof)))
    } else {
        node.storage.account(&key).map(|account| (account, None))
    };
    match read {
        Ok((account, proof)) => {
            let pending_nonce = node
                .mempool
                .lock()
                .expect("mempool lock")
                .pending_nonce(&key, account);
            json_response(
                StatusCode::OK,
                &AccountJson {
                    address: key.to_hex(),
                    balance: account.balance,
                    nonce: account.nonce,
                    pending_nonce: Some(pending_nonce),
                    proof,
                },
            )
        }
        Err(e) => storage_failure(e),
    }
}

/// The account at the tip, with the proof of it under the tip's certified
/// header.
fn account_proof(
    node: &Node,
    key: &PublicKey,
) -> Result<(cairn_core::state::Account, AccountProofJson), crate::storage::StorageError> {
    use crate::storage::StorageError;
    let (height, account, merkle_proof) = node.storage.account_with_proof(key)?;
    let header = node
        .storage
        .header(height)?
        .ok_or_else(|| StorageError::Corrupt(format!("no header at the tip {height}")))?;
    let commit = certified(node, height)?;
    Ok((
        account,
        AccountProofJson {
            height: height.0,
            header: header_json(&header),
            commit,
            merkle_proof: state_proof_json(&merkle_proof),
        },
    ))
}

/// The certificate of a committed height, as JSON. Genesis has none: its
/// proof is the genesis file, so its commit is empty (view 0).
fn certified(
    node: &Node,
    height: Height,
) -> Result<cairn_core::api::CertificateJson, crate::storage::StorageError> {
    let validators = &node.genesis.validators;
    match node.storage.certificate(height)? {
        Some(certificate) => Ok(certificate_json(&certificate, validators)),
        None if height == Height(0) => Ok(cairn_core::api::CertificateJson {
            height: 0,
            view: 0,
            block_hash: node.genesis.block().hash().to_hex(),
            signatures: vec![],
        }),
        None => Err(crate::storage::StorageError::Corrupt(format!(
            "no certificate at committed height {height}"
        ))),
    }
}

/// Parses one JSON transaction, or says why it is not one.
fn parse_transaction(value: serde_json::Value) -> Result<SignedTransaction, Refusal> {
    let json: TxJson = serde_json::from_value(value).map_err(|e| {
        Refusal::new(
            400,
            "invalid_json",
            format!("not a signed transaction: {e}"),
        )
    })?;
    SignedTransaction::try_from(&json).map_err(|e| Refusal::new(400, e.code(), e.to_string()))
}

async fn submit_one(node: Arc<Node>, body: Result<bytes::Bytes, Response>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(response) => return response,
    };
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("body is not JSON: {e}"),
            )
        }
    };
    let tx = match parse_transaction(value) {
        Ok(tx) => tx,
        Err(refusal) => return refusal_response(&refusal),
    };
    let verdict = tokio::task::spawn_blocking(move || node.submit(vec![tx], true).remove(0)).await;
    match verdict {
        Ok(Ok(hash)) => json_response(
            StatusCode::ACCEPTED,
            &SubmitJson {
                hash: hash.to_hex(),
            },
        ),
        Ok(Err(refusal)) => refusal_response(&refusal),
        Err(e) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

/// The format of a batch body, named by its Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BatchFormat {
    /// A JSON array of signed transactions: the default, for people.
    Json,
    /// The binary batch of [`cairn_core::tx_batch`], for high-rate clients.
    Binary,
}

/// The request's Content-Type, if it has one.
fn content_type(
) -> impl Filter<Extract = (Option<warp::http::HeaderValue>,), Error = Infallible> + Clone {
    warp::header::value("content-type")
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// The batch format a Content-Type names: `application/octet-stream` is
/// the binary batch; anything else (none, `application/json`, or what
/// `curl --data` sends) is read as JSON, as this route always did.
fn batch_format(content_type: Option<&warp::http::HeaderValue>) -> BatchFormat {
    let media_type = content_type.and_then(|v| v.to_str().ok()).map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match media_type.as_deref() {
        Some(cairn_core::tx_batch::CONTENT_TYPE) => BatchFormat::Binary,
        _ => BatchFormat::Json,
    }
}

enum BatchError {
    TooMany,
    Json(serde_json::Error),
}

/// Parses a JSON array of at most [`HTTP_BATCH_TXS_MAX`] values, one at a
/// time: a longer array is refused at its first entry over the limit,
/// before the rest is parsed.
fn parse_batch(body: &[u8]) -> Result<Vec<serde_json::Value>, BatchError> {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    /// Stops at the first value over the limit (serde_json then reports
    /// the unread rest as an error, which `too_many` overrides).
    struct Bounded<'a> {
        too_many: &'a std::cell::Cell<bool>,
    }
    impl<'de> Visitor<'de> for Bounded<'_> {
        type Value = Vec<serde_json::Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an array of at most {HTTP_BATCH_TXS_MAX} transactions")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(value) = seq.next_element::<serde_json::Value>()? {
                if values.len() == HTTP_BATCH_TXS_MAX {
                    self.too_many.set(true);
                    return Err(serde::de::Error::custom("too many transactions"));
                }
                values.push(value);
            }
            Ok(values)
        }
    }
    let too_many = std::cell::Cell::new(false);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed = deserializer
        .deserialize_seq(Bounded {
            too_many: &too_many,
        })
        .and_then(|values| deserializer.end().map(|()| values));
    match parsed {
        _ if too_many.get() => Err(BatchError::TooMany),
        Ok(values) => Ok(values),
        Err(e) => Err(BatchError::Json(e)),
    }
}

fn too_many_in_batch() -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("at most {HTTP_BATCH_TXS_MAX} transactions per batch"),
    )
}

/// The entries of a batch body: per entry, a transaction or why it is
/// none; or the answer refusing the whole body. A JSON entry that is no
/// transaction is refused alone (the array still frames the others); a
/// binary body decodes whole or not at all, since nothing frames its
/// entries but their own lengths.
fn batch_entries(
    format: BatchFormat,
    body: &[u8],
) -> Result<Vec<Result<SignedTransaction, Refusal>>, Box<Response>> {
    let refused = match format {
        BatchFormat::Json => match parse_batch(body) {
            Ok(values) => return Ok(values.into_iter().map(parse_transaction).collect()),
            Err(BatchError::TooMany) => too_many_in_batch(),
            Err(BatchError::Json(e)) => error_response(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("body is not a JSON array: {e}"),
            ),
        },
        BatchFormat::Binary => match cairn_core::tx_batch::decode(body, HTTP_BATCH_TXS_MAX) {
            Ok(txs) => return Ok(txs.into_iter().map(Ok).collect()),
            Err(e) if e.is_too_large() => error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.to_string(),
            ),
            Err(e) => error_response(
                StatusCode::BAD_REQUEST,
                "invalid_encoding",
                format!("body is not a binary batch: {e}"),
            ),
        },
    };
    Err(Box::new(refused))
}

async fn submit_batch(
    node: Arc<Node>,
    format: BatchFormat,
    body: Result<bytes::Bytes, Response>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(response) => return response,
    };
    let entries = match batch_entries(format, &body) {
        Ok(entries) => entries,
        Err(response) => return *response,
    };
    drop(body);
    // The well-formed transactions go to admission; each refused entry
    // keeps its place for the answer.
    let mut refused: Vec<Option<Refusal>> = Vec::with_capacity(entries.len());
    let mut well_formed: Vec<SignedTransaction> = Vec::with_capacity(entries.len());
    for entry in entries {
        match entry {
            Ok(tx) => {
                refused.push(None);
                well_formed.push(tx);
            }
            Err(refusal) => refused.push(Some(refusal)),
        }
    }
    let verdicts = match tokio::task::spawn_blocking(move || node.submit(well_formed, true)).await {
        Ok(verdicts) => verdicts,
        Err(e) => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        }
    };
    let mut verdicts = verdicts.into_iter();
    let entries: Vec<BatchEntryJson> = refused
        .into_iter()
        .map(|refusal| {
            let verdict = match refusal {
                None => verdicts
                    .next()
                    .expect("one verdict per well-formed transaction"),
                Some(refusal) => Err(refusal),
            };
            match verdict {
                Ok(hash) => BatchEntryJson {
                    hash: Some(hash.to_hex()),
                    error: None,
                    code: None,
                },
                Err(refusal) => BatchEntryJson {
                    hash: None,
                    error: Some(refusal.message),
                    code: Some(refusal.code.to_string()),
                },
            }
        })
        .collect();
    json_response(StatusCode::OK, &entries)
}

fn transaction(node: &Node, hash: &str, query: &Query) -> Response {
    if hash == "batch" {
        // `/v1/transactions/batch` is the batch submission resource, which
        // takes POST only (not a transaction named "batch").
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        );
    }
    let proof = match wants_proof(query) {
        Ok(proof) => proof,
        Err(response) => return *response,
    };
    let hash: Hash = match hash.parse() {
        Ok(hash) => hash,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_hash",
                format!("hash must be 64 lowercase hex characters: {e}"),
            )
        }
    };
    let status = |status: &str, height: Option<u64>| TxStatusJson {
        hash: hash.to_hex(),
        status: status.into(),
        height,
        error: None,
        reason: None,
        proof: None,
    };
    match node.storage.tx_height(&hash) {
        Err(e) => return storage_failure(e),
        Ok(Some(height)) if proof => {
            return match tx_proof(node, &hash, height) {
                Ok(proof) => json_response(
                    StatusCode::OK,
                    &TxStatusJson {
                        proof: Some(proof),
                        ..status("committed", Some(height.0))
                    },
                ),
                Err(e) => storage_failure(e),
            }
        }
        Ok(Some(height)) => {
            return json_response(StatusCode::OK, &status("committed", Some(height.0)))
        }
        Ok(None) => {}
    }
    let in_mempool = node.mempool.lock().expect("mempool lock").status(&hash);
    match in_mempool {
        MempoolStatus::Pending => json_response(StatusCode::OK, &status("pending", None)),
        MempoolStatus::Dropped(dropped) => json_response(
            StatusCode::OK,
            &TxStatusJson {
                error: Some(dropped.message),
                reason: Some(dropped.code.to_string()),
                ..status(
                    if dropped.expired {
                        "expired"
                    } else {
                        "rejected"
                    },
                    None,
                )
            },
        ),
        MempoolStatus::Unknown => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("transaction {hash} is unknown"),
        ),
    }
}

/// The proof of a committed transaction under its block's `tx_root`.
fn tx_proof(
    node: &Node,
    hash: &Hash,
    height: Height,
) -> Result<TxProofJson, crate::storage::StorageError> {
    use crate::storage::StorageError;
    let block = node
        .storage
        .block(height)?
        .ok_or_else(|| StorageError::Corrupt(format!("no block at committed height {height}")))?;
    let hashes: Vec<Hash> = block.transactions.iter().map(|t| t.hash()).collect();
    let index = hashes
        .iter()
        .position(|h| h == hash)
        .ok_or_else(|| StorageError::Corrupt(format!("{hash} is not in block {height}")))?;
    let merkle_proof = cairn_core::merkle::tx_proof(&hashes, index)
        .ok_or_else(|| StorageError::Corrupt("transaction index out of range".into()))?;
    Ok(TxProofJson {
        header: header_json(&block.header),
        commit: certified(node, height)?,
        merkle_proof: tx_proof_json(&merkle_proof),
    })
}

fn block(node: &Node, which: &str) -> Response {
    let height = if which == "latest" {
        match node.storage.tip_height() {
            Ok(tip) => tip,
            Err(e) => return storage_failure(e),
        }
    } else {
        match which.parse::<u64>() {
            Ok(height) => Height(height),
            Err(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_height",
                    format!("{which:?} is not a height or \"latest\""),
                )
            }
        }
    };
    let found = node
        .storage
        .block(height)
        .and_then(|b| Ok((b, node.storage.certificate(height)?)));
    match found {
        Err(e) => storage_failure(e),
        Ok((None, _)) => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no block at height {height}"),
        ),
        Ok((Some(block), certificate)) => json_response(
            StatusCode::OK,
            &block_json(node, &block, certificate.as_ref()),
        ),
    }
}

/// The API's view of a block (the genesis block has no certificate).
pub fn block_json(node: &Node, block: &Block, certificate: Option<&Certificate>) -> BlockJson {
    let h = &block.header;
    let validators = &node.genesis.validators;
    BlockJson {
        height: h.height.0,
        hash: block.hash().to_hex(),
        parent_hash: h.parent_hash.to_hex(),
        view: h.view.0,
        proposer: h.proposer.to_hex(),
        timestamp_ms: h.timestamp_ms,
        tx_root: h.tx_root.to_hex(),
        state_root: h.state_root.to_hex(),
        transactions: block
            .transactions
            .iter()
            .map(|tx| BlockTxJson {
                hash: tx.hash().to_hex(),
                tx: TxJson::from(tx),
            })
            .collect(),
        commit: certificate
            .map(|c| cairn_core::verify::commit_signatures_json(c, validators))
            .unwrap_or_default(),
        commit_view: certificate.map(|c| c.view.0),
    }
}

/// `GET /v1/events`: commits as Server-Sent Events, while a subscriber slot
/// is free (503 `too_many_subscribers` otherwise). The slot lives as long as
/// the stream.
fn events(node: &Node, subscribers: &Arc<Slots>) -> Response {
    use futures::StreamExt;
    let Some(slot) = subscribers.try_take() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            format!("at most {} event streams at once", subscribers.max()),
        );
    };
    let receiver = node.events.subscribe();
    let stream = futures::stream::unfold((receiver, slot), |(mut receiver, slot)| async move {
        loop {
            match receiver.recv().await {
                Ok(event) => {
                    let sse = warp::sse::Event::default()
                        .event("block")
                        .json_data(&event)
                        .unwrap_or_default();
                    return Some((sse, (receiver, slot)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .map(Ok::<_, Infallible>);
    let mut stopping = node.stopping.subscribe();
    let stream = stream.take_until(async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
    });
    warp::sse::reply(warp::sse::keep_alive().stream(stream)).into_response()
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    fn array(count: usize, tail: &str) -> Vec<u8> {
        let mut body = String::from("[");
        for i in 0..count {
            if i > 0 {
                body.push(',');
            }
            body.push_str("{}");
        }
        body.push_str(tail);
        body.into_bytes()
    }

    /// A batch over the limit is refused at its first entry too many: what
    /// follows is never parsed (here it is not even JSON).
    #[test]
    fn a_batch_is_bounded_while_it_is_parsed() {
        let values = parse_batch(&array(HTTP_BATCH_TXS_MAX, "]")).ok().unwrap();
        assert_eq!(values.len(), HTTP_BATCH_TXS_MAX);
        assert!(matches!(
            parse_batch(&array(HTTP_BATCH_TXS_MAX + 1, ", not json at all")),
            Err(BatchError::TooMany)
        ));
        assert!(matches!(
            parse_batch(&array(3, ", not json")),
            Err(BatchError::Json(_))
        ));
        assert!(matches!(
            parse_batch(br#"{"not": "an array"}"#),
            Err(BatchError::Json(_))
        ));
        assert!(matches!(parse_batch(b"[] []"), Err(BatchError::Json(_))));
        assert_eq!(parse_batch(b" [ ] ").ok().unwrap().len(), 0);
    }
}

/// The batch route over HTTP (warp's test client) against an in-process
/// node of a one-validator testnet: no consensus thread or peers, so what
/// is admitted stays in the mempool.
#[cfg(test)]
mod batch_http_tests {
    use super::*;
    use cairn_core::tx_batch;
    use cairn_core::{Keypair, Transfer};
    use cairn_genesis::{NodeLimits, TestnetOptions, ValidGenesis};

    const BALANCE: u64 = 1_000;

    /// A testnet on disk; each [`Net::node`] is a fresh validator 0 on it.
    struct Net {
        dir: tempfile::TempDir,
        genesis: ValidGenesis,
        key: Keypair,
        accounts: Vec<Keypair>,
        nodes: std::cell::Cell<usize>,
    }

    struct TestNode {
        node: Arc<Node>,
        /// Kept so the gossip inbox stays open.
        _queues: crate::p2p::Queues,
    }

    impl Net {
        fn new() -> Net {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("net");
            let options = TestnetOptions {
                validators: 1,
                accounts: 2,
                balance: BALANCE,
                chain_id: "api-test".into(),
                ..TestnetOptions::default()
            };
            let genesis = cairn_genesis::write_testnet(&out, &options).unwrap();
            let read = |path: std::path::PathBuf| cairn_genesis::keyfile::read(&path).unwrap();
            Net {
                key: read(
                    cairn_genesis::node_home(&out, 0).join(cairn_genesis::VALIDATOR_KEY_FILE),
                ),
                accounts: (0..2)
                    .map(|j| read(cairn_genesis::account_key_path(&out, j)))
                    .collect(),
                genesis,
                dir,
                nodes: std::cell::Cell::new(0),
            }
        }

        fn node(&self) -> TestNode {
            let n = self.nodes.get();
            self.nodes.set(n + 1);
            let storage = crate::storage::Storage::open(
                &self.dir.path().join(format!("data{n}")),
                &self.genesis.block(),
                &self.genesis.accounts,
            )
            .unwrap();
            let limits = NodeLimits::default();
            let metrics = Arc::new(crate::metrics::Metrics::new(1, 0));
            let (network, queues) = crate::p2p::Network::new(1, 0, metrics.clone());
            let params = &self.genesis.genesis.params;
            let mempool = crate::mempool::Mempool::new(
                self.genesis.chain_id().to_string(),
                crate::mempool::MempoolLimits::new(
                    params.mempool_txs_max,
                    params.block_txs_max,
                    &limits,
                ),
            );
            let node = Node {
                genesis: self.genesis.clone(),
                key: self.key.clone(),
                me: cairn_core::ValidatorIndex(0),
                storage,
                mempool: std::sync::Mutex::new(mempool),
                metrics: metrics.clone(),
                events: tokio::sync::broadcast::channel(4).0,
                stopping: tokio::sync::watch::channel(false).0,
                status: Default::default(),
                network,
                consensus_events: Arc::new(crate::consensus_loop::EventQueue::new(
                    1,
                    limits.consensus_queue_frames_per_peer,
                    limits.consensus_queue_bytes_per_peer,
                    crate::consensus_loop::QueueGauges::of(&metrics),
                )),
                limits,
            };
            TestNode {
                node: Arc::new(node),
                _queues: queues,
            }
        }

        /// A transfer of `amount` from account `from` to the other one.
        fn transfer(&self, from: usize, amount: u64, nonce: u64) -> SignedTransaction {
            let key = &self.accounts[from];
            SignedTransaction::sign(
                Transfer {
                    chain_id: self.genesis.chain_id().to_string(),
                    from: key.public(),
                    to: self.accounts[1 - from].public(),
                    amount,
                    nonce,
                },
                key,
            )
        }

        /// Good, refused and repeated entries: every kind of per-entry
        /// verdict a well-formed transaction can get.
        fn mixed_batch(&self) -> Vec<SignedTransaction> {
            let good = self.transfer(0, 5, 0);
            let mut forged = self.transfer(0, 6, 1);
            forged.transfer.amount = 600;
            let mut other_chain = self.transfer(1, 1, 0);
            other_chain.transfer.chain_id = "elsewhere".into();
            let overspend = self.transfer(1, BALANCE + 1, 0);
            let weak_to = {
                let mut tx = self.transfer(1, 1, 0);
                tx.transfer.to = cairn_core::PublicKey([0; 32]);
                SignedTransaction::sign(tx.transfer, &self.accounts[1])
            };
            let next = self.transfer(0, 7, 1);
            vec![
                good.clone(),
                forged,
                other_chain,
                overspend,
                weak_to,
                good,
                next,
            ]
        }
    }

    impl TestNode {
        async fn post(
            &self,
            content_type: Option<&str>,
            body: Vec<u8>,
        ) -> (u16, serde_json::Value) {
            let mut request = warp::test::request()
                .method("POST")
                .path("/v1/transactions/batch");
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let response = request.body(body).reply(&routes(self.node.clone())).await;
            let json = serde_json::from_slice(response.body()).unwrap_or(serde_json::Value::Null);
            (response.status().as_u16(), json)
        }

        fn mempool_len(&self) -> usize {
            self.node.mempool.lock().unwrap().len()
        }

        /// Asserts an error answer with `status` and `code`, and that the
        /// mempool is still empty.
        fn refused(&self, answer: (u16, serde_json::Value), status: u16, code: &str) {
            assert_eq!(answer.0, status, "{}", answer.1);
            assert_eq!(answer.1["code"], code, "{}", answer.1);
            assert!(answer.1["error"].as_str().is_some_and(|e| !e.is_empty()));
            assert_eq!(self.mempool_len(), 0, "bad input changed the mempool");
        }
    }

    fn json_body(txs: &[SignedTransaction]) -> Vec<u8> {
        let txs: Vec<cairn_core::api::TxJson> = txs.iter().map(Into::into).collect();
        serde_json::to_vec(&txs).unwrap()
    }

    /// The same transactions, as a binary batch to one node and as a JSON
    /// array to another, get the same answer entry for entry.
    #[tokio::test]
    async fn a_binary_batch_gets_the_answer_of_the_same_json_batch() {
        let net = Net::new();
        let txs = net.mixed_batch();
        let binary = net.node();
        let (status, answer) = binary
            .post(Some("application/octet-stream"), tx_batch::encode(&txs))
            .await;
        assert_eq!(status, 200, "{answer}");
        let json = net.node();
        let (status, json_answer) = json.post(Some("application/json"), json_body(&txs)).await;
        assert_eq!(status, 200, "{json_answer}");
        assert_eq!(answer, json_answer);
        let codes: Vec<&str> = answer
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["code"].as_str().unwrap_or("ok"))
            .collect();
        assert_eq!(
            codes,
            [
                "ok",
                "invalid_signature",
                "wrong_chain",
                "insufficient_funds",
                "invalid_address",
                "ok",
                "ok"
            ]
        );
        assert_eq!(answer[0]["hash"], txs[0].hash().to_hex());
        assert_eq!(answer[5]["hash"], txs[0].hash().to_hex());
        assert_eq!(binary.mempool_len(), 2);
        // Posting it again: the pending ones keep their hashes (and the
        // forged nonce 1 now meets the pending one first).
        let (status, mut again) = binary
            .post(Some("Application/Octet-Stream"), tx_batch::encode(&txs))
            .await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again[1]["code"], "nonce_pending", "{again}");
        again[1] = answer[1].clone();
        assert_eq!(again, answer);
        assert_eq!(binary.mempool_len(), 2);
        let (status, empty) = binary
            .post(Some("application/octet-stream"), tx_batch::encode(&[]))
            .await;
        assert_eq!((status, empty), (200, serde_json::json!([])));
    }

    #[tokio::test]
    async fn bad_binary_bodies_are_refused_whole_and_change_nothing() {
        let net = Net::new();
        let node = net.node();
        let binary = Some("application/octet-stream");
        let good = tx_batch::encode(&[net.transfer(0, 1, 0), net.transfer(0, 1, 1)]);
        // Truncated: inside the last transaction, inside the count, empty.
        let answer = node.post(binary, good[..good.len() - 1].to_vec()).await;
        node.refused(answer, 400, "invalid_encoding");
        let answer = node.post(binary, good[..5].to_vec()).await;
        node.refused(answer, 400, "invalid_encoding");
        node.refused(node.post(binary, vec![]).await, 400, "invalid_encoding");
        // Trailing bytes after the last transaction.
        let mut trailing = good.clone();
        trailing.push(0);
        let answer = node.post(binary, trailing).await;
        assert!(answer.1["error"]
            .as_str()
            .unwrap()
            .contains("follow the last"));
        node.refused(answer, 400, "invalid_encoding");
        // A count the body cannot hold.
        let mut more = good.clone();
        more[..8].copy_from_slice(&tx_batch::count_prefix(3));
        node.refused(node.post(binary, more).await, 400, "invalid_encoding");
        // A count over the cap (refused on the prefix alone), and one
        // that would be a huge allocation.
        let mut over = tx_batch::count_prefix(HTTP_BATCH_TXS_MAX + 1).to_vec();
        over.extend_from_slice(&good[8..]);
        node.refused(node.post(binary, over).await, 413, "payload_too_large");
        let huge = u64::MAX.to_le_bytes().to_vec();
        node.refused(node.post(binary, huge).await, 413, "payload_too_large");
        // A JSON array sent as binary (its first 8 bytes read as a huge
        // count), and garbage.
        let json = json_body(&[net.transfer(0, 1, 0)]);
        node.refused(node.post(binary, json).await, 413, "payload_too_large");
        let mut garbage = tx_batch::count_prefix(2).to_vec();
        garbage.extend_from_slice(&[0xa5; 400]);
        node.refused(node.post(binary, garbage).await, 400, "invalid_encoding");
        let garbage = vec![0xa5; 10_000];
        node.refused(node.post(binary, garbage).await, 413, "payload_too_large");
        // The good body still goes through.
        let (status, answer) = node.post(binary, good).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(node.mempool_len(), 2);
    }

    /// A body over the API's limit is refused as for JSON, before it is
    /// read whole.
    #[tokio::test]
    async fn an_oversized_binary_body_is_413() {
        let net = Net::new();
        let node = net.node();
        let body = vec![0; HTTP_BODY_BYTES_MAX as usize + 1];
        let answer = node.post(Some("application/octet-stream"), body).await;
        node.refused(answer, 413, "payload_too_large");
    }

    #[tokio::test]
    async fn only_octet_stream_is_binary_and_any_other_content_type_is_json() {
        let net = Net::new();
        let node = net.node();
        let tx = net.transfer(0, 1, 0);
        let json = json_body(std::slice::from_ref(&tx));
        // What `curl --data` and careless clients send is read as JSON, as
        // this route always did: binary under those types is bad JSON.
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/cbor",
        ] {
            let answer = node
                .post(
                    Some(content_type),
                    tx_batch::encode(std::slice::from_ref(&tx)),
                )
                .await;
            node.refused(answer, 400, "invalid_json");
        }
        // JSON sent as binary and binary sent as JSON: refused as what
        // they claim to be.
        let binary = tx_batch::encode(std::slice::from_ref(&tx));
        node.refused(
            node.post(Some("application/json"), binary).await,
            400,
            "invalid_json",
        );
        let (status, answer) = node
            .post(Some("application/x-www-form-urlencoded"), json.clone())
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer[0]["hash"], tx.hash().to_hex());
        // No Content-Type, or JSON with parameters: JSON (the same
        // transaction again: the same answer).
        for content_type in [None, Some("application/json; charset=utf-8")] {
            let (status, again) = node.post(content_type, json.clone()).await;
            assert_eq!((status, &again), (200, &answer));
        }
    }

    /// A node busy with its peers' gossip turns clients away before any
    /// signature is checked, for a binary batch as for JSON: a forged
    /// transaction gets `overloaded`, not `invalid_signature`.
    #[tokio::test]
    async fn an_overloaded_node_refuses_a_binary_batch_before_checking_signatures() {
        let net = Net::new();
        let node = net.node();
        for _ in 0..crate::p2p::gossip_inbox_frames(4) / 2 {
            node.node.network.receive_gossip(1, vec![]);
        }
        let mut forged = net.transfer(0, 1, 0);
        forged.transfer.amount = 2;
        for (content_type, body) in [
            (
                "application/octet-stream",
                tx_batch::encode(&[forged.clone()]),
            ),
            ("application/json", json_body(&[forged])),
        ] {
            let (status, answer) = node.post(Some(content_type), body).await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer[0]["code"], "overloaded", "{content_type}: {answer}");
        }
        assert_eq!(node.mempool_len(), 0);
    }
}
