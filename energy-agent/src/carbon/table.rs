//! The bundled per-country annual intensity table (`data/carbon_intensity.csv`, from
//! CodeCarbon 3.3.2's OWID/Ember figures) and the fixed value of `--carbon-intensity`.

use std::time::SystemTime;

use super::{Intensity, IntensityProvider};

const TABLE: &str = include_str!("../../data/carbon_intensity.csv");

/// World average when no region is given: 475 gCO2e/kWh (IEA 2019, as CodeCarbon uses).
pub const WORLD_AVERAGE_G_PER_KWH: f64 = 475.0;

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    /// ISO 3166-1 alpha-3 code.
    pub iso3: String,
    /// Country name.
    pub country: String,
    /// Data year.
    pub year: u32,
    /// gCO2e per kWh.
    pub g_per_kwh: f64,
}

/// Looks a region up by ISO alpha-3 or alpha-2 code, or country name (any case); an
/// Electricity Maps sub-zone like `US-CAL-CISO` falls back to its country (`US`).
pub fn lookup(code: &str) -> Option<Region> {
    let wanted = code.trim();
    let country_part = wanted.split('-').next().unwrap_or(wanted);
    let rows = TABLE
        .lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() == 5).then(|| (f[0], f[1], f[2], f[3], f[4]))
        });
    for candidate in [wanted, country_part] {
        for (iso3, iso2, country, year, g) in rows.clone() {
            let hit = iso3.eq_ignore_ascii_case(candidate)
                || (!iso2.is_empty() && iso2.eq_ignore_ascii_case(candidate))
                || country.eq_ignore_ascii_case(candidate);
            if hit {
                return Some(Region {
                    iso3: iso3.to_string(),
                    country: country.to_string(),
                    year: year.parse().unwrap_or(0),
                    g_per_kwh: g.parse().ok()?,
                });
            }
        }
    }
    None
}

/// The table value for a region (or the world average when there is none).
#[derive(Clone, Debug)]
pub struct Table {
    intensity: Intensity,
}

impl Table {
    /// The table entry for `region`; an unknown region is an error naming it.
    pub fn new(region: Option<&str>) -> Result<Self, String> {
        let intensity = match region {
            None => Intensity {
                g_per_kwh: WORLD_AVERAGE_G_PER_KWH,
                source: "table:world (IEA 2019 average; set --region for a country)".into(),
                note: None,
            },
            Some(code) => {
                let r = lookup(code).ok_or_else(|| {
                    format!(
                        "unknown region {code:?}: use an ISO 3166 code (FR, FRA) or a country name"
                    )
                })?;
                Intensity {
                    g_per_kwh: r.g_per_kwh,
                    source: format!(
                        "table:{} ({} {}, OWID/Ember via CodeCarbon)",
                        r.iso3, r.country, r.year
                    ),
                    note: None,
                }
            }
        };
        Ok(Self { intensity })
    }

    /// The table's intensity.
    pub fn value(&self) -> &Intensity {
        &self.intensity
    }
}

impl IntensityProvider for Table {
    fn intensity(&mut self, _at: SystemTime) -> Intensity {
        self.intensity.clone()
    }
}

/// `--carbon-intensity G`: one value for all time.
#[derive(Clone, Debug)]
pub struct Fixed(pub f64);

impl IntensityProvider for Fixed {
    fn intensity(&mut self, _at: SystemTime) -> Intensity {
        Intensity {
            g_per_kwh: self.0,
            source: "fixed (--carbon-intensity)".into(),
            note: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_by_any_code_or_name() {
        let fr = lookup("FRA").unwrap();
        assert_eq!(fr.g_per_kwh, 56.039);
        assert_eq!(fr.year, 2023);
        assert_eq!(lookup("fr").unwrap(), fr);
        assert_eq!(lookup("France").unwrap(), fr);
        assert_eq!(lookup("DE").unwrap().g_per_kwh, 380.95);
        assert_eq!(lookup("US-CAL-CISO").unwrap().iso3, "USA");
        assert!(lookup("Atlantis").is_none());
    }

    #[test]
    fn table_provider_labels_its_source() {
        let mut t = Table::new(Some("DEU")).unwrap();
        let i = t.intensity(SystemTime::now());
        assert_eq!(i.g_per_kwh, 380.95);
        assert!(i.source.starts_with("table:DEU"), "{}", i.source);
        let world = Table::new(None).unwrap();
        assert_eq!(world.value().g_per_kwh, 475.0);
        assert!(
            Table::new(Some("XX-nowhere"))
                .unwrap_err()
                .contains("unknown region")
        );
    }
}
