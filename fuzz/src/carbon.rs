//! Carbon intensity from outside: the `--carbon-file` series (CSV) and the bodies the
//! Electricity Maps and WattTime APIs answer with. Whatever parses must give an
//! intensity that is a non-negative number, at any time asked.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use energy_agent::carbon::{
    remote::{parse_electricity_maps, parse_watttime},
    series::Series,
};

use crate::assert_sane;

/// One input: the first byte picks the format.
pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match selector % 3 {
        0 => {
            let Ok(series) = Series::parse(&text, "fuzz") else {
                return;
            };
            for at in [
                UNIX_EPOCH,
                UNIX_EPOCH + Duration::from_secs(1_800_000_000),
                SystemTime::now(),
                UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 4),
            ] {
                assert_sane("a series' intensity", series.at(at).0);
            }
        }
        1 => {
            if let Ok(g) = parse_electricity_maps(&text) {
                assert_sane("Electricity Maps' intensity", g);
            }
        }
        _ => {
            if let Ok(g) = parse_watttime(&text) {
                assert_sane("WattTime's intensity", g);
            }
        }
    }
}
