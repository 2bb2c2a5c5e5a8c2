//! One export attempt: the payload's encoded bytes over gRPC (a lazily connecting
//! channel, a codec that sends them as they are and reads the answer's
//! `partial_success`) or HTTP/protobuf (ureq, on the blocking pool), over TLS for an
//! `https://` endpoint ([`crate::tls::client`]), and the answer classified by
//! [`super::retry`].

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

use super::{
    Encoded, ForwardConfig, ForwardError, Protocol, http_url,
    retry::{self, Delivered, Failure},
};
use crate::tls::{client::ClientMaterial, error_chain};

/// A gRPC codec for bodies that are already protobuf-encoded; the response is read for
/// its `partial_success`.
#[derive(Clone, Copy, Debug, Default)]
struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = Delivered;
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        PreEncoded
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for PreEncoded {
    type Item = Delivered;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Delivered>, Status> {
        let body = src.copy_to_bytes(src.remaining());
        Ok(Some(Delivered::decode(body)))
    }
}

/// One attempt's transport: gRPC (a lazily connecting channel) or HTTP (ureq).
#[derive(Clone)]
pub(super) struct Transport {
    config: Arc<ForwardConfig>,
    grpc: Option<tonic::client::Grpc<tonic::transport::Channel>>,
    http: ureq::Agent,
}

impl Transport {
    /// The transport for `config`; `tls` is the loaded client material when the
    /// endpoint is `https://`.
    pub(super) fn new(
        config: &ForwardConfig,
        tls: Option<&ClientMaterial>,
    ) -> Result<Self, ForwardError> {
        let mut http = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false);
        if let Some(tls) = tls {
            http = http.tls_config(tls.ureq());
        }
        Ok(Self {
            config: Arc::new(config.clone()),
            grpc: grpc_client(config, tls)?,
            http: http.build().into(),
        })
    }

    pub(super) async fn attempt(&self, payload: &Encoded) -> Result<Delivered, Failure> {
        match &self.grpc {
            Some(c) => send_grpc(c.clone(), &self.config, payload).await,
            None => send_http(&self.http, &self.config, payload).await,
        }
    }
}

/// The gRPC endpoint of `config` with its TLS settings (no connection yet, and no
/// runtime needed), so that a bad endpoint fails at start.
pub(super) fn grpc_endpoint(
    config: &ForwardConfig,
    tls: Option<&ClientMaterial>,
) -> Result<tonic::transport::Endpoint, ForwardError> {
    let bad = |e: tonic::transport::Error| ForwardError::Endpoint {
        endpoint: config.endpoint.clone(),
        reason: error_chain(&e),
    };
    let mut ep = tonic::transport::Endpoint::from_shared(config.endpoint.clone()).map_err(bad)?;
    if let Some(tls) = tls {
        ep = ep.tls_config(tls.tonic()).map_err(bad)?;
    }
    Ok(ep.timeout(config.timeout).connect_timeout(config.timeout))
}

/// The gRPC client for `config`, when it uses gRPC (connecting lazily, so a
/// downstream that is not up yet is retried like any other). Needs a tokio runtime.
fn grpc_client(
    config: &ForwardConfig,
    tls: Option<&ClientMaterial>,
) -> Result<Option<tonic::client::Grpc<tonic::transport::Channel>>, ForwardError> {
    if config.protocol != Protocol::Grpc {
        return Ok(None);
    }
    let channel = grpc_endpoint(config, tls)?.connect_lazy();
    Ok(Some(tonic::client::Grpc::new(channel)))
}

fn with_headers<T>(config: &ForwardConfig, body: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    for (k, v) in &config.headers {
        if let (Ok(k), Ok(v)) = (
            k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
            v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>(),
        ) {
            req.metadata_mut().insert(k, v);
        }
    }
    req
}

async fn send_grpc(
    mut client: tonic::client::Grpc<tonic::transport::Channel>,
    config: &ForwardConfig,
    payload: &Encoded,
) -> Result<Delivered, Failure> {
    client.ready().await.map_err(|e| Failure::Retry {
        error: retry::with_hint(format!("gRPC connection: {}", error_chain(&e))),
        after: None,
    })?;
    let method = tonic::codegen::http::uri::PathAndQuery::from_static(payload.signal.grpc_method());
    client
        .unary(
            with_headers(config, payload.body.clone()),
            method,
            PreEncoded,
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| retry::grpc_failure(&s))
}

/// Largest answer body read (for its `partial_success`).
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

async fn send_http(
    agent: &ureq::Agent,
    config: &ForwardConfig,
    payload: &Encoded,
) -> Result<Delivered, Failure> {
    let url = http_url(&config.endpoint, payload.signal.http_path());
    let body = payload.body.clone();
    let headers = config.headers.clone();
    let agent = agent.clone();
    tokio::task::spawn_blocking(move || {
        let mut req = agent
            .post(&url)
            .header("Content-Type", "application/x-protobuf");
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let mut resp = req.send(&body[..]).map_err(|e| Failure::Retry {
            error: retry::with_hint(format!("POST {url}: {}", error_chain(&e))),
            after: None,
        })?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            let answer = resp
                .body_mut()
                .with_config()
                .limit(MAX_RESPONSE_BYTES)
                .read_to_vec()
                .unwrap_or_default();
            return Ok(Delivered::decode(&answer[..]));
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok());
        Err(retry::http_failure(
            status,
            retry_after,
            format!("POST {url}: HTTP {status}"),
        ))
    })
    .await
    .map_err(|e| Failure::Retry {
        error: format!("HTTP task: {e}"),
        after: None,
    })?
}
