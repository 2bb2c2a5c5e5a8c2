//! `--power-source replay:FILE`: a recording as a user (or a bug report) hands it over.
//! A recording that parses must play back non-negative, finite energy over any span of
//! time, and its replay source must report nothing else, interval after interval.

use energy_agent::power::{
    PowerSource, SampleContext,
    replay::{Recording, Replay},
};

use crate::assert_sane;

/// One input: the text of a recording.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(recording) = Recording::parse(&text, "fuzz") else {
        return;
    };
    for domain in recording.domains() {
        let end = recording.end(domain);
        assert!(!end.is_nan(), "{domain} ends at NaN");
        for (t0, t1) in [
            (0.0, end / 2.0),
            (end / 2.0, end),
            (-1.0, end + 1.0),
            (end, 0.0),
        ] {
            assert_sane(
                "replayed energy",
                recording.energy_between(domain, t0, t1).get(),
            );
        }
    }
    let mut replay = Replay::new(recording, |_| true);
    for step in 0..6u64 {
        let ctx = SampleContext {
            now_ns: step * 250_000_000,
            ..Default::default()
        };
        let reading = replay.sample(&ctx);
        for e in &reading.energies {
            assert_sane("a replayed domain's energy", e.joules.get());
        }
    }
}
