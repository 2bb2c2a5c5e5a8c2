//! `top`'s loop: the interval stages feed the live view; keys change its sort and mode.
//!
//! Keys: `s` cycles the sort (watts, joules, carbon, CPU), `m` switches processes and
//! models, `q` (or Ctrl-C) quits and restores the terminal.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use super::pipeline::{Pipeline, PipelineConfig};
use crate::{
    export::top::View,
    probe::{Probe, ProbeConfig},
};

/// Runs the view until `q`.
pub fn top(
    probe: &ProbeConfig,
    pipeline: &PipelineConfig,
    interval: Duration,
) -> anyhow::Result<i32> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "top needs a terminal; use `energy-agent run` (or --output json) for a stream"
        );
    }
    let mut probe = Probe::load(probe)?;
    let mut pipeline = Pipeline::new(pipeline, &mut probe)?;
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        let mut view = View::default();
        let mut next = Instant::now() + interval;
        loop {
            terminal.draw(|f| view.draw(f)).context("drawing")?;
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            if event::poll(wait).context("reading keys")?
                && let Event::Key(k) = event::read().context("reading keys")?
                && k.kind == KeyEventKind::Press
            {
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    KeyCode::Char('s') => view.sort = view.sort.next(),
                    KeyCode::Char('m') => view.by_model = !view.by_model,
                    _ => {}
                }
            }
            probe.drain_events();
            if Instant::now() >= next {
                view.update(pipeline.next(&mut probe)?);
                next += interval;
            }
        }
    })();
    ratatui::restore();
    pipeline.store_idle(crate::attribute::idle::state::Method::Fitted);
    result.map(|()| 0)
}
