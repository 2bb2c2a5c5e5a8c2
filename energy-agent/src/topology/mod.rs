//! How the stages are wired: one place to read the whole data flow top to bottom, as
//! Vector's topology is. Each stage talks to the next only through plain data types:
//!
//! ```text
//! probe ──SchedInterval──▶ power ──PowerReading──▶ attribute ──IntervalReport──▶ carbon
//!   (eBPF: on-CPU ns,        (meters: J per           (J per process, model,       (g CO2e:
//!    GPU-driver activity)     domain)                  container, idle bucket)      CarbonReport)
//!
//! CarbonReport ──▶ sinks: console table, JSON lines, metrics (Prometheus, OTLP), top, measure
//!              └─▶ requests (IntervalRecord history) ──▶ receive::Enricher ──▶ export::forward
//!                   spans from the OTLP receiver ──────────┘   (energy.* / carbon.* on spans)
//! ```
//!
//! [`pipeline`] runs the interval stages (probe → power → attribute → carbon) for
//! every command; [`exporters`] starts the sinks and the receive → enrich → forward
//! path of `run`; [`daemon`], [`top`] and [`measure`] are the three loops that drive
//! them, and [`calibrate`] drives the CPUs itself to fit idle power; [`state`] keeps
//! what was learned between runs. The CLI only builds the plain configs here from flags and calls one loop.

pub mod calibrate;
pub mod daemon;
pub mod exporters;
pub mod faults;
pub mod measure;
pub mod pipeline;
pub mod state;
pub mod top;

pub use daemon::{Console, DaemonConfig, MIN_INTERVAL};
pub use exporters::{ExportConfig, Exporters, ReceiveConfig};
pub use measure::MeasureConfig;
pub use pipeline::{Pipeline, PipelineConfig};
