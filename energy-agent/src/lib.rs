//! energy-agent: joules and grams of CO2e per process, model and inference request.
//!
//! Data flows one way, one module per stage: [`probe`] (eBPF scheduler and GPU-driver
//! data) → [`power`] (energy per domain) → [`attribute`] (joules per process, model,
//! container, with [`identity`]) → [`carbon`] (grams) → [`requests`] (per-request
//! split) → [`receive`] (span enrichment) and [`export`] (console, JSON, metrics,
//! OTLP). [`topology`] wires them; [`cli`] parses flags and dispatches;
//! docs/ARCHITECTURE.md describes the whole.
#![deny(missing_docs)]

pub mod attribute;
pub mod carbon;
pub mod check;
pub mod cli;
pub mod clock;
pub mod export;
pub mod gate;
pub mod history;
pub mod identity;
pub mod listen;
pub mod lockdown;
pub mod power;
pub mod probe;
pub mod receive;
pub mod report;
pub mod requests;
pub mod tls;
pub mod topology;
pub mod units;
pub mod when;
