//! energy-agent: joules and grams of CO2e per process, model and inference request.
//!
//! Data flows one way, one module per stage: [`probe`] (eBPF scheduler data) →
//! [`attribute`] (per-process figures, with [`identity`]) → [`export`] (console, JSON).
#![deny(missing_docs)]

pub mod attribute;
pub mod carbon;
pub mod cli;
pub mod clock;
pub mod export;
pub mod identity;
pub mod power;
pub mod probe;
pub mod receive;
