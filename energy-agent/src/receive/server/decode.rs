//! OTLP/HTTP bodies: gzip inflated within the message limit, then protobuf or JSON by
//! content type; a body that cannot be read gets its HTTP status and why.

use std::io::Read;

use axum::{
    body::Bytes,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use prost::Message;

/// Body format of an OTLP/HTTP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json` (OTLP's JSON encoding).
    Json,
}

/// A rejected request: its HTTP status and why.
pub(super) struct Reject(StatusCode, String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Reject {
    Reject(status, message.into())
}

/// Decodes an OTLP/HTTP body: gzip if so encoded, then protobuf or JSON by content type.
pub(super) fn decode<T: Message + Default + serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
    max: usize,
) -> Result<(T, Format), Reject> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    decode_body::<T>(content_type, gzip, body, max).map_err(|(s, m)| error(s, m))
}

/// Decodes an OTLP/HTTP body as the receiver does: inflated first when `gzip` (at most
/// `max` bytes once inflated), then protobuf or JSON by `content_type`. A body it
/// refuses gets the HTTP status the receiver answers and why. (Public for the fuzz
/// targets, which feed it what a sender could.)
pub fn decode_body<T: Message + Default + serde::de::DeserializeOwned>(
    content_type: &str,
    gzip: bool,
    body: &[u8],
    max: usize,
) -> Result<(T, Format), (StatusCode, String)> {
    let content_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match content_type.as_str() {
        "application/x-protobuf" | "application/protobuf" => Format::Protobuf,
        "application/json" => Format::Json,
        other => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported content type {other:?}: use application/x-protobuf or application/json"
                ),
            ));
        }
    };
    let mut inflated = Vec::new();
    let bytes: &[u8] = if gzip {
        let mut reader = flate2::read::GzDecoder::new(body).take(max as u64 + 1);
        reader
            .read_to_end(&mut inflated)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad gzip body: {e}")))?;
        if inflated.len() > max {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {max} bytes once decompressed"),
            ));
        }
        &inflated
    } else {
        body
    };
    let message = match format {
        Format::Protobuf => T::decode(bytes).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("malformed OTLP protobuf: {e}"),
            )
        })?,
        Format::Json => serde_json::from_slice(bytes)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("malformed OTLP JSON: {e}")))?,
    };
    Ok((message, format))
}

pub(super) fn ok<T: Message + serde::Serialize>(response: T, format: Format) -> Response {
    match format {
        Format::Protobuf => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            response.encode_to_vec(),
        )
            .into_response(),
        Format::Json => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec()),
        )
            .into_response(),
    }
}
