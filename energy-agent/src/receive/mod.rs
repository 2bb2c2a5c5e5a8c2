//! The OTLP receiver: traces, metrics and logs over gRPC (`--receive`, default
//! 127.0.0.1:4317) and HTTP (`/v1/traces`, `/v1/metrics`, `/v1/logs`, protobuf or JSON,
//! on the next port); traces go through the enricher, metrics and logs pass through.

pub mod admission;
pub mod enricher;
pub mod memory;
pub mod peer;
pub mod server;
pub mod spans;
